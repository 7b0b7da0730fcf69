//! The paged KV cache: every layer's key and value blocks and the allocator that hands blocks
//! to rows (a prefill reserves a row's blocks, a decode step grows them, beam search copies a
//! row whose blocks another row also continues).

use lynx_kernels::DenseAttention;

use super::ops::Ops;
use super::ForwardError;
use crate::config::LlmConfig;

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
    pub(super) k: Vec<O::Buf>,
    pub(super) v: Vec<O::Buf>,
    free: Vec<u32>,
    pub(super) num_blocks: usize,
    pub(super) block_size: usize,
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
    pub(super) fn reserve(
        &mut self,
        row: &mut RowCache,
        tokens: usize,
    ) -> Result<(), ForwardError> {
        while row.blocks.len() * self.block_size < tokens {
            let b = self.take()?;
            row.blocks.push(b);
        }
        Ok(())
    }

    pub(super) fn slot(&self, row: &RowCache, pos: usize) -> u32 {
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

/// The rows' block ids as a `[rows][max_blocks]` table (unused columns 0) and its width.
pub fn block_table(rows: &[RowCache]) -> (Vec<u32>, usize) {
    let max_blocks = rows.iter().map(|r| r.blocks.len()).max().unwrap_or(1);
    let mut table = Vec::with_capacity(rows.len() * max_blocks);
    for row in rows {
        table.extend(&row.blocks);
        table.extend(std::iter::repeat_n(0, max_blocks - row.blocks.len()));
    }
    (table, max_blocks)
}

/// Writes a prefill's `[batch][seq_kv][heads][head_dim]` keys (or values) `src` into a host
/// `cache` with the addressing of `flash_fwd`'s in-pass fill: key `j` of row `b` goes to its
/// cache position (the gap skipped) in block `table[b * max_blocks + position / block_size]`.
/// `layout` is `(max_blocks, block_size, heads, head_dim)`.
pub fn fill_by_table(
    p: &DenseAttention,
    src: &[f32],
    cache: &mut [f32],
    table: &[u32],
    layout: (usize, usize, usize, usize),
) -> Result<(), ForwardError> {
    let (max_blocks, bs, heads, hd) = layout;
    for b in 0..p.batch {
        for j in 0..p.seq_kv {
            let Some(pos) = p.cache_position(b, j) else {
                continue;
            };
            let block = table.get(b * max_blocks + pos / bs).copied();
            let block =
                block.ok_or_else(|| ForwardError::Shape(format!("row {b}: no block for {pos}")))?;
            for h in 0..heads {
                let at = ((block as usize * heads + h) * bs + pos % bs) * hd;
                let from = ((b * p.seq_kv + j) * heads + h) * hd;
                match (cache.get_mut(at..at + hd), src.get(from..from + hd)) {
                    (Some(dst), Some(row)) => dst.copy_from_slice(row),
                    _ => {
                        return Err(ForwardError::Shape(format!(
                            "row {b} token {j} outside the cache or the keys"
                        )))
                    }
                }
            }
        }
    }
    Ok(())
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
