//! The whole Lynx model: vision encoder -> (frame embedding) -> resampler -> vision prefix in front
//! of the text embeddings -> LLaMA with adapters. Also the decoding session that owns the KV cache.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use super::llama::{KvCache, LlamaModel};
use super::nn::get;
use super::resampler::Resampler;
use super::vit::VisionEncoder;
use crate::checkpoint::keys::LynxKeys;
use crate::config::LynxConfig;

/// Vision input of one batch: never mixed (the official model takes a 4-D image batch or a 5-D video
/// batch).
#[derive(Debug, Clone)]
pub enum VisionBatch {
    /// `[B, 3, R, R]` normalised pixels.
    Images(Tensor),
    /// `[B, F, 3, R, R]` normalised pixels, `F` = the configured frames.
    Videos(Tensor),
}

/// The LLM input of a prefill: embeddings, 0/1 mask and RoPE positions.
#[derive(Debug, Clone)]
pub struct Prefill {
    /// `[B, S, hidden]`: vision prefix (if any), then the left-padded text.
    pub embeds: Tensor,
    /// `[B, S]` f32, 1 = attend.
    pub attention_mask: Tensor,
    /// `[B, S]` u32, `cumsum(mask) - 1`, masked positions set to 1 (HF semantics).
    pub positions: Tensor,
}

/// The Lynx model (CPU reference, f32).
#[derive(Debug, Clone)]
pub struct Lynx {
    vision: VisionEncoder,
    frame_pos: Tensor,
    bridge: Resampler,
    llm: LlamaModel,
    cfg: LynxConfig,
}

impl Lynx {
    /// Loads every part from a var builder in the LynxBase key namespace (`vision_encoder.*`,
    /// `absolute_frame_pos_embed`, `bridge.*`, `LLM.*`).
    pub fn load(vb: VarBuilder, cfg: &LynxConfig) -> Result<Self> {
        let keys = LynxKeys::new(cfg);
        Ok(Self {
            vision: VisionEncoder::load(&vb, &keys.vision, &cfg.vision)?,
            frame_pos: get(&vb, &keys.vision.frame_pos)?,
            bridge: Resampler::load(&vb, &keys.bridge, &cfg.bridge)?,
            llm: LlamaModel::load(&vb, &keys.llm, &cfg.llm)?,
            cfg: cfg.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LynxConfig {
        &self.cfg
    }

    /// The vision encoder (per-frame ViT).
    pub fn vision_encoder(&self) -> &VisionEncoder {
        &self.vision
    }

    /// The language model.
    pub fn llm(&self) -> &LlamaModel {
        &self.llm
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.frame_pos.device()
    }

    /// Vision tokens fed to the bridge: the ViT output for images; for videos the per-frame ViT
    /// output plus the frame position embedding, frames concatenated along the tokens.
    pub fn vision_tokens(&self, input: &VisionBatch) -> Result<Tensor> {
        match input {
            VisionBatch::Images(px) => self.vision.forward(px),
            VisionBatch::Videos(px) => {
                let (b, f, c, h, w) = px.dims5()?;
                if f != self.cfg.num_frames {
                    candle_core::bail!(
                        "video batch has {f} frames per video, the model takes {}",
                        self.cfg.num_frames
                    );
                }
                let per_frame = self.vision.forward(&px.reshape((b * f, c, h, w))?)?;
                let (_, n, d) = per_frame.dims3()?;
                per_frame
                    .reshape((b, f, n, d))?
                    .broadcast_add(&self.frame_pos)?
                    .reshape((b, f * n, d))
            }
        }
    }

    /// Resampler output `[B, latents, hidden]` for vision tokens.
    pub fn bridge(&self, vision_tokens: &Tensor) -> Result<Tensor> {
        self.bridge.forward(vision_tokens)
    }

    /// Vision input -> LLM prefix embeddings.
    pub fn encode_vision(&self, input: &VisionBatch) -> Result<Tensor> {
        self.bridge(&self.vision_tokens(input)?)
    }

    /// Builds the prefill: `[vision prefix][left pads][text]`, with mask and positions.
    ///
    /// `ids` and `atts` are `[B, T]` u32 (left-padded text and its 0/1 mask); `vision` is the
    /// bridge output `[B, L, hidden]` or `None` for a text-only prompt.
    pub fn prefill_inputs(
        &self,
        vision: Option<&Tensor>,
        ids: &Tensor,
        atts: &Tensor,
    ) -> Result<Prefill> {
        let text = self.llm.embed(ids)?;
        let atts = atts.to_dtype(DType::F32)?;
        let (embeds, mask) = match vision {
            Some(v) => {
                let (b, l, _) = v.dims3()?;
                let ones = Tensor::ones((b, l), DType::F32, v.device())?;
                (
                    Tensor::cat(&[v, &text], 1)?,
                    Tensor::cat(&[&ones, &atts], 1)?,
                )
            }
            None => (text, atts),
        };
        let positions = positions_from_mask(&mask)?;
        Ok(Prefill {
            embeds,
            attention_mask: mask,
            positions,
        })
    }

    /// Logits for every prefill position (no cache kept): `[B, S, vocab]`.
    pub fn prefill_logits(&self, prefill: &Prefill) -> Result<Tensor> {
        let mut cache = KvCache::new(self.cfg.llm.layers);
        self.llm.forward(
            &prefill.embeds,
            &prefill.positions,
            &prefill.attention_mask,
            &mut cache,
            false,
        )
    }

    /// Starts a decoding session: runs the prefill and keeps the KV cache.
    ///
    /// Every row is repeated `repeat` times (beams of one request are adjacent rows).
    pub fn start_session(
        &self,
        prefill: &Prefill,
        repeat: usize,
    ) -> Result<(LlmSession<'_>, Vec<Vec<f32>>)> {
        let (embeds, mask) = if repeat > 1 {
            let rows = repeat_rows(prefill.embeds.dim(0)?, repeat, prefill.embeds.device())?;
            (
                prefill.embeds.index_select(&rows, 0)?,
                prefill.attention_mask.index_select(&rows, 0)?,
            )
        } else {
            (prefill.embeds.clone(), prefill.attention_mask.clone())
        };
        let positions = positions_from_mask(&mask)?;
        let mut cache = KvCache::new(self.cfg.llm.layers);
        let logits = self
            .llm
            .forward(&embeds, &positions, &mask, &mut cache, true)?;
        let rows = logits.squeeze(1)?.to_vec2::<f32>()?;
        Ok((
            LlmSession {
                model: self,
                cache,
                mask,
            },
            rows,
        ))
    }
}

/// `cumsum(mask) - 1` with masked positions set to 1, as u32.
pub fn positions_from_mask(mask: &Tensor) -> Result<Tensor> {
    let rows = mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let (b, s) = mask.dims2()?;
    let mut out = Vec::with_capacity(b * s);
    for row in rows {
        let mut count = 0u32;
        for m in row {
            if m != 0.0 {
                count += 1;
                out.push(count - 1);
            } else {
                out.push(1);
            }
        }
    }
    Tensor::from_vec(out, (b, s), mask.device())
}

fn repeat_rows(b: usize, repeat: usize, device: &Device) -> Result<Tensor> {
    let idx: Vec<u32> = (0..b as u32)
        .flat_map(|i| std::iter::repeat_n(i, repeat))
        .collect();
    Tensor::from_vec(idx, b * repeat, device)
}

/// A decoding session over a fixed set of rows: KV cache plus the growing attention mask.
pub struct LlmSession<'a> {
    model: &'a Lynx,
    cache: KvCache,
    mask: Tensor,
}

impl LlmSession<'_> {
    /// Feeds one token per row; returns the next-token logits per row.
    pub fn step(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        let device = self.mask.device().clone();
        let b = tokens.len();
        let ids = Tensor::from_vec(tokens.to_vec(), (b, 1), &device)?;
        let embeds = self.model.llm.embed(&ids)?;
        let ones = Tensor::ones((b, 1), DType::F32, &device)?;
        self.mask = Tensor::cat(&[&self.mask, &ones], 1)?;
        // Position of the new token: number of attended positions before it.
        let counts = self.mask.sum(1)?.to_vec1::<f32>()?;
        let pos: Vec<u32> = counts.iter().map(|c| *c as u32 - 1).collect();
        let positions = Tensor::from_vec(pos, (b, 1), &device)?;
        let logits =
            self.model
                .llm
                .forward(&embeds, &positions, &self.mask, &mut self.cache, true)?;
        logits.squeeze(1)?.to_vec2::<f32>()
    }

    /// Rows in the session.
    pub fn rows(&self) -> usize {
        self.mask.dim(0).unwrap_or(0)
    }

    /// Continuous batching: appends `other`'s rows (a newly prefilled request) after this
    /// session's rows. The shorter side is left-padded with masked positions, so every row keeps
    /// exactly its own attended positions and RoPE positions.
    pub fn join(&mut self, mut other: LlmSession<'_>) -> Result<()> {
        let (mine, theirs) = (self.cache.seq_len(), other.cache.seq_len());
        let pad_mask = |m: &Tensor, n: usize| -> Result<Tensor> {
            if n == 0 {
                return Ok(m.clone());
            }
            let zeros = Tensor::zeros((m.dim(0)?, n), DType::F32, m.device())?;
            Tensor::cat(&[&zeros, m], 1)
        };
        if mine < theirs {
            self.cache.pad_left(theirs - mine)?;
            self.mask = pad_mask(&self.mask, theirs - mine)?;
        } else {
            other.cache.pad_left(mine - theirs)?;
            other.mask = pad_mask(&other.mask, mine - theirs)?;
        }
        self.cache.append_rows(other.cache)?;
        self.mask = Tensor::cat(&[&self.mask, &other.mask], 0)?;
        Ok(())
    }

    /// Reorders rows (beam search): row `i` becomes old row `rows[i]`.
    pub fn select_rows(&mut self, rows: &[u32]) -> Result<()> {
        let idx = Tensor::from_vec(rows.to_vec(), rows.len(), self.mask.device())?;
        self.cache.select_rows(&idx)?;
        self.mask = self.mask.index_select(&idx, 0)?;
        Ok(())
    }
}
