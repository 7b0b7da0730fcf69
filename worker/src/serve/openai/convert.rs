//! An OpenAI chat request as the worker's own request (`lynx.v1.GenerateRequest`), so that both
//! APIs go through the same checks, queue and model: a pure function.
//!
//! What Lynx can render: one `user` message (text, `image_url` parts, or one `video_url` part).
//! Its prompt template has no system prompt and no chat history, so `system`, `assistant` and
//! `tool` messages are refused rather than silently dropped. Images come as `data:` URIs
//! (base64) or as `http(s)` URLs that the handler fetches ([`super::fetch`]). A video is a
//! `data:application/json` URI whose payload (base64 or plain) is the official JSON list of base64
//! frames.

use base64::Engine as _;
use lynx_proto::v1;

use super::error::ApiError;
use super::wire::{ChatRequest, Content, Part, Stop};
use crate::serve::limits::Limits;
use crate::vision::{parse_video_json_with_limits, VisionLimits};

/// The worker request and the answer's shape.
#[derive(Debug)]
pub struct Converted {
    /// What the gRPC API would receive (images given by URL still empty: see `to_fetch`).
    pub request: v1::GenerateRequest,
    /// Images to fetch: `(index in request.images, URL, content part)`.
    pub to_fetch: Vec<(usize, String, usize)>,
    /// Server-sent events.
    pub stream: bool,
    /// A last chunk with the usage (streaming).
    pub include_usage: bool,
}

/// Converts `chat` for the model named `model_name`.
///
/// # Errors
/// 404 for another model; 400 naming the parameter for anything that cannot be rendered or is
/// not supported (`n` above 1, history, URLs that are not `data:`, an unknown decoding mode).
pub fn convert(
    chat: ChatRequest,
    model_name: &str,
    limits: &Limits,
) -> Result<Converted, ApiError> {
    if chat.model != model_name {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            format!(
                "the model `{}` does not exist: this worker serves `{model_name}`",
                chat.model
            ),
            "invalid_request_error",
            Some("model"),
            Some("model_not_found"),
        ));
    }
    if let Some(n) = chat.n.filter(|&n| n != 1) {
        return Err(ApiError::invalid(
            format!("n = {n}: this worker returns one choice per request"),
            Some("n"),
        ));
    }
    let [message] = chat.messages.as_slice() else {
        return Err(ApiError::invalid(
            format!(
                "{} messages: Lynx renders one user message (its prompt template has no system \
                 prompt and no chat history)",
                chat.messages.len()
            ),
            Some("messages"),
        ));
    };
    if message.role != "user" {
        return Err(ApiError::invalid(
            format!(
                "a `{}` message: Lynx renders one user message (no system prompt, no history)",
                message.role
            ),
            Some("messages"),
        ));
    }
    let mut request = v1::GenerateRequest::default();
    let mut to_fetch = Vec::new();
    let mut texts = Vec::new();
    match &message.content {
        None => {
            return Err(ApiError::invalid(
                "the user message has no content",
                Some("messages"),
            ))
        }
        Some(Content::Text(text)) => texts.push(text.clone()),
        Some(Content::Parts(parts)) => {
            for (i, part) in parts.iter().enumerate() {
                match part {
                    Part::Text { text } => texts.push(text.clone()),
                    Part::ImageUrl { image_url } => {
                        let url = &image_url.url;
                        let data = if url.starts_with("http://") || url.starts_with("https://") {
                            to_fetch.push((request.images.len(), url.clone(), i));
                            Vec::new()
                        } else {
                            image_data(url, i, limits)?
                        };
                        request.images.push(v1::Image { data });
                    }
                    Part::VideoUrl { video_url } => {
                        if request.video.is_some() {
                            return Err(ApiError::invalid(
                                "more than one video: Lynx takes one video per request",
                                Some("messages"),
                            ));
                        }
                        let frames = video_frames(&video_url.url, i, limits)?;
                        request.video = Some(v1::Video { frames });
                    }
                }
            }
        }
    }
    request.instruction = texts.join("\n");
    request.parameters = Some(parameters(&chat)?);
    request.priority = priority(chat.priority.as_deref())? as i32;
    Ok(Converted {
        request,
        to_fetch,
        stream: chat.stream,
        include_usage: chat.stream_options.is_some_and(|o| o.include_usage),
    })
}

/// The decoding parameters: `lynx_decoding` if given; else `temperature` 0 is greedy, a
/// temperature, `top_p` or `seed` is sampling, and nothing at all is the model's default (as on
/// gRPC).
fn parameters(chat: &ChatRequest) -> Result<v1::DecodingParameters, ApiError> {
    use v1::DecodingMode as M;
    let mode = match chat.lynx_decoding.as_deref() {
        Some("greedy") => M::Greedy,
        Some("beam") => M::Beam,
        Some("sample") => M::Sample,
        Some("lynx") => M::Lynx,
        Some(other) => {
            return Err(ApiError::invalid(
                format!("lynx_decoding `{other}`: one of greedy, beam, sample, lynx"),
                Some("lynx_decoding"),
            ))
        }
        None => match chat.temperature {
            Some(0.0) => M::Greedy,
            Some(_) => M::Sample,
            None if chat.top_p.is_some() || chat.seed.is_some() => M::Sample,
            None => M::Unspecified,
        },
    };
    let stop = match &chat.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(list)) => list.clone(),
    };
    Ok(v1::DecodingParameters {
        mode: mode as i32,
        max_new_tokens: chat.max_completion_tokens.or(chat.max_tokens),
        num_beams: chat.num_beams,
        temperature: chat
            .temperature
            .filter(|_| mode == M::Sample || mode == M::Lynx),
        top_k: chat.top_k,
        top_p: chat.top_p,
        seed: chat.seed,
        stop,
    })
}

fn priority(name: Option<&str>) -> Result<v1::Priority, ApiError> {
    match name {
        None => Ok(v1::Priority::Unspecified),
        Some("low") => Ok(v1::Priority::Low),
        Some("normal") => Ok(v1::Priority::Normal),
        Some("high") => Ok(v1::Priority::High),
        Some(other) => Err(ApiError::invalid(
            format!("priority `{other}`: one of low, normal, high"),
            Some("priority"),
        )),
    }
}

/// The bytes of a `data:` URI: `(media type, payload)`, base64-decoded when it says so. The
/// decoded size is checked against `max_bytes` (named `limit`) before decoding.
fn data_uri(
    url: &str,
    part: usize,
    max_bytes: usize,
    limit: &str,
) -> Result<(String, Vec<u8>), ApiError> {
    let Some(rest) = url.strip_prefix("data:") else {
        let what = if url.starts_with("http://") || url.starts_with("https://") {
            "URLs are not fetched by this worker"
        } else {
            "not a data: URI"
        };
        return Err(ApiError::invalid(
            format!("content part {part}: {what}; send the bytes as a data: URI (base64)"),
            Some("messages"),
        ));
    };
    let (header, payload) = rest.split_once(',').ok_or_else(|| {
        ApiError::invalid(
            format!("content part {part}: a data: URI without a comma"),
            Some("messages"),
        )
    })?;
    let (media_type, base64) = match header.strip_suffix(";base64") {
        Some(media_type) => (media_type, true),
        None => (header, false),
    };
    let size = if base64 {
        payload.len() / 4 * 3
    } else {
        payload.len()
    };
    if size > max_bytes.saturating_add(3) {
        return Err(ApiError::invalid(
            format!("content part {part} is {size} bytes, more than {limit} = {max_bytes}"),
            Some("messages"),
        ));
    }
    let bytes = if base64 {
        base64::engine::general_purpose::STANDARD
            .decode(payload)
            .map_err(|e| {
                ApiError::invalid(
                    format!("content part {part}: the data: URI is not valid base64: {e}"),
                    Some("messages"),
                )
            })?
    } else {
        payload.as_bytes().to_vec()
    };
    Ok((media_type.to_owned(), bytes))
}

fn image_data(url: &str, part: usize, limits: &Limits) -> Result<Vec<u8>, ApiError> {
    let (_, bytes) = data_uri(url, part, limits.max_image_bytes, "max_image_bytes")?;
    Ok(bytes)
}

fn video_frames(url: &str, part: usize, limits: &Limits) -> Result<Vec<Vec<u8>>, ApiError> {
    let (media_type, json) = data_uri(url, part, limits.max_request_bytes, "max_request_bytes")?;
    if media_type != "application/json" {
        return Err(ApiError::invalid(
            format!(
                "content part {part}: a video is a data:application/json URI of the JSON list of \
                 base64 frames, not `{media_type}`"
            ),
            Some("messages"),
        ));
    }
    let vision = VisionLimits {
        max_image_bytes: limits.max_image_bytes,
        max_pixels: limits.max_image_pixels,
        max_video_frames: limits.max_video_frames,
    };
    parse_video_json_with_limits(&json, &vision)
        .map_err(|e| ApiError::invalid(format!("content part {part}: {e}"), Some("messages")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(json: serde_json::Value) -> ChatRequest {
        serde_json::from_value(json).expect("a chat request")
    }

    #[test]
    fn one_user_message_with_an_image_becomes_a_worker_request() {
        let png = base64::engine::general_purpose::STANDARD.encode(b"\x89PNG fake");
        let converted = convert(
            chat(serde_json::json!({
                "model": "m",
                "messages": [{"role": "user", "content": [
                    {"type": "text", "text": "What is in the image?"},
                    {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{png}")}}
                ]}],
                "temperature": 0,
                "max_tokens": 7,
                "stop": "###",
                "stream": true,
                "stream_options": {"include_usage": true},
                "some_unknown_field": 1
            })),
            "m",
            &Limits::default(),
        )
        .expect("converts");
        let r = converted.request;
        assert_eq!(r.instruction, "What is in the image?");
        assert_eq!(r.images.len(), 1);
        assert_eq!(r.images[0].data, b"\x89PNG fake");
        let p = r.parameters.expect("parameters");
        assert_eq!(p.mode, v1::DecodingMode::Greedy as i32);
        assert_eq!(p.max_new_tokens, Some(7));
        assert_eq!(p.stop, ["###"]);
        assert!(converted.stream && converted.include_usage);
    }

    #[test]
    fn what_cannot_be_rendered_is_refused_naming_the_parameter() {
        let limits = Limits::default();
        let cases = [
            (
                serde_json::json!({"model": "other", "messages": []}),
                404,
                "model",
            ),
            (
                serde_json::json!({"model": "m", "n": 2, "messages": [{"role": "user", "content": "hi"}]}),
                400,
                "n",
            ),
            (
                serde_json::json!({"model": "m", "messages": [
                    {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}),
                400,
                "messages",
            ),
            (
                serde_json::json!({"model": "m", "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}}]}]}),
                400,
                "messages",
            ),
            (
                serde_json::json!({"model": "m", "lynx_decoding": "fast",
                    "messages": [{"role": "user", "content": "hi"}]}),
                400,
                "lynx_decoding",
            ),
        ];
        for (json, status, param) in cases {
            let err = convert(chat(json.clone()), "m", &limits).expect_err("refused");
            assert_eq!(err.status.as_u16(), status, "{json}");
            assert_eq!(err.error.param.as_deref(), Some(param), "{json}");
        }
    }

    #[test]
    fn unset_parameters_take_the_models_defaults() {
        let converted = convert(
            chat(
                serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
            ),
            "m",
            &Limits::default(),
        )
        .expect("converts");
        let p = converted.request.parameters.expect("parameters");
        assert_eq!(p.mode, v1::DecodingMode::Unspecified as i32);
        assert_eq!(p.max_new_tokens, None);
    }
}
