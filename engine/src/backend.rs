//! The model as the serving layer sees it: [`ServedModel`] (configuration, tokenizer, where it
//! runs) and a [`Backend`]: the forward program ([`crate::forward`]) on the CPU kernels, the f64
//! mirror, or CUDA at any precision. The runner is generic over the backend, so prefixes and
//! sessions keep their concrete types (no type erasure, no run-time kind checks); the one choice
//! among backends is made once, when the model is loaded ([`Backends`]).

use std::sync::Arc;

use crate::config::LynxConfig;
use crate::forward::cuda::CudaOps;
use crate::forward::host::HostOps;
use crate::forward::ops::Ops;
use crate::forward::vision::Pixels;
use crate::forward::{DeviceLynx, DeviceSession, ForwardError};
use crate::generation::StepModel;
use crate::prompt::left_pad;
use crate::tokenizer::LynxTokenizer;

/// What the server knows of the model it serves.
pub struct ServedModel {
    /// The configuration.
    pub config: LynxConfig,
    /// The tokenizer.
    pub tokenizer: LynxTokenizer,
    /// Where it runs, for logs and model info (e.g. `cpu f32 (2 threads)`, `NVIDIA H200 bf16`).
    pub device: String,
}

impl std::fmt::Debug for ServedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedModel")
            .field("model_name", &self.config.model_name)
            .field("device", &self.device)
            .finish()
    }
}

/// What computes: the calls the runner makes on the model.
pub trait Backend: Send + Sync + 'static {
    /// One vision input's encoding (`num_latents x hidden`), as the encoder cache keeps it.
    type Prefix: Clone + Send + Sync;
    /// A running decode session over the backend's KV cache.
    type Session<'a>: BackendSession
    where
        Self: 'a;

    /// Where it runs.
    fn describe(&self) -> String;
    /// Bytes an encoding holds (the encoder cache's budget).
    fn prefix_bytes(&self, prefix: &Self::Prefix) -> usize;
    /// Usable KV-cache blocks and tokens per block: what the scheduler reserves from.
    fn kv_blocks(&self) -> (usize, usize);
    /// Encodes `sequences` images (`frames` = 1) or videos; one prefix per sequence.
    fn encode(
        &self,
        pixels: &[f32],
        sequences: usize,
        frames: usize,
    ) -> Result<Vec<Self::Prefix>, ForwardError>;
    /// Prefills one group: request `i` has the vision parts `prefixes[i]` (every request the
    /// same count) and the prompt `prompts[i]`, repeated `rows` times. Returns the session and
    /// the first logits of each row.
    #[allow(clippy::type_complexity)]
    fn start<'a>(
        &'a self,
        prefixes: &[Vec<&Self::Prefix>],
        prompts: &[Vec<u32>],
        rows: usize,
    ) -> Result<(Self::Session<'a>, Vec<Vec<f32>>), ForwardError>;
}

/// A decode session: steps and beam reordering ([`StepModel`]), and continuous batching.
pub trait BackendSession: StepModel + Send {
    /// Appends `other`'s rows after this session's.
    fn join(&mut self, other: Self)
    where
        Self: Sized;
}

/// The loaded backend, chosen once at load time (`--device`, `--dtype`).
pub enum Backends {
    /// The host: the CPU kernels or the f64 mirror.
    Host(DeviceLynx<HostOps>),
    /// CUDA in f32.
    CudaF32(DeviceLynx<CudaOps<f32>>),
    /// CUDA in bf16 or f16.
    CudaHalf(DeviceLynx<CudaOps<u16>>),
}

/// Runs `$body` with `$b` bound to the concrete backend inside `$backends`.
#[macro_export]
macro_rules! with_backend {
    ($backends:expr, $b:ident => $body:expr) => {
        match $backends {
            $crate::backend::Backends::Host($b) => $body,
            $crate::backend::Backends::CudaF32($b) => $body,
            $crate::backend::Backends::CudaHalf($b) => $body,
        }
    };
}

/// A loaded model: what the server knows of it and what computes.
pub struct Loaded {
    /// Configuration, tokenizer, device.
    pub model: ServedModel,
    /// The backend, handed to the model thread.
    pub backend: Backends,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.model.fmt(f)
    }
}

impl Backends {
    /// Where it runs.
    pub fn describe(&self) -> String {
        with_backend!(self, b => b.describe())
    }
}

/// A vision prefix of the forward program (shared by the encoder cache and the requests).
pub struct Prefix<O: Ops>(Arc<O::Buf>);

impl<O: Ops> Clone for Prefix<O> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<O: Ops> BackendSession for DeviceSession<'_, O> {
    fn join(&mut self, other: Self) {
        DeviceSession::join(self, other)
    }
}

impl<O: Ops + 'static> Backend for DeviceLynx<O> {
    type Prefix = Prefix<O>;
    type Session<'a> = DeviceSession<'a, O>;

    fn describe(&self) -> String {
        self.ops().describe()
    }

    fn prefix_bytes(&self, _: &Prefix<O>) -> usize {
        let c = self.config();
        c.bridge.num_latents * c.llm.hidden * self.ops().elem_bytes()
    }

    fn kv_blocks(&self) -> (usize, usize) {
        self.kv_capacity()
    }

    fn encode(
        &self,
        pixels: &[f32],
        sequences: usize,
        frames: usize,
    ) -> Result<Vec<Prefix<O>>, ForwardError> {
        let ops = self.ops();
        let all = self.encode_vision(Pixels {
            values: pixels,
            sequences,
            frames,
        })?;
        let (l, h) = (self.config().bridge.num_latents, self.config().llm.hidden);
        let mut out = Vec::with_capacity(sequences);
        for s in 0..sequences {
            let rows: Vec<u32> = (s * l..(s + 1) * l).map(|r| r as u32).collect();
            let mut one = ops.alloc(l * h)?;
            ops.copy_rows(
                &all,
                Some(&ops.indices(&rows, sequences * l)?),
                &mut one,
                None,
                l,
                h,
            )?;
            out.push(Prefix(Arc::new(one)));
        }
        Ok(out)
    }

    fn start<'a>(
        &'a self,
        prefixes: &[Vec<&Prefix<O>>],
        prompts: &[Vec<u32>],
        rows: usize,
    ) -> Result<(DeviceSession<'a, O>, Vec<Vec<f32>>), ForwardError> {
        let ops = self.ops();
        let cfg = self.config();
        let (l, h) = (cfg.bridge.num_latents, cfg.llm.hidden);
        let parts = prefixes.first().map_or(0, Vec::len);
        if prefixes.len() != prompts.len() || prefixes.iter().any(|p| p.len() != parts) {
            return Err(ForwardError::Shape(
                "a prefill group mixes vision prefix lengths".into(),
            ));
        }
        let group = prompts.len();
        let prefix = if parts > 0 {
            let per_row = parts * l;
            let mut buf = ops.alloc(group * per_row * h)?;
            for (i, request) in prefixes.iter().enumerate() {
                for (j, part) in request.iter().enumerate() {
                    let src: &O::Buf = &part.0;
                    let dst: Vec<u32> = (0..l).map(|r| (i * per_row + j * l + r) as u32).collect();
                    ops.copy_rows(
                        src,
                        None,
                        &mut buf,
                        Some(&ops.indices(&dst, group * per_row)?),
                        l,
                        h,
                    )?;
                }
            }
            Some((buf, per_row))
        } else {
            None
        };
        let padded = left_pad(prompts, cfg.tokens.pad);
        let pads: Vec<usize> = padded
            .mask
            .chunks_exact(padded.width)
            .map(|m| m.iter().take_while(|&&a| a == 0).count())
            .collect();
        let (session, logits) = self.start_session_with(
            prefix.as_ref().map(|(b, n)| (b, *n)),
            &padded.ids,
            &pads,
            rows,
        )?;
        Ok((session, logits))
    }
}
