//! Getting Lynx weights into a model folder: from S3 (or any S3-compatible store), Google Cloud
//! Storage, HTTP(S), the Hugging Face hub or a local path.
//!
//! # Guarantees
//! - Downloads go to `.lynx-partial/` in the model folder and are moved into place only when
//!   complete and verified (the sha256 the source publishes, and the pinned one).
//! - A transfer that breaks off is resumed from where it stopped (also by a later run, for the
//!   same version of the file); a source that cannot resume is downloaded again from the start.
//! - The marker `.lynx-model.json` records what was fetched (URI, revision, digests, files); a
//!   later fetch skips the download only when the request, the source's listing and the files
//!   on disk all match it.
//! - Concurrent fetches into one folder (pods on one ReadWriteMany volume) are serialized by a
//!   file lock: one downloads, the others find its marker.
//! - Every failure carries a reason (`NotFound`, `AccessDenied`, `ChecksumMismatch`, `DiskFull`,
//!   ...) and a message a user can act on.

pub mod archive;
pub mod command;
pub mod error;
pub mod fetch;
pub mod folder;
mod http;
pub mod hub;
pub mod marker;
mod object;
pub mod progress;
pub mod remote;
pub mod source;
mod transfer;

pub use command::{run, FetchArgs};
pub use error::FetchError;
pub use fetch::{fetch, wait, Converter, Outcome, Request};
pub use source::Source;
