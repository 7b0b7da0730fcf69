//! The language model as kernel calls: LLaMA decoder layers with Lynx's adapters over a paged KV
//! cache. A prefill attends `[vision prefix][pads][text]` with the pads as a masked gap and
//! writes every attended token's K/V into cache blocks; a decode step appends one token per row.

use lynx_kernels::{DecodeAttention, DenseAttention};

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

/// Where a batch of rows keeps its cache: per row, its blocks and cached tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowCache {
    /// Block ids in order.
    pub blocks: Vec<u32>,
    /// Cached tokens.
    pub len: usize,
}

/// The paged KV cache of every layer plus its block allocator. Block 0 is a scratch block that
/// absorbs the writes of masked (pad) tokens and is never read.
pub struct KvPool<O: Ops> {
    k: Vec<O::Buf>,
    v: Vec<O::Buf>,
    free: Vec<u32>,
    num_blocks: usize,
    block_size: usize,
}

impl<O: Ops> KvPool<O> {
    /// A pool of `usable_blocks` blocks of `block_size` (a power of two) tokens for `llm`, plus
    /// the scratch block it allocates for itself.
    pub fn new(
        ops: &O,
        llm: &LlmConfig,
        usable_blocks: usize,
        block_size: usize,
    ) -> Result<Self, ForwardError> {
        if usable_blocks < 1 || !block_size.is_power_of_two() {
            return Err(ForwardError::Shape(format!(
                "KV pool of {usable_blocks} blocks of {block_size}"
            )));
        }
        let num_blocks = usable_blocks + 1;
        let len = num_blocks * block_size * llm.hidden;
        let (mut k, mut v) = (Vec::new(), Vec::new());
        for _ in 0..llm.layers {
            k.push(ops.alloc(len)?);
            v.push(ops.alloc(len)?);
        }
        Ok(Self {
            k,
            v,
            free: (1..num_blocks as u32).rev().collect(),
            num_blocks,
            block_size,
        })
    }

    /// Blocks not in use.
    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    fn take(&mut self) -> Result<u32, ForwardError> {
        self.free.pop().ok_or(ForwardError::OutOfBlocks)
    }

    /// Returns a row's blocks to the pool.
    pub fn release(&mut self, row: &mut RowCache) {
        self.free.append(&mut row.blocks);
        row.len = 0;
    }

    /// Grows `row` so it can hold `tokens` tokens.
    fn reserve(&mut self, row: &mut RowCache, tokens: usize) -> Result<(), ForwardError> {
        while row.blocks.len() * self.block_size < tokens {
            let b = self.take()?;
            row.blocks.push(b);
        }
        Ok(())
    }

    fn slot(&self, row: &RowCache, pos: usize) -> u32 {
        row.blocks[pos / self.block_size] * self.block_size as u32 + (pos % self.block_size) as u32
    }

    /// Gives each new row `i` the cache of old row `from[i]`: rows nobody takes are released
    /// first, then the first taker of a row takes its blocks and later takers get copies. When
    /// the pool runs out, every row is released and the error returned.
    pub fn reorder(
        &mut self,
        ops: &O,
        rows: Vec<RowCache>,
        from: &[u32],
        row_width: usize,
    ) -> Result<Vec<RowCache>, ForwardError> {
        let mut old: Vec<Option<RowCache>> = rows.into_iter().map(Some).collect();
        if let Some(&bad) = from.iter().find(|&&f| f as usize >= old.len()) {
            return Err(ForwardError::Shape(format!(
                "row {bad} of {} reordered",
                old.len()
            )));
        }
        // Rows nobody takes go back first, so the copies below never need more blocks than the
        // rows had (the scheduler's reservation holds).
        for (i, slot) in old.iter_mut().enumerate() {
            if !from.contains(&(i as u32)) {
                if let Some(mut row) = slot.take() {
                    self.release(&mut row);
                }
            }
        }
        let mut out: Vec<RowCache> = Vec::with_capacity(from.len());
        // Where each old row went first (its later takers copy it).
        let mut first_taker: Vec<usize> = vec![0; old.len()];
        let (mut src, mut dst) = (Vec::new(), Vec::new());
        for &f in from {
            let f = f as usize;
            if let Some(row) = old[f].take() {
                first_taker[f] = out.len();
                out.push(row);
                continue;
            }
            let template = &out[first_taker[f]];
            let mut copy = RowCache {
                blocks: Vec::new(),
                len: template.len,
            };
            if let Err(e) = self.reserve(&mut copy, template.len) {
                // Nothing leaks: every row of the batch goes back to the pool.
                let rest = old.into_iter().flatten();
                for mut row in out.into_iter().chain(rest).chain([copy]) {
                    self.release(&mut row);
                }
                return Err(e);
            }
            src.extend_from_slice(&out[first_taker[f]].blocks[..copy.blocks.len()]);
            dst.extend_from_slice(&copy.blocks);
            out.push(copy);
        }
        if !src.is_empty() {
            let block_elems = self.block_size * row_width;
            let si = ops.indices(&src, self.num_blocks)?;
            let di = ops.indices(&dst, self.num_blocks)?;
            // Copy through a staging buffer: source and destination are the same cache.
            let mut stage = ops.alloc(src.len() * block_elems)?;
            for cache in self.k.iter_mut().chain(self.v.iter_mut()) {
                ops.copy_rows(cache, Some(&si), &mut stage, None, src.len(), block_elems)?;
                ops.copy_rows(&stage, None, cache, Some(&di), src.len(), block_elems)?;
            }
        }
        Ok(out)
    }
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
        let max_blocks = rows.iter().map(|r| r.blocks.len()).max().unwrap_or(1);
        let mut table = Vec::with_capacity(r * max_blocks);
        for row in &rows {
            table.extend(&row.blocks);
            table.extend(std::iter::repeat_n(0, max_blocks - row.blocks.len()));
        }
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
        let max_blocks = rows.iter().map(|r| r.blocks.len()).max().unwrap_or(1);
        let mut table = Vec::with_capacity(r * max_blocks);
        for row in rows.iter() {
            table.extend(&row.blocks);
            table.extend(std::iter::repeat_n(0, max_blocks - row.blocks.len()));
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::presets::Preset;
    use crate::forward::host::HostOps;

    /// Two rows of one block each in a pool with no spare block: beam reordering `[0, 0]` must
    /// release row 1 before copying row 0 (the scheduler reserved no more than the rows hold).
    #[test]
    fn reordering_fits_in_the_blocks_the_rows_had() {
        let ops = HostOps::default();
        let tok = crate::tokenizer::toy::toy_tokenizer().expect("toy tokenizer");
        let llm = Preset::Tiny.config(&tok).llm;
        // Two usable blocks (the pool adds its scratch block).
        let mut pool = KvPool::new(&ops, &llm, 2, 4).expect("pool");
        let mut rows = vec![RowCache::default(), RowCache::default()];
        for row in &mut rows {
            pool.reserve(row, 3).expect("one block");
            row.len = 3;
        }
        assert_eq!(pool.free_blocks(), 0);
        let out = pool.reorder(&ops, rows, &[0, 0], llm.hidden).expect("fits");
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|r| r.len == 3 && r.blocks.len() == 1));
        assert_ne!(out[0].blocks, out[1].blocks, "the second taker got a copy");
        assert_eq!(pool.free_blocks(), 0);
        let err = pool.reorder(&ops, out, &[0, 0, 1], llm.hidden);
        assert!(matches!(err, Err(ForwardError::OutOfBlocks)));
        assert_eq!(
            pool.free_blocks(),
            2,
            "a failed reorder returns every block"
        );
    }
}
