//! Errors in OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`) with their HTTP
//! status, and the mapping from the worker's gRPC statuses (one mapping for both APIs).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use tonic::Code;

use super::wire::{ErrorBody, ErrorObject};

/// An error answer of the OpenAI API.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body's error object.
    pub error: ErrorObject,
}

impl ApiError {
    /// 400 `invalid_request_error` about `param`.
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            message,
            "invalid_request_error",
            param,
            None,
        )
    }

    /// An error with every field given.
    pub fn new(
        status: StatusCode,
        message: impl Into<String>,
        type_: &'static str,
        param: Option<&str>,
        code: Option<&'static str>,
    ) -> Self {
        Self {
            status,
            error: ErrorObject {
                message: message.into(),
                type_,
                param: param.map(str::to_owned),
                code,
            },
        }
    }

    /// The OpenAI error for the worker's status `status` (the gRPC API's answer to the same
    /// request).
    pub fn from_status(status: &tonic::Status) -> Self {
        let message = status.message().to_owned();
        let (http, type_, code) = match status.code() {
            Code::InvalidArgument => (StatusCode::BAD_REQUEST, "invalid_request_error", None),
            Code::Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                Some("invalid_api_key"),
            ),
            Code::ResourceExhausted if message.contains("max_request_bytes") => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                Some("request_too_large"),
            ),
            Code::ResourceExhausted => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                Some("queue_full"),
            ),
            Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "timeout_error", None),
            Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", None),
            Code::Cancelled => (StatusCode::BAD_REQUEST, "invalid_request_error", None),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", None),
        };
        Self::new(http, message, type_, None, code)
    }

    /// The gRPC code that counts this error in `lynx_requests_total`.
    pub fn grpc_code(&self) -> Code {
        lynx_proto::code_of_http_status(self.status.as_u16())
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        let body = ErrorBody {
            error: self.error.clone(),
        };
        serde_json::to_string(&body).unwrap_or_else(|_| "{\"error\":{}}".to_owned())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            self.body(),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_statuses_map_to_openai_statuses() {
        let cases = [
            (
                tonic::Status::invalid_argument("x"),
                400,
                "invalid_request_error",
            ),
            (
                tonic::Status::unauthenticated("x"),
                401,
                "authentication_error",
            ),
            (
                tonic::Status::resource_exhausted("queue full: 4 requests are waiting (max_queue)"),
                429,
                "rate_limit_error",
            ),
            (
                tonic::Status::resource_exhausted(
                    "request message is 9 bytes, more than max_request_bytes = 8",
                ),
                413,
                "invalid_request_error",
            ),
            (
                tonic::Status::unavailable("draining"),
                503,
                "service_unavailable",
            ),
            (
                tonic::Status::deadline_exceeded("late"),
                504,
                "timeout_error",
            ),
            (tonic::Status::internal("model"), 500, "server_error"),
        ];
        for (status, http, type_) in cases {
            let e = ApiError::from_status(&status);
            assert_eq!(
                (e.status.as_u16(), e.error.type_),
                (http, type_),
                "{status:?}"
            );
            assert_eq!(e.error.message, status.message());
        }
    }
}
