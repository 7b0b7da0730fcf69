//! `ServeFlags` rendered by `to_args` and parsed back by clap gives the same flags.
//!
//! These tests assume no `LYNX_*` variable is set (clap would read it for an absent flag).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{CommandFactory, Parser};
use lynx_serve_flags::{
    Batching, Device, Dtype, EmbeddedArg, Flag, Layout, Lifecycle, Limits, Listeners, ModelArgs,
    Preparation, Security, ServeFlags,
};

/// A command with nothing but the serve flags, as the worker's `serve` flattens them.
#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    flags: ServeFlags,
}

fn parse<S: AsRef<str>>(args: &[S]) -> Result<ServeFlags, clap::Error> {
    let argv = std::iter::once("x").chain(args.iter().map(AsRef::as_ref));
    Cli::try_parse_from(argv).map(|cli| cli.flags)
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("address")
}

/// What the operator renders for a GPU worker with TLS, tokens and every knob of its spec set.
fn operator_like() -> ServeFlags {
    let mut flags = ServeFlags {
        model: ModelArgs {
            model: Some(PathBuf::from("/models/lynx-7b")),
            ..ModelArgs::default()
        },
        layout: Layout::Converted,
        dtype: Dtype::F16,
        device: Device::Cuda(0),
        ..ServeFlags::default()
    };
    flags.batching.max_batch_size = 8;
    flags.batching.max_batch_delay_ms = 10;
    flags.limits.max_image_bytes = 10 << 20;
    flags.limits.max_new_tokens = 1024;
    flags.lifecycle = Lifecycle {
        max_connection_age_seconds: 300,
        max_connection_age_grace_seconds: 900,
        drain_timeout_seconds: 60,
    };
    flags.security.tls_cert = Some("/etc/lynx/tls/tls.crt".into());
    flags.security.tls_key = Some("/etc/lynx/tls/tls.key".into());
    flags.security.auth_tokens_file = Some("/etc/lynx/auth/tokens".into());
    flags
}

/// Every flag away from its default (`--embedded` aside: it conflicts with `--model`).
fn everything() -> ServeFlags {
    ServeFlags {
        model: ModelArgs {
            model: Some("/m".into()),
            config: Some("/m/other.yaml".into()),
            embedded: EmbeddedArg::Tiny,
        },
        layout: Layout::Release,
        dtype: Dtype::Bf16,
        device: Device::Cuda(3),
        listeners: Listeners {
            grpc_addr: addr("[::1]:7000"),
            http_addr: addr("127.0.0.1:7001"),
        },
        batching: Batching {
            max_batch_size: 1,
            max_batch_delay_ms: 0,
            max_batch_total_tokens: 4096,
            max_queue: 0,
            kv_block_size: 32,
            kv_cache_blocks: Some(100),
            priority_ageing_ms: 1,
            encoder_cache_mib: 0,
        },
        limits: Limits {
            max_image_bytes: 1,
            max_image_pixels: 2,
            max_images_per_request: 0,
            max_video_frames: 4,
            max_prompt_tokens: 5,
            max_prompt_bytes: 6,
            max_request_bytes: Some(7),
            max_new_tokens: 8,
            max_stop_strings: 0,
        },
        preparation: Preparation {
            prepare_threads: Some(3),
            prepare_memory_mib: 1,
            max_incoming_requests: 2,
            serving_niceness: 19,
        },
        security: Security {
            tls_cert: Some("c.pem".into()),
            tls_key: Some("k.pem".into()),
            auth_tokens_file: Some("tokens".into()),
            auth_token: Some("secret".into()),
            image_url_hosts: vec!["images.example".into(), "10.0.0.1".into()],
        },
        lifecycle: Lifecycle {
            max_connection_age_seconds: 1,
            max_connection_age_grace_seconds: 2,
            drain_timeout_seconds: 0,
        },
    }
}

#[test]
fn the_default_is_what_an_empty_command_line_parses_to() {
    let empty: [&str; 0] = [];
    assert_eq!(parse(&empty).expect("parse"), ServeFlags::default());
    assert!(ServeFlags::default().to_args().is_empty());
}

#[test]
fn rendered_flags_parse_back_to_the_same_flags() {
    let mut embedded = ServeFlags {
        device: Device::Mirror,
        layout: Layout::Release,
        ..ServeFlags::default()
    };
    embedded.model.embedded = EmbeddedArg::Small;
    let cpu_one_knob = ServeFlags {
        batching: Batching {
            max_queue: 1,
            ..Batching::default()
        },
        ..ServeFlags::default()
    };
    for flags in [
        ServeFlags::default(),
        operator_like(),
        everything(),
        embedded,
        cpu_one_knob,
    ] {
        let args = flags.to_args();
        let parsed = parse(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert_eq!(parsed, flags, "{args:?}");
    }
}

#[test]
fn only_flags_away_from_their_default_are_rendered() {
    let args = operator_like().to_args();
    let expected = [
        "--model",
        "/models/lynx-7b",
        "--layout",
        "converted",
        "--dtype",
        "f16",
        "--device",
        "cuda",
        "--max-batch-size",
        "8",
        "--max-batch-delay-ms",
        "10",
        "--max-image-bytes",
        "10485760",
        "--max-new-tokens",
        "1024",
        "--drain-timeout-seconds",
        "60",
        "--max-connection-age-seconds",
        "300",
        "--max-connection-age-grace-seconds",
        "900",
        "--tls-cert",
        "/etc/lynx/tls/tls.crt",
        "--tls-key",
        "/etc/lynx/tls/tls.key",
        "--auth-tokens-file",
        "/etc/lynx/auth/tokens",
    ];
    assert_eq!(args, expected);
}

#[test]
fn kept_flags_are_rendered_at_their_default_and_unset_ones_never() {
    let flags = ServeFlags::default();
    let args =
        flags.to_args_keeping(&[Flag::MaxBatchSize, Flag::Layout, Flag::TlsCert, Flag::Model]);
    assert_eq!(args, ["--layout", "auto", "--max-batch-size", "32"]);
    assert_eq!(parse(&args).expect("parse"), flags);
}

#[test]
fn every_flag_of_the_command_is_rendered_by_its_own_name() {
    let command = Cli::command();
    let parsed: BTreeSet<String> = command
        .get_arguments()
        .filter_map(|arg| arg.get_long())
        .map(|long| format!("--{long}"))
        .collect();
    let entries = everything().entries();
    let rendered: BTreeSet<String> = entries
        .iter()
        .map(|(flag, _)| flag.long().to_owned())
        .collect();
    assert_eq!(rendered, parsed);
    assert_eq!(rendered.len(), entries.len(), "a flag rendered twice");
    // Each flag at a non-default value shows up with that value in the rendering (`--embedded`
    // stays at its default beside `--model`).
    let args = everything().to_args();
    for (flag, value) in entries.into_iter().filter(|(f, _)| *f != Flag::Embedded) {
        let value = value.expect("every flag set");
        let at = args.iter().position(|a| a == flag.long());
        assert_eq!(
            at.and_then(|i| args.get(i + 1)),
            Some(&value),
            "{}",
            flag.long()
        );
    }
}

#[test]
fn out_of_range_values_are_refused() {
    for args in [
        ["--max-batch-size", "0"],
        ["--max-new-tokens", "0"],
        ["--serving-niceness", "20"],
        ["--device", "tpu"],
        ["--tls-cert", "a.crt"],
    ] {
        assert!(parse(&args).is_err(), "{args:?}");
    }
}
