//! Paged KV-cache accounting: fixed-size blocks of token positions, allocated per sequence as it
//! grows and freed when it leaves. Pure bookkeeping; the model's cache tensors are indexed by the
//! block ids handed out here.

use std::collections::HashMap;

/// Identifies a sequence (one beam of one request) in the running batch.
pub type SeqId = u64;

/// Not enough free blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("KV cache full: {needed} blocks needed, {free} free")]
pub struct OutOfBlocks {
    /// Blocks the request needed.
    pub needed: usize,
    /// Blocks free at the time.
    pub free: usize,
}

/// Allocator of KV-cache blocks.
///
/// # Guarantees
/// - A block belongs to at most one sequence at a time.
/// - `free_blocks() + used_blocks() == total_blocks()` at all times.
/// - A failed allocation changes nothing.
#[derive(Debug, Clone)]
pub struct BlockAllocator {
    block_size: usize,
    total: usize,
    free: Vec<u32>,
    tables: HashMap<SeqId, (Vec<u32>, usize)>,
}

impl BlockAllocator {
    /// `total_blocks` blocks of `block_size` positions each.
    pub fn new(total_blocks: usize, block_size: usize) -> Self {
        Self {
            block_size: block_size.max(1),
            total: total_blocks,
            free: (0..total_blocks as u32).rev().collect(),
            tables: HashMap::new(),
        }
    }

    /// Positions per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks needed to hold `tokens` positions.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// All blocks.
    pub fn total_blocks(&self) -> usize {
        self.total
    }

    /// Unallocated blocks.
    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }

    /// Allocated blocks.
    pub fn used_blocks(&self) -> usize {
        self.total - self.free.len()
    }

    /// Fraction of blocks in use, 0..1 (the `kv_cache_usage` gauge).
    pub fn usage(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.used_blocks() as f64 / self.total as f64
        }
    }

    /// Makes room for `seq` to hold `tokens` positions in total (allocating the sequence's table
    /// on first use). Returns the sequence's block table.
    pub fn reserve(&mut self, seq: SeqId, tokens: usize) -> Result<&[u32], OutOfBlocks> {
        let have = self.tables.get(&seq).map_or(0, |(b, _)| b.len());
        let need = self.blocks_for(tokens).saturating_sub(have);
        if need > self.free.len() {
            return Err(OutOfBlocks {
                needed: need,
                free: self.free.len(),
            });
        }
        let at = self.free.len() - need;
        let new: Vec<u32> = self.free.drain(at..).collect();
        let entry = self.tables.entry(seq).or_insert_with(|| (Vec::new(), 0));
        entry.0.extend(new);
        entry.1 = entry.1.max(tokens);
        Ok(&entry.0)
    }

    /// Block table of `seq`.
    pub fn table(&self, seq: SeqId) -> Option<&[u32]> {
        self.tables.get(&seq).map(|(b, _)| b.as_slice())
    }

    /// Releases every block of `seq` (no-op for an unknown sequence).
    pub fn release(&mut self, seq: SeqId) {
        if let Some((blocks, _)) = self.tables.remove(&seq) {
            self.free.extend(blocks);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_by_whole_blocks_and_frees_everything() {
        let mut a = BlockAllocator::new(10, 16);
        assert_eq!(a.reserve(1, 17).map(<[u32]>::len), Ok(2));
        assert_eq!(a.reserve(1, 32).map(<[u32]>::len), Ok(2), "still fits");
        assert_eq!(a.reserve(1, 33).map(<[u32]>::len), Ok(3));
        assert_eq!(a.reserve(2, 16).map(<[u32]>::len), Ok(1));
        assert_eq!(a.used_blocks(), 4);
        assert!((a.usage() - 0.4).abs() < 1e-12);
        a.release(1);
        assert_eq!(a.used_blocks(), 1);
        a.release(2);
        a.release(2);
        assert_eq!(a.free_blocks(), 10);
    }

    #[test]
    fn failed_reservation_changes_nothing() {
        let mut a = BlockAllocator::new(3, 4);
        a.reserve(1, 8).ok();
        assert_eq!(a.reserve(2, 9), Err(OutOfBlocks { needed: 3, free: 1 }));
        assert_eq!(a.free_blocks(), 1);
        assert!(a.table(2).is_none());
    }

    #[test]
    fn blocks_are_never_shared() {
        let mut a = BlockAllocator::new(8, 2);
        let t1 = a.reserve(1, 6).map(<[u32]>::to_vec).unwrap_or_default();
        let t2 = a.reserve(2, 6).map(<[u32]>::to_vec).unwrap_or_default();
        assert!(t1.iter().all(|b| !t2.contains(b)));
        a.release(1);
        let t3 = a.reserve(3, 8).map(<[u32]>::to_vec).unwrap_or_default();
        assert!(t3.iter().all(|b| !t2.contains(b)));
        assert_eq!(a.free_blocks() + a.used_blocks(), a.total_blocks());
    }
}
