//! The model as the serving layer sees it: configuration, tokenizer and the forward program
//! ([`crate::forward`]) on one backend (CPU kernels, the f64 mirror, or CUDA at any precision),
//! type-erased behind [`DeviceCompute`]. The runner talks to it through a few calls: encode
//! vision inputs, prefill a group, step, join, reorder.

use std::any::Any;
use std::sync::Arc;

use crate::config::LynxConfig;
use crate::forward::llm::RowCache;
use crate::forward::ops::Ops;
use crate::forward::vision::Pixels;
use crate::forward::{DeviceLynx, DeviceSession, ForwardError};
use crate::generation::StepModel;
use crate::prompt::left_pad;
use crate::tokenizer::LynxTokenizer;

/// A model ready to serve.
pub struct ServedModel {
    /// The configuration.
    pub config: LynxConfig,
    /// The tokenizer.
    pub tokenizer: LynxTokenizer,
    /// What computes.
    pub compute: Box<dyn DeviceCompute>,
}

impl std::fmt::Debug for ServedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedModel")
            .field("model_name", &self.config.model_name)
            .field("device", &self.device())
            .finish()
    }
}

impl ServedModel {
    /// Where the model runs, for logs and model info (e.g. `cpu f32 (2 threads)`,
    /// `NVIDIA H200 bf16`).
    pub fn device(&self) -> String {
        self.compute.describe()
    }
}

/// One sequence's vision prefix (`num_latents x hidden`) on a device, type-erased.
#[derive(Clone)]
pub struct DevicePrefix {
    buf: Arc<dyn Any + Send + Sync>,
    bytes: usize,
}

impl DevicePrefix {
    /// Device bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// A started device session and the first logits of each of its rows.
pub type Started<'a> = (Box<dyn DeviceStep + 'a>, Vec<Vec<f32>>);

/// A decoding session on a device, type-erased.
pub trait DeviceStep: StepModel + Send {
    /// Takes the rows out (for [`DeviceStep::add_rows`] of another session of the model).
    fn take_rows(&mut self) -> Vec<RowCache>;
    /// Appends rows taken from another session of the same model.
    fn add_rows(&mut self, rows: Vec<RowCache>);
}

/// The forward program on a device, type-erased (any backend, any precision).
pub trait DeviceCompute: Send + Sync {
    /// What runs it.
    fn describe(&self) -> String;
    /// Encodes `sequences` images (`frames` = 1) or videos; one prefix per sequence.
    fn encode(
        &self,
        pixels: &[f32],
        sequences: usize,
        frames: usize,
    ) -> Result<Vec<DevicePrefix>, ForwardError>;
    /// Prefills one group: request `i` has the vision parts `prefixes[i]` (every request the
    /// same count) and the prompt `prompts[i]`, repeated `rows` times.
    fn start<'a>(
        &'a self,
        prefixes: &[Vec<&DevicePrefix>],
        prompts: &[Vec<u32>],
        rows: usize,
    ) -> Result<Started<'a>, ForwardError>;
}

impl<O: Ops> DeviceStep for DeviceSession<'_, O> {
    fn take_rows(&mut self) -> Vec<RowCache> {
        DeviceSession::take_rows(self)
    }

    fn add_rows(&mut self, rows: Vec<RowCache>) {
        DeviceSession::add_rows(self, rows)
    }
}

impl<O: Ops> DeviceCompute for DeviceLynx<O> {
    fn describe(&self) -> String {
        self.ops().describe()
    }

    fn encode(
        &self,
        pixels: &[f32],
        sequences: usize,
        frames: usize,
    ) -> Result<Vec<DevicePrefix>, ForwardError> {
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
            out.push(DevicePrefix {
                buf: Arc::new(one),
                bytes: l * h * ops.elem_bytes(),
            });
        }
        Ok(out)
    }

    fn start<'a>(
        &'a self,
        prefixes: &[Vec<&DevicePrefix>],
        prompts: &[Vec<u32>],
        rows: usize,
    ) -> Result<Started<'a>, ForwardError> {
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
                    let src = part.buf.downcast_ref::<O::Buf>().ok_or_else(|| {
                        ForwardError::Shape("a vision prefix from another backend".into())
                    })?;
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
        Ok((Box::new(session), logits))
    }
}
