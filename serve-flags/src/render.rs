//! [`ServeFlags`] rendered back into a command line.

use clap::ValueEnum;

use crate::ServeFlags;

/// One flag of [`ServeFlags`], to name the flags a rendering must keep even at their default
/// ([`ServeFlags::to_args_keeping`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // Each variant is the flag of the same name.
pub enum Flag {
    Model,
    Config,
    Embedded,
    Layout,
    Dtype,
    Device,
    GrpcAddr,
    HttpAddr,
    MaxBatchSize,
    MaxBatchDelayMs,
    MaxBatchTotalTokens,
    MaxQueue,
    KvBlockSize,
    KvCacheBlocks,
    PriorityAgeingMs,
    EncoderCacheMib,
    MaxImageBytes,
    MaxImagePixels,
    MaxImagesPerRequest,
    MaxVideoFrames,
    MaxPromptTokens,
    MaxPromptBytes,
    MaxRequestBytes,
    MaxNewTokens,
    MaxStopStrings,
    PrepareThreads,
    PrepareMemoryMib,
    MaxIncomingRequests,
    ServingNiceness,
    TlsCert,
    TlsKey,
    AuthTokensFile,
    AuthToken,
    ImageUrlHosts,
    MaxConnectionAgeSeconds,
    MaxConnectionAgeGraceSeconds,
    DrainTimeoutSeconds,
}

impl Flag {
    /// The flag's `--long` name.
    pub fn long(self) -> &'static str {
        match self {
            Self::Model => "--model",
            Self::Config => "--config",
            Self::Embedded => "--embedded",
            Self::Layout => "--layout",
            Self::Dtype => "--dtype",
            Self::Device => "--device",
            Self::GrpcAddr => "--grpc-addr",
            Self::HttpAddr => "--http-addr",
            Self::MaxBatchSize => "--max-batch-size",
            Self::MaxBatchDelayMs => "--max-batch-delay-ms",
            Self::MaxBatchTotalTokens => "--max-batch-total-tokens",
            Self::MaxQueue => "--max-queue",
            Self::KvBlockSize => "--kv-block-size",
            Self::KvCacheBlocks => "--kv-cache-blocks",
            Self::PriorityAgeingMs => "--priority-ageing-ms",
            Self::EncoderCacheMib => "--encoder-cache-mib",
            Self::MaxImageBytes => "--max-image-bytes",
            Self::MaxImagePixels => "--max-image-pixels",
            Self::MaxImagesPerRequest => "--max-images-per-request",
            Self::MaxVideoFrames => "--max-video-frames",
            Self::MaxPromptTokens => "--max-prompt-tokens",
            Self::MaxPromptBytes => "--max-prompt-bytes",
            Self::MaxRequestBytes => "--max-request-bytes",
            Self::MaxNewTokens => "--max-new-tokens",
            Self::MaxStopStrings => "--max-stop-strings",
            Self::PrepareThreads => "--prepare-threads",
            Self::PrepareMemoryMib => "--prepare-memory-mib",
            Self::MaxIncomingRequests => "--max-incoming-requests",
            Self::ServingNiceness => "--serving-niceness",
            Self::TlsCert => "--tls-cert",
            Self::TlsKey => "--tls-key",
            Self::AuthTokensFile => "--auth-tokens-file",
            Self::AuthToken => "--auth-token",
            Self::ImageUrlHosts => "--image-url-hosts",
            Self::MaxConnectionAgeSeconds => "--max-connection-age-seconds",
            Self::MaxConnectionAgeGraceSeconds => "--max-connection-age-grace-seconds",
            Self::DrainTimeoutSeconds => "--drain-timeout-seconds",
        }
    }
}

/// The command-line name of a value-enum value.
fn name<T: ValueEnum>(value: T) -> Option<String> {
    value.to_possible_value().map(|v| v.get_name().to_owned())
}

fn path(value: Option<&std::path::PathBuf>) -> Option<String> {
    value.map(|p| p.display().to_string())
}

impl ServeFlags {
    /// Every flag with its command-line value (`None`: an unset optional flag), in the order of
    /// [`ServeFlags::to_args`].
    pub fn entries(&self) -> Vec<(Flag, Option<String>)> {
        let (m, b, l) = (&self.model, &self.batching, &self.limits);
        let (p, s, c) = (&self.preparation, &self.security, &self.lifecycle);
        let n = |v: u64| Some(v.to_string());
        vec![
            (Flag::Model, path(m.model.as_ref())),
            (Flag::Layout, name(self.layout)),
            (Flag::Dtype, name(self.dtype)),
            (Flag::Device, Some(self.device.to_string())),
            (Flag::GrpcAddr, Some(self.listeners.grpc_addr.to_string())),
            (Flag::HttpAddr, Some(self.listeners.http_addr.to_string())),
            (Flag::MaxBatchSize, n(b.max_batch_size)),
            (Flag::MaxBatchDelayMs, n(b.max_batch_delay_ms)),
            (Flag::MaxBatchTotalTokens, n(b.max_batch_total_tokens)),
            (Flag::MaxQueue, n(b.max_queue)),
            (Flag::MaxImageBytes, n(l.max_image_bytes)),
            (Flag::MaxImagePixels, n(l.max_image_pixels)),
            (Flag::MaxImagesPerRequest, n(l.max_images_per_request)),
            (Flag::MaxVideoFrames, n(l.max_video_frames)),
            (Flag::MaxPromptTokens, n(l.max_prompt_tokens)),
            (Flag::MaxNewTokens, n(l.max_new_tokens)),
            (Flag::DrainTimeoutSeconds, n(c.drain_timeout_seconds)),
            (
                Flag::MaxConnectionAgeSeconds,
                n(c.max_connection_age_seconds),
            ),
            (
                Flag::MaxConnectionAgeGraceSeconds,
                n(c.max_connection_age_grace_seconds),
            ),
            (Flag::TlsCert, path(s.tls_cert.as_ref())),
            (Flag::TlsKey, path(s.tls_key.as_ref())),
            (Flag::AuthTokensFile, path(s.auth_tokens_file.as_ref())),
            (Flag::Config, path(m.config.as_ref())),
            (Flag::Embedded, name(m.embedded)),
            (Flag::KvBlockSize, n(b.kv_block_size)),
            (
                Flag::KvCacheBlocks,
                b.kv_cache_blocks.map(|v| v.to_string()),
            ),
            (Flag::PriorityAgeingMs, n(b.priority_ageing_ms)),
            (Flag::EncoderCacheMib, n(b.encoder_cache_mib)),
            (Flag::MaxPromptBytes, n(l.max_prompt_bytes)),
            (
                Flag::MaxRequestBytes,
                l.max_request_bytes.map(|v| v.to_string()),
            ),
            (Flag::MaxStopStrings, n(l.max_stop_strings)),
            (
                Flag::PrepareThreads,
                p.prepare_threads.map(|v| v.to_string()),
            ),
            (Flag::PrepareMemoryMib, n(p.prepare_memory_mib)),
            (Flag::MaxIncomingRequests, n(p.max_incoming_requests)),
            (Flag::ServingNiceness, Some(p.serving_niceness.to_string())),
            (Flag::AuthToken, s.auth_token.clone()),
            (
                Flag::ImageUrlHosts,
                (!s.image_url_hosts.is_empty()).then(|| s.image_url_hosts.join(",")),
            ),
        ]
    }

    /// The command line of these flags: each flag whose value differs from its default, as
    /// `--long value` pairs. Parsed by `serve` (with no `LYNX_*` variables set), it gives these
    /// flags back.
    pub fn to_args(&self) -> Vec<String> {
        self.to_args_keeping(&[])
    }

    /// [`ServeFlags::to_args`], plus the flags of `keep` even at their default (an unset
    /// optional flag is never rendered): values the caller chose, which a worker with other
    /// defaults or `LYNX_*` variables must still get.
    pub fn to_args_keeping(&self, keep: &[Flag]) -> Vec<String> {
        let defaults = Self::default().entries();
        let mut args = Vec::new();
        for ((flag, value), (_, default)) in self.entries().into_iter().zip(defaults) {
            if let Some(value) = value {
                if keep.contains(&flag) || Some(&value) != default.as_ref() {
                    args.extend([flag.long().to_owned(), value]);
                }
            }
        }
        args
    }
}
