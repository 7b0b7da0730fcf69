//! The language model as kernel calls: LLaMA decoder layers with Lynx's adapters over a paged KV
//! cache. A prefill attends `[vision prefix][pads][text]` with the pads as a masked gap and
//! writes every attended token's K/V into cache blocks; a decode step appends one token per row.

use lynx_kernels::{DecodeAttention, DenseAttention};

use super::kv_pool::{block_table, KvPool, RowCache};
use super::ops::{CacheFill, Linear, Norm, Ops};
use super::weights::Loader;
use super::ForwardError;
use crate::checkpoint::keys::LlmKeys;
use crate::config::LlmConfig;
use crate::generation::{Next, Want};

const ADAPTER_LN_EPS: f32 = 1e-5;

struct Adapter<B> {
    norm: Norm<B>,
    down: Linear<B>,
    up: Linear<B>,
    scaling: f32,
}

struct Layer<B> {
    input_norm: Norm<B>,
    /// `q_proj | k_proj | v_proj` fused into one `[3 * hidden][hidden]` GEMM.
    qkv: Linear<B>,
    o: Linear<B>,
    post_norm: Norm<B>,
    gate_up: Linear<B>,
    down: Linear<B>,
    adapter: Option<Adapter<B>>,
}

/// LLaMA + adapters on a backend.
pub struct Llm<O: Ops> {
    embed: O::Buf,
    layers: Vec<Layer<O::Buf>>,
    norm: Norm<O::Buf>,
    lm_head: Linear<O::Buf>,
    rope: O::Rope,
    cfg: LlmConfig,
}

/// A prefill batch: `[rows][prefix + text]` tokens, the text left-padded.
#[derive(Debug, Clone)]
pub struct PrefillBatch<'a> {
    /// Rows.
    pub rows: usize,
    /// Vision prefix tokens per row (0: text only).
    pub prefix: usize,
    /// Text tokens per row (pads included).
    pub text: usize,
    /// `[rows][text]` token ids.
    pub ids: &'a [u32],
    /// Leading pads per row.
    pub pads: &'a [usize],
}

impl<O: Ops> Llm<O> {
    /// Loads `LLM.*`.
    pub fn load(l: &Loader<'_, '_, O>, cfg: &LlmConfig) -> Result<Self, ForwardError> {
        let eps = cfg.rms_norm_eps as f32;
        let keys = LlmKeys::new(cfg);
        let layers = keys
            .layers
            .iter()
            .map(|k| {
                let adapter = match &k.adapter {
                    Some(a) => Some(Adapter {
                        norm: l.norm(&a.norm, ADAPTER_LN_EPS)?,
                        down: l.linear(&a.down)?,
                        up: l.linear(&a.up)?,
                        scaling: l.host(&a.scaling)?[0],
                    }),
                    None => None,
                };
                Ok(Layer {
                    input_norm: l.norm(&k.input_norm, eps)?,
                    qkv: l.fused_linear(&[&k.q, &k.k, &k.v])?,
                    o: l.linear(&k.o)?,
                    post_norm: l.norm(&k.post_norm, eps)?,
                    gate_up: l.fused_linear(&[&k.gate, &k.up])?,
                    down: l.linear(&k.down)?,
                    adapter,
                })
            })
            .collect::<Result<Vec<_>, ForwardError>>()?;
        let (cos, sin) = lynx_kernels::ops::rope_table(
            cfg.max_position_embeddings,
            cfg.head_dim(),
            cfg.rope_theta as f32,
        );
        Ok(Self {
            embed: l.tensor(&keys.embed)?,
            layers,
            norm: l.norm(&keys.norm, eps)?,
            lm_head: l.linear(&keys.lm_head)?,
            rope: l.ops().rope_table(&cos, &sin)?,
            cfg: cfg.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LlmConfig {
        &self.cfg
    }

    /// Prefill: fills fresh cache rows and returns them with the last position's logits per
    /// row. `prefix` is the vision prefix `[rows][prefix][hidden]` when `batch.prefix > 0`.
    pub fn prefill(
        &self,
        ops: &O,
        pool: &mut KvPool<O>,
        batch: &PrefillBatch<'_>,
        prefix: Option<&O::Buf>,
    ) -> Result<(Vec<RowCache>, Vec<Vec<f32>>), ForwardError> {
        let (r, l, t) = (batch.rows, batch.prefix, batch.text);
        let s = l + t;
        let h = self.cfg.hidden;
        if r == 0 || t == 0 || batch.ids.len() != r * t || batch.pads.len() != r {
            return Err(ForwardError::Shape(format!(
                "prefill of {r} rows x {t} text tokens with {} ids and {} pad counts",
                batch.ids.len(),
                batch.pads.len()
            )));
        }
        if (l > 0) != prefix.is_some() {
            return Err(ForwardError::Shape(
                "vision prefix length without a prefix".into(),
            ));
        }
        if let Some(&bad) = batch.pads.iter().find(|&&p| p >= t) {
            return Err(ForwardError::Shape(format!(
                "{bad} pads in {t} text tokens"
            )));
        }
        let tokens = r * s;
        if s > self.cfg.max_position_embeddings {
            return Err(ForwardError::Shape(format!(
                "{s} positions exceed the model's {}",
                self.cfg.max_position_embeddings
            )));
        }
        // Embeddings: [prefix][text] per row.
        let mut x = ops.alloc(tokens * h)?;
        if let Some(pre) = prefix {
            let dst: Vec<u32> = (0..r * l).map(|i| ((i / l) * s + i % l) as u32).collect();
            ops.copy_rows(
                pre,
                None,
                &mut x,
                Some(&ops.indices(&dst, tokens)?),
                r * l,
                h,
            )?;
        }
        let dst: Vec<u32> = (0..r * t)
            .map(|i| ((i / t) * s + l + i % t) as u32)
            .collect();
        ops.copy_rows(
            &self.embed,
            Some(&ops.indices(batch.ids, self.cfg.vocab_size)?),
            &mut x,
            Some(&ops.indices(&dst, tokens)?),
            r * t,
            h,
        )?;
        // Positions, gaps and cache slots.
        let mut rows = Vec::with_capacity(r);
        let (mut positions, mut slots, mut gaps) = (Vec::new(), Vec::new(), Vec::new());
        for &pads in batch.pads {
            let mut cache = RowCache::default();
            let cached = s - pads;
            if let Err(e) = pool.reserve(&mut cache, cached) {
                for mut done in rows.drain(..) {
                    pool.release(&mut done);
                }
                pool.release(&mut cache);
                return Err(e);
            }
            gaps.push((l, l + pads));
            let mut n = 0usize;
            for j in 0..s {
                if j >= l && j < l + pads {
                    positions.push(1);
                    slots.push(0); // the scratch block
                } else {
                    positions.push(n as u32);
                    slots.push(pool.slot(&cache, n));
                    n += 1;
                }
            }
            cache.len = cached;
            rows.push(cache);
        }
        let attn = DenseAttention::new(r, self.cfg.heads, s, s, self.cfg.head_dim())
            .causal()
            .with_gaps(gaps);
        let pos = ops.indices(&positions, self.cfg.max_position_embeddings)?;
        let slot_idx = ops.indices(&slots, pool.num_blocks * pool.block_size)?;
        let (table, max_blocks) = block_table(&rows);
        let table = ops.indices(&table, pool.num_blocks)?;
        let prefill = Attend::Prefill(&attn, &table, max_blocks);
        let x = self.layers_forward(ops, pool, x, tokens, &pos, &slot_idx, prefill)?;
        let last: Vec<u32> = (0..r).map(|i| (i * s + s - 1) as u32).collect();
        let logits = self.logits(ops, &x, Some(&ops.indices(&last, tokens)?), r)?;
        Ok((rows, logits))
    }

    /// One decode step: feeds `tokens[i]` to row `i`, grows the rows' caches, returns logits.
    pub fn step(
        &self,
        ops: &O,
        pool: &mut KvPool<O>,
        rows: &mut [RowCache],
        tokens: &[u32],
    ) -> Result<Vec<Vec<f32>>, ForwardError> {
        let x = self.step_hidden(ops, pool, rows, tokens)?;
        self.logits(ops, &x, None, rows.len())
    }

    /// [`Self::step`] where row `i` answers as `wants[i]` says: the LM head runs over every row,
    /// greedy rows are picked where the logits are, and only the other rows' logits are copied
    /// out.
    pub fn step_picking(
        &self,
        ops: &O,
        pool: &mut KvPool<O>,
        rows: &mut [RowCache],
        tokens: &[u32],
        wants: &[Want],
    ) -> Result<Vec<Next>, ForwardError> {
        let r = rows.len();
        if wants.len() != r {
            return Err(ForwardError::Shape(format!(
                "{} wants for {r} rows",
                wants.len()
            )));
        }
        let x = self.step_hidden(ops, pool, rows, tokens)?;
        let vocab = self.cfg.vocab_size;
        let mut logits = self.head(ops, &x, None, r)?;
        let mut full: Vec<u32> = Vec::new();
        let mut banned: Vec<u32> = Vec::new();
        for (i, want) in wants.iter().enumerate() {
            match want {
                Want::Logits => full.push(i as u32),
                Want::Argmax { banned: ids } => banned.extend(
                    ids.iter()
                        .filter(|&&t| (t as usize) < vocab)
                        .map(|&t| (i * vocab) as u32 + t),
                ),
            }
        }
        // The logits rows are copied out before the bans touch the picked rows.
        let flat = if full.len() == r {
            ops.download(&logits)?
        } else if full.is_empty() {
            Vec::new()
        } else {
            let mut kept = ops.alloc(full.len() * vocab)?;
            let idx = ops.indices(&full, r)?;
            ops.copy_rows(&logits, Some(&idx), &mut kept, None, full.len(), vocab)?;
            ops.download(&kept)?
        };
        let picked = match full.len() < r {
            true => ops.argmax(&mut logits, r, vocab, &banned)?,
            false => Vec::new(),
        };
        let mut kept = flat.chunks_exact(vocab.max(1));
        Ok((0..r)
            .map(|i| match wants[i] {
                Want::Argmax { .. } => Next::Token(picked[i]),
                Want::Logits => Next::Logits(kept.next().map(<[f32]>::to_vec).unwrap_or_default()),
            })
            .collect())
    }

    /// The hidden states after the last layer of a decode step.
    fn step_hidden(
        &self,
        ops: &O,
        pool: &mut KvPool<O>,
        rows: &mut [RowCache],
        tokens: &[u32],
    ) -> Result<O::Buf, ForwardError> {
        let (r, h) = (rows.len(), self.cfg.hidden);
        if tokens.len() != r || r == 0 {
            return Err(ForwardError::Shape(format!(
                "{} tokens for {r} rows",
                tokens.len()
            )));
        }
        let mut positions = Vec::with_capacity(r);
        let mut slots = Vec::with_capacity(r);
        for row in rows.iter_mut() {
            if row.len + 1 > self.cfg.max_position_embeddings {
                return Err(ForwardError::Shape(format!(
                    "position {} exceeds the model's {}",
                    row.len, self.cfg.max_position_embeddings
                )));
            }
            pool.reserve(row, row.len + 1)?;
            positions.push(row.len as u32);
            slots.push(pool.slot(row, row.len));
            row.len += 1;
        }
        let (table, max_blocks) = block_table(rows);
        let decode = DecodeAttention {
            batch: r,
            heads: self.cfg.heads,
            head_dim: self.cfg.head_dim(),
            block_size: pool.block_size,
            num_blocks: pool.num_blocks,
            max_blocks,
            scale: 1.0 / (self.cfg.head_dim() as f32).sqrt(),
            seq_lens: rows.iter().map(|r| r.len as u32).collect(),
            block_table: table,
        };
        let mut x = ops.alloc(r * h)?;
        ops.copy_rows(
            &self.embed,
            Some(&ops.indices(tokens, self.cfg.vocab_size)?),
            &mut x,
            None,
            r,
            h,
        )?;
        let pos = ops.indices(&positions, self.cfg.max_position_embeddings)?;
        let slot_idx = ops.indices(&slots, pool.num_blocks * pool.block_size)?;
        let tables = ops.decode_tables(&decode)?;
        self.layers_forward(
            ops,
            pool,
            x,
            r,
            &pos,
            &slot_idx,
            Attend::Decode(&decode, &tables),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn layers_forward(
        &self,
        ops: &O,
        pool: &mut KvPool<O>,
        mut x: O::Buf,
        tokens: usize,
        pos: &O::Idx,
        slots: &O::Idx,
        attend: Attend<'_, O>,
    ) -> Result<O::Buf, ForwardError> {
        let c = &self.cfg;
        let (h, inter, hd) = (c.hidden, c.intermediate, c.head_dim());
        let n = tokens * h;
        let (mut y, mut q, mut k, mut v, mut a, mut o) = (
            ops.alloc(n)?,
            ops.alloc(n)?,
            ops.alloc(n)?,
            ops.alloc(n)?,
            ops.alloc(n)?,
            ops.alloc(n)?,
        );
        let mut qkv = ops.alloc(3 * n)?;
        let (mut gu, mut m) = (ops.alloc(tokens * 2 * inter)?, ops.alloc(tokens * inter)?);
        let mut ad = ops.alloc(tokens * c.adapter_dim.max(1))?;
        for (i, layer) in self.layers.iter().enumerate() {
            ops.norm(&x, tokens, &layer.input_norm, &mut y)?;
            ops.linear(&y, tokens, &layer.qkv, &mut qkv)?;
            let rope = Some((pos, &self.rope));
            ops.qkv_split(&qkv, tokens, c.heads, hd, rope, &mut q, &mut k, &mut v)?;
            let (kc, vc) = (&mut pool.k[i], &mut pool.v[i]);
            match attend {
                Attend::Prefill(p, table, max_blocks) => {
                    let fill = CacheFill {
                        k_cache: kc,
                        v_cache: vc,
                        slots,
                        table,
                        max_blocks,
                        block_size: pool.block_size,
                        heads: c.heads,
                        head_dim: hd,
                    };
                    ops.attention_filling(p, &q, &k, &v, &mut a, fill)?
                }
                Attend::Decode(p, t) => {
                    ops.kv_write(&k, &v, slots, kc, vc, c.heads, hd, pool.block_size)?;
                    ops.decode(p, t, &q, &pool.k[i], &pool.v[i], &mut a)?
                }
            }
            ops.linear_add(&a, tokens, &layer.o, &mut x)?;
            ops.norm(&x, tokens, &layer.post_norm, &mut y)?;
            ops.linear(&y, tokens, &layer.gate_up, &mut gu)?;
            ops.silu_mul(&gu, tokens, inter, &mut m)?;
            ops.linear_add(&m, tokens, &layer.down, &mut x)?;
            if let Some(ad_w) = &layer.adapter {
                ops.norm(&x, tokens, &ad_w.norm, &mut y)?;
                ops.linear(&y, tokens, &ad_w.down, &mut ad)?;
                ops.silu(&mut ad, tokens * c.adapter_dim)?;
                ops.linear(&ad, tokens, &ad_w.up, &mut o)?;
                ops.accumulate(&mut x, &o, n, ad_w.scaling)?;
            }
        }
        Ok(x)
    }

    /// Final norm + LM head over the selected rows, logits to the host.
    fn logits(
        &self,
        ops: &O,
        x: &O::Buf,
        select: Option<&O::Idx>,
        rows: usize,
    ) -> Result<Vec<Vec<f32>>, ForwardError> {
        let flat = ops.download(&self.head(ops, x, select, rows)?)?;
        Ok(flat
            .chunks_exact(self.cfg.vocab_size)
            .take(rows)
            .map(<[f32]>::to_vec)
            .collect())
    }

    /// Final norm + LM head over the selected rows (`[rows][vocab]`, where `x` is).
    fn head(
        &self,
        ops: &O,
        x: &O::Buf,
        select: Option<&O::Idx>,
        rows: usize,
    ) -> Result<O::Buf, ForwardError> {
        let h = self.cfg.hidden;
        let mut normed = ops.alloc(rows * h)?;
        match select {
            // Prefill: the last position of each row.
            Some(rows_idx) => {
                let mut last = ops.alloc(rows * h)?;
                ops.copy_rows(x, Some(rows_idx), &mut last, None, rows, h)?;
                ops.norm(&last, rows, &self.norm, &mut normed)?;
            }
            // Decode: every row is a last position.
            None => ops.norm(x, rows, &self.norm, &mut normed)?,
        }
        let mut logits = ops.alloc(rows * self.cfg.vocab_size)?;
        ops.linear(&normed, rows, &self.lm_head, &mut logits)?;
        Ok(logits)
    }
}

enum Attend<'a, O: Ops> {
    /// A prefill: dense attention, the cache filled through the block table (or the slots).
    Prefill(&'a DenseAttention, &'a O::Idx, usize),
    /// A decode step over the paged cache.
    Decode(&'a DecodeAttention, &'a O::Tables),
}
