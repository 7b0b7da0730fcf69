//! The gRPC contract of the Lynx worker, protobuf package `lynx.v1` (`lynx/v1/lynx.proto`).
//!
//! Generated at build time (no `protoc` needed): the messages, the `Lynx` service's tonic server
//! ([`v1::lynx_server`]) and client ([`v1::lynx_client`]), and the encoded descriptor set for server
//! reflection ([`FILE_DESCRIPTOR_SET`]). Every other crate talks to the worker through this crate.
//! Without the default `grpc` feature only [`video`] and [`tokens_file`] remain.

/// `lynx.v1`: messages, client and server.
#[cfg(feature = "grpc")]
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("lynx.v1");
}

#[cfg(feature = "grpc")]
pub mod retry;
#[cfg(feature = "grpc")]
pub mod target;
#[cfg(feature = "test-dns")]
pub mod test_dns;
pub mod tokens_file;
pub mod video;

#[cfg(feature = "grpc")]
/// The canonical gRPC name of `code` (`OK`, `INVALID_ARGUMENT`, ...), as metrics label it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(feature = "grpc")]
/// The gRPC code that counts an OpenAI-API answer of HTTP `status` in the request counters
/// (`lynx_requests_total`, `lynx_router_requests_total`), so both APIs share one label set.
pub fn code_of_http_status(status: u16) -> tonic::Code {
    use tonic::Code;
    match status {
        200..=299 => Code::Ok,
        400 | 404 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        413 | 429 => Code::ResourceExhausted,
        503 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        _ => Code::Internal,
    }
}

/// Encoded `FileDescriptorSet` of `lynx.v1`, for `tonic-reflection`.
#[cfg(feature = "grpc")]
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/lynx_v1_descriptor.bin"));

#[cfg(all(test, feature = "grpc"))]
mod tests {
    use prost::Message;

    use super::v1::*;

    #[test]
    fn messages_round_trip() {
        let req = GenerateRequest {
            images: vec![Image {
                data: vec![1, 2, 3],
            }],
            video: None,
            instruction: "What is in the image?".into(),
            parameters: Some(DecodingParameters {
                mode: DecodingMode::Beam as i32,
                max_new_tokens: Some(16),
                num_beams: Some(5),
                stop: vec!["\n".into()],
                ..Default::default()
            }),
            priority: Priority::High as i32,
            client_request_id: "abc".into(),
        };
        let back = GenerateRequest::decode(req.encode_to_vec().as_slice()).expect("decode");
        assert_eq!(back, req);
        assert_eq!(back.parameters.and_then(|p| p.num_beams), Some(5));
    }

    #[test]
    fn descriptor_describes_the_service() {
        let fds =
            prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).expect("descriptor");
        let file = fds
            .file
            .iter()
            .find(|f| f.package() == "lynx.v1")
            .expect("lynx.v1 file");
        let service = file
            .service
            .iter()
            .find(|s| s.name() == "Lynx")
            .expect("Lynx service");
        let methods: Vec<&str> = service.method.iter().map(|m| m.name()).collect();
        assert_eq!(methods, ["Generate", "GenerateStream", "GetModelInfo"]);
        assert!(
            service.method[1].server_streaming(),
            "GenerateStream streams"
        );
    }
}
