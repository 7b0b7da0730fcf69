//! The parameter blocks of the kernels: `#[repr(C)]` mirrors of the CUDA structs of the same
//! names, passed by value.
#![allow(unsafe_code)] // `DeviceRepr` is an unsafe marker trait.

use cudarc::driver::DeviceRepr;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct FwdParams {
    pub(super) q: u64,
    pub(super) k: u64,
    pub(super) v: u64,
    pub(super) o: u64,
    pub(super) q_batch: i64,
    pub(super) q_row: i64,
    pub(super) q_head: i64,
    pub(super) k_batch: i64,
    pub(super) k_row: i64,
    pub(super) k_head: i64,
    pub(super) v_batch: i64,
    pub(super) v_row: i64,
    pub(super) v_head: i64,
    pub(super) o_batch: i64,
    pub(super) o_row: i64,
    pub(super) o_head: i64,
    pub(super) kv_gap: u64,
    pub(super) partial_o: u64,
    pub(super) partial_lse: u64,
    pub(super) cache_k: u64,
    pub(super) cache_v: u64,
    pub(super) block_table: u64,
    pub(super) batch: i32,
    pub(super) heads: i32,
    pub(super) seq_q: i32,
    pub(super) seq_kv: i32,
    pub(super) causal: i32,
    pub(super) splits: i32,
    pub(super) cache_block_shift: i32,
    pub(super) cache_max_blocks: i32,
    pub(super) scale_log2: f32,
    pub(super) reserved: i32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct DecodeParams {
    pub(super) q: u64,
    pub(super) q_batch: i64,
    pub(super) q_head: i64,
    pub(super) o: u64,
    pub(super) o_batch: i64,
    pub(super) o_head: i64,
    pub(super) cache_k: u64,
    pub(super) cache_v: u64,
    pub(super) block_table: u64,
    pub(super) seq_lens: u64,
    pub(super) partial_o: u64,
    pub(super) partial_lse: u64,
    pub(super) batch: i32,
    pub(super) heads: i32,
    pub(super) block_shift: i32,
    pub(super) max_blocks: i32,
    pub(super) splits: i32,
    pub(super) reserved0: i32,
    pub(super) scale_log2: f32,
    pub(super) reserved1: i32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct CombineParams {
    pub(super) partial_o: u64,
    pub(super) partial_lse: u64,
    pub(super) o: u64,
    pub(super) o_batch: i64,
    pub(super) o_row: i64,
    pub(super) o_head: i64,
    pub(super) rows: i32,
    pub(super) heads: i32,
    pub(super) seq_q: i32,
    pub(super) splits: i32,
    pub(super) head_dim: i32,
    pub(super) reserved: i32,
}

// SAFETY: plain `#[repr(C)]` structs of integers and floats whose layout matches the CUDA
// structs of the same names (8-byte fields first, then 4-byte fields, no padding).
unsafe impl DeviceRepr for FwdParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for DecodeParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for CombineParams {}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ProjParams {
    pub(super) x: u64,
    pub(super) w: u64,
    pub(super) c1: u64,
    pub(super) c2: u64,
    pub(super) frame_embed: u64,
    pub(super) frame_proj: u64,
    pub(super) out_k: u64,
    pub(super) out_v: u64,
    pub(super) x_row: i64,
    pub(super) rows: i32,
    pub(super) k_dim: i32,
    pub(super) n_dim: i32,
    pub(super) inner: i32,
    pub(super) frames: i32,
    pub(super) tokens_per_frame: i32,
    pub(super) eps: f32,
    pub(super) reserved: i32,
}

// SAFETY: as above.
unsafe impl DeviceRepr for ProjParams {}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct GenericAttnParams {
    pub(super) q: u64,
    pub(super) k: u64,
    pub(super) v: u64,
    pub(super) o: u64,
    pub(super) kv_gap: u64,
    pub(super) block_table: u64,
    pub(super) seq_lens: u64,
    pub(super) batch: i32,
    pub(super) heads: i32,
    pub(super) seq_q: i32,
    pub(super) seq_kv: i32,
    pub(super) head_dim: i32,
    pub(super) causal: i32,
    pub(super) block_shift: i32,
    pub(super) max_blocks: i32,
    pub(super) scale: f32,
    pub(super) reserved: i32,
}

// SAFETY: as above.
unsafe impl DeviceRepr for GenericAttnParams {}
