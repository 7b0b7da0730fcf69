//! The OpenAI chat-completions wire format: the request as clients send it, the response, the
//! streamed chunks and the error object. Unknown request fields are ignored, as OpenAI-compatible
//! servers do; the ones this worker cannot honour are refused by [`super::convert`].

use serde::{Deserialize, Serialize};

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    /// The served model's id (`GET /v1/models`).
    pub model: String,
    /// The conversation: one user message (Lynx has no chat history or system prompt).
    pub messages: Vec<Message>,
    /// Most tokens to generate (the older name of `max_completion_tokens`).
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Most tokens to generate.
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    /// 0: greedy; above: sampling at this temperature.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Sampling seed.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Stop strings.
    #[serde(default)]
    pub stop: Option<Stop>,
    /// Answers per request: 1 only.
    #[serde(default)]
    pub n: Option<u32>,
    /// Stream the answer as server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Lynx's decoding mode: `greedy`, `beam`, `sample` or `lynx` (the release preset).
    #[serde(default)]
    pub lynx_decoding: Option<String>,
    /// Beams of `beam` / `lynx`.
    #[serde(default)]
    pub num_beams: Option<u32>,
    /// Top-k of `sample` / `lynx`.
    #[serde(default)]
    pub top_k: Option<u32>,
    /// `low`, `normal` or `high`.
    #[serde(default)]
    pub priority: Option<String>,
}

/// `stop`: one string or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the usage.
    #[serde(default)]
    pub include_usage: bool,
}

/// One message of the conversation.
#[derive(Debug, Deserialize)]
pub struct Message {
    /// `user` (`system`, `assistant`, `tool` are refused).
    pub role: String,
    /// Text, or a list of parts.
    #[serde(default)]
    pub content: Option<Content>,
}

/// A message's content.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Text, image and video parts.
    Parts(Vec<Part>),
}

/// One content part.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// An image by URL (`data:` URIs).
    ImageUrl {
        /// The URL.
        image_url: UrlRef,
    },
    /// A video by URL (vLLM's part): a `data:application/json` URI of a JSON list of base64
    /// frames.
    VideoUrl {
        /// The URL.
        video_url: UrlRef,
    },
}

/// `{"url": ...}`.
#[derive(Debug, Deserialize)]
pub struct UrlRef {
    /// The URL.
    pub url: String,
}

/// The whole answer.
#[derive(Debug, Serialize)]
pub struct ChatResponse {
    /// `chatcmpl-<n>`.
    pub id: String,
    /// `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model's id.
    pub model: String,
    /// One choice.
    pub choices: Vec<Choice>,
    /// Token counts.
    pub usage: Usage,
}

/// A choice of [`ChatResponse`].
#[derive(Debug, Serialize)]
pub struct Choice {
    /// 0.
    pub index: u32,
    /// The assistant's message.
    pub message: AssistantMessage,
    /// `stop` or `length`.
    pub finish_reason: &'static str,
}

/// The assistant's message.
#[derive(Debug, Serialize)]
pub struct AssistantMessage {
    /// `assistant`.
    pub role: &'static str,
    /// The answer.
    pub content: String,
}

/// Token counts: the prompt's include the vision tokens in front of it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    /// Text prompt tokens (BOS included) + vision tokens.
    pub prompt_tokens: u64,
    /// Generated tokens.
    pub completion_tokens: u64,
    /// Their sum.
    pub total_tokens: u64,
}

/// One streamed chunk.
#[derive(Debug, Serialize)]
pub struct Chunk {
    /// The completion's id.
    pub id: String,
    /// `chat.completion.chunk`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model's id.
    pub model: String,
    /// One choice, or none in the usage chunk.
    pub choices: Vec<ChunkChoice>,
    /// Only in the usage chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// A choice of [`Chunk`].
#[derive(Debug, Serialize)]
pub struct ChunkChoice {
    /// 0.
    pub index: u32,
    /// What is new.
    pub delta: Delta,
    /// Set in the last content chunk.
    pub finish_reason: Option<&'static str>,
}

/// New content.
#[derive(Debug, Default, Serialize)]
pub struct Delta {
    /// `assistant`, in the first chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// New text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// `GET /v1/models`.
#[derive(Debug, Serialize)]
pub struct ModelList {
    /// `list`.
    pub object: &'static str,
    /// The served model.
    pub data: Vec<ModelCard>,
}

/// One model.
#[derive(Debug, Serialize)]
pub struct ModelCard {
    /// Its id: the model's name.
    pub id: String,
    /// `model`.
    pub object: &'static str,
    /// Unix seconds (the worker's start).
    pub created: u64,
    /// `lynx-serve`.
    pub owned_by: &'static str,
}

/// `{"error": ...}`.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorObject,
}

/// OpenAI's error object.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorObject {
    /// What went wrong, naming the limit or parameter.
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `rate_limit_error`, ...
    #[serde(rename = "type")]
    pub type_: &'static str,
    /// The request parameter at fault, if one is.
    pub param: Option<String>,
    /// A machine-readable code.
    pub code: Option<&'static str>,
}
