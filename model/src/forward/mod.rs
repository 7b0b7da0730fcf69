//! The Lynx forward written once as a sequence of kernel calls ([`ops::Ops`]), run by the GPU
//! backend ([`cuda::CudaOps`]: our kernels, cuBLAS, a paged KV cache in device memory) or by its
//! host mirror ([`host::HostOps`], f32). The host mirror runs the very same program, so the
//! program is checked here against the candle model and the official outputs, and on a GPU
//! machine the device is checked against it (`lynx-worker gpu-check-model`).
//!
//! - [`ops`]: the operation set and the weight containers;
//! - [`weights`]: checkpoint or seeded random weights, made where they live;
//! - [`vision`]: ViT + resampler -> the LLM prefix;
//! - [`llm`]: LLaMA + adapters over the paged KV cache (prefill, decode step, beam reordering);
//! - [`DeviceLynx`] and [`DeviceSession`]: the model and a decoding session (a
//!   [`crate::generation::StepModel`]).

pub mod cuda;
pub mod e2e;
pub mod host;
pub mod kv_pool;
pub mod llm;
pub mod ops;
pub mod vision;
pub mod weights;

use std::sync::{Mutex, MutexGuard};

use lynx_kernels::KernelError;

use crate::config::LynxConfig;
use crate::generation::{Next, StepError, StepModel, Want};
use kv_pool::{KvPool, RowCache};
use llm::{Llm, PrefillBatch};
use ops::Ops;
use vision::{Pixels, Vision};
use weights::{Loader, Source};

/// Errors of the forward.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// A kernel or device call failed.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// Inputs or buffers do not fit the model.
    #[error("forward: {0}")]
    Shape(String),
    /// A weight is missing or malformed.
    #[error("weights: {0}")]
    Weights(String),
    /// Every KV cache block is in use.
    #[error("the KV cache is full")]
    OutOfBlocks,
}

/// The Lynx model on a backend.
pub struct DeviceLynx<O: Ops> {
    ops: O,
    vision: Vision<O>,
    llm: Llm<O>,
    pool: Mutex<KvPool<O>>,
    /// Usable KV blocks and tokens per block.
    kv: (usize, usize),
    cfg: LynxConfig,
}

impl<O: Ops> DeviceLynx<O> {
    /// Loads every weight from `source` onto `ops` and sets up a KV cache of `kv_blocks` usable
    /// blocks of `block_size` tokens (the cache's scratch block comes on top).
    pub fn load(
        ops: O,
        source: Source<'_>,
        cfg: &LynxConfig,
        kv_blocks: usize,
        block_size: usize,
    ) -> Result<Self, ForwardError> {
        let (vision, llm) = {
            let l = Loader::new(&ops, source);
            (Vision::load(&l, cfg)?, Llm::load(&l, &cfg.llm)?)
        };
        let pool = KvPool::new(&ops, &cfg.llm, kv_blocks, block_size)?;
        Ok(Self {
            ops,
            vision,
            llm,
            pool: Mutex::new(pool),
            kv: (kv_blocks, block_size),
            cfg: cfg.clone(),
        })
    }

    /// The backend.
    pub fn ops(&self) -> &O {
        &self.ops
    }

    /// The configuration.
    pub fn config(&self) -> &LynxConfig {
        &self.cfg
    }

    fn pool(&self) -> Result<MutexGuard<'_, KvPool<O>>, ForwardError> {
        self.pool
            .lock()
            .map_err(|_| ForwardError::Shape("KV pool lock poisoned".into()))
    }

    /// Usable KV-cache blocks (the scratch block not counted) and tokens per block.
    pub fn kv_capacity(&self) -> (usize, usize) {
        self.kv
    }

    /// Free KV cache blocks.
    pub fn free_blocks(&self) -> Result<usize, ForwardError> {
        Ok(self.pool()?.free_blocks())
    }

    /// Vision prefix `[sequences][latents][hidden]` of preprocessed pixels.
    pub fn encode_vision(&self, px: Pixels<'_>) -> Result<O::Buf, ForwardError> {
        self.vision.encode(&self.ops, px)
    }

    /// The ViT alone (`[images][tokens][width]`).
    pub fn vit(&self, pixels: &[f32], images: usize) -> Result<O::Buf, ForwardError> {
        self.vision.vit(&self.ops, pixels, images)
    }

    /// Prefills `ids` (`[rows][text]`, left-padded with `pads[r]` pads) after the optional
    /// vision prefix, each row repeated `repeat` times (beams of one request are adjacent), and
    /// returns the session with the first logits per row.
    pub fn start_session(
        &self,
        prefix: Option<&O::Buf>,
        ids: &[u32],
        pads: &[usize],
        repeat: usize,
    ) -> Result<(DeviceSession<'_, O>, Vec<Vec<f32>>), ForwardError> {
        let l = if prefix.is_some() {
            self.cfg.bridge.num_latents
        } else {
            0
        };
        self.start_session_with(prefix.map(|p| (p, l)), ids, pads, repeat)
    }

    /// [`Self::start_session`] with a vision prefix of any length per row (`(buffer, tokens)`:
    /// several images per request give several latent blocks).
    pub fn start_session_with(
        &self,
        prefix: Option<(&O::Buf, usize)>,
        ids: &[u32],
        pads: &[usize],
        repeat: usize,
    ) -> Result<(DeviceSession<'_, O>, Vec<Vec<f32>>), ForwardError> {
        let (prefix, l) = match prefix {
            Some((p, l)) => (Some(p), l),
            None => (None, 0),
        };
        let rows = pads.len();
        let repeat = repeat.max(1);
        if rows == 0 || !ids.len().is_multiple_of(rows) {
            return Err(ForwardError::Shape(format!(
                "{} token ids for {rows} rows",
                ids.len()
            )));
        }
        let text = ids.len() / rows;
        let hidden = self.cfg.llm.hidden;
        let rep_ids: Vec<u32> = ids
            .chunks_exact(text)
            .flat_map(|r| std::iter::repeat_n(r, repeat).flatten().copied())
            .collect();
        let rep_pads: Vec<usize> = pads
            .iter()
            .flat_map(|&p| std::iter::repeat_n(p, repeat))
            .collect();
        let rep_prefix = match prefix {
            Some(pre) if repeat > 1 => {
                let src: Vec<u32> = (0..rows * repeat * l)
                    .map(|i| ((i / (l * repeat)) * l + i % l) as u32)
                    .collect();
                let mut out = self.ops.alloc(rows * repeat * l * hidden)?;
                self.ops.copy_rows(
                    pre,
                    Some(&self.ops.indices(&src, rows * l)?),
                    &mut out,
                    None,
                    src.len(),
                    hidden,
                )?;
                Some(out)
            }
            _ => None,
        };
        let batch = PrefillBatch {
            rows: rows * repeat,
            prefix: l,
            text,
            ids: &rep_ids,
            pads: &rep_pads,
        };
        let mut pool = self.pool()?;
        let (cache, logits) =
            self.llm
                .prefill(&self.ops, &mut pool, &batch, rep_prefix.as_ref().or(prefix))?;
        Ok((
            DeviceSession {
                model: self,
                rows: cache,
            },
            logits,
        ))
    }
}

/// A decoding session: its rows' places in the shared paged KV cache.
pub struct DeviceSession<'m, O: Ops> {
    model: &'m DeviceLynx<O>,
    rows: Vec<RowCache>,
}

impl<O: Ops> DeviceSession<'_, O> {
    /// Rows in the session.
    pub fn rows(&self) -> usize {
        self.rows.len()
    }

    /// Continuous batching: appends `other`'s rows (the cache is shared, nothing moves).
    pub fn join(&mut self, mut other: DeviceSession<'_, O>) {
        self.rows.append(&mut other.rows);
    }

    /// Takes the rows out (they stay allocated; hand them to [`Self::add_rows`] of a session
    /// of the same model).
    pub fn take_rows(&mut self) -> Vec<RowCache> {
        std::mem::take(&mut self.rows)
    }

    /// Appends rows taken from another session of the same model.
    pub fn add_rows(&mut self, mut rows: Vec<RowCache>) {
        self.rows.append(&mut rows);
    }

    /// Feeds one token per row; returns the next-token logits per row.
    pub fn step_tokens(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, ForwardError> {
        let m = self.model;
        let mut pool = m.pool()?;
        m.llm.step(&m.ops, &mut pool, &mut self.rows, tokens)
    }

    /// [`Self::step_tokens`] where row `i` answers as `wants[i]` says (a greedy row: its token).
    pub fn step_picking(
        &mut self,
        tokens: &[u32],
        wants: &[Want],
    ) -> Result<Vec<Next>, ForwardError> {
        let m = self.model;
        let mut pool = m.pool()?;
        m.llm
            .step_picking(&m.ops, &mut pool, &mut self.rows, tokens, wants)
    }

    /// Reorders rows (beam search): row `i` becomes old row `from[i]`.
    pub fn reorder(&mut self, from: &[u32]) -> Result<(), ForwardError> {
        let m = self.model;
        let mut pool = m.pool()?;
        let rows = std::mem::take(&mut self.rows);
        self.rows = pool.reorder(&m.ops, rows, from, m.cfg.llm.hidden)?;
        Ok(())
    }
}

impl<O: Ops> Drop for DeviceSession<'_, O> {
    fn drop(&mut self) {
        if let Ok(mut pool) = self.model.pool() {
            for row in &mut self.rows {
                pool.release(row);
            }
        }
    }
}

impl<O: Ops> StepModel for DeviceSession<'_, O> {
    fn step(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, StepError> {
        Ok(self.step_tokens(tokens)?)
    }

    fn step_picking(&mut self, tokens: &[u32], wants: &[Want]) -> Result<Vec<Next>, StepError> {
        Ok(DeviceSession::step_picking(self, tokens, wants)?)
    }

    fn select_rows(&mut self, rows: &[u32]) -> Result<(), StepError> {
        Ok(self.reorder(rows)?)
    }
}
