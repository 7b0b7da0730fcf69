//! The forward on the host, on `Vec<f32>`, with one of two arithmetics:
//!
//! - [`HostOps::cpu`] (`--device cpu`, the embedded default): the kernels crate's CPU serving
//!   kernels ([`lynx_kernels::host`]), f32 as PyTorch computes it, SIMD on every core;
//! - [`HostOps::mirror`] (`--device mirror`): the kernels crate's references (f64 accumulation),
//!   the yardstick the GPU and the CPU kernels are checked against.
//!
//! Buffers, indices, the paged KV cache and the copies are the same for both.

use std::sync::atomic::{AtomicBool, Ordering};

use lynx_kernels::cpu::CpuAttention;
use lynx_kernels::host::elementwise::{self as fast, QkvShape, Rope};
use lynx_kernels::host::gemm::{self, LinearArgs};
use lynx_kernels::ops as reference;
use lynx_kernels::projection::{self, ProjectionWeights, VisionProjection};
use lynx_kernels::{AttentionBackend, DecodeAttention, DenseAttention, Precision};

use super::kv_pool::fill_by_table;
use super::ops::{write_then_attend, CacheFill, Linear, Norm, Ops, ProjectionValues};
use super::ForwardError;

const F32: Precision = Precision::F32;

/// Host f32 operations.
#[derive(Debug, Default)]
pub struct HostOps {
    attention: CpuAttention,
    arithmetic: Arithmetic,
    /// Prefills put K/V into the cache through the rows' block table, at the positions the
    /// GPU's in-pass fill uses (gap tokens dropped), instead of by slot.
    fill_by_table: AtomicBool,
}

/// How the host computes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Arithmetic {
    /// The f64-accumulating references (`--device mirror`).
    #[default]
    Reference,
    /// The CPU serving kernels (`--device cpu`).
    Fast,
}

impl HostOps {
    /// The CPU serving backend: the fast f32 kernels on every core.
    pub fn cpu() -> Self {
        Self {
            arithmetic: Arithmetic::Fast,
            ..Self::default()
        }
    }

    /// The mirror of the GPU program: the f64-accumulating references.
    pub fn mirror() -> Self {
        Self::default()
    }

    fn fast(&self) -> bool {
        self.arithmetic == Arithmetic::Fast
    }
}

/// Host indices, checked against their bound.
#[derive(Debug, Clone)]
pub struct HostIdx(Vec<u32>);

/// Host projection weights (unfused: LayerNorm, then the GEMM).
#[derive(Debug, Clone)]
pub struct HostProjection {
    w_kv: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    frame_embed: Option<Vec<f32>>,
}

fn need(what: &str, got: usize, want: usize) -> Result<(), ForwardError> {
    if got < want {
        return Err(ForwardError::Shape(format!(
            "{what}: {got} elements, needs {want}"
        )));
    }
    Ok(())
}

/// Replaces the first `n` values of `x` by `f` of them.
fn in_place(
    what: &str,
    x: &mut [f32],
    n: usize,
    f: impl FnOnce(&[f32]) -> Vec<f32>,
) -> Result<(), ForwardError> {
    need(what, x.len(), n)?;
    let y = f(&x[..n]);
    x[..n].copy_from_slice(&y);
    Ok(())
}

/// The vision-token projection with the CPU kernels: the frame embedding added, LayerNorm, then
/// the `K` and `V` halves of `to_kv` as two GEMMs.
fn fast_project(
    media: &[f32],
    p: &VisionProjection,
    proj: &HostProjection,
    k: &mut [f32],
    v: &mut [f32],
) -> Result<(), ForwardError> {
    p.validate()?;
    let (rows, width) = (p.rows, p.k_dim);
    need("vision tokens", media.len(), rows * width)?;
    let mut x = media[..rows * width].to_vec();
    if let (true, Some(embed)) = (p.frames > 0, &proj.frame_embed) {
        for (m, row) in x.chunks_exact_mut(width).enumerate() {
            let e = &embed[p.frame_of(m) * width..][..width];
            row.iter_mut().zip(e).for_each(|(a, b)| *a += b);
        }
    }
    let mut normed = vec![0f32; rows * width];
    fast::layernorm(&x, rows, &proj.gamma, &proj.beta, p.eps, &mut normed)?;
    let (w_k, w_v) = proj.w_kv.split_at(p.inner * width);
    for (w, out) in [(w_k, k), (w_v, v)] {
        let args = LinearArgs {
            x: &normed,
            w,
            bias: None,
            rows,
            k: width,
            n: p.inner,
        };
        gemm::linear(&args, out, false)?;
    }
    Ok(())
}

/// A linear layer's operands for the CPU kernels.
fn linear_args<'a>(x: &'a [f32], rows: usize, w: &'a Linear<Vec<f32>>) -> LinearArgs<'a> {
    LinearArgs {
        x,
        w: &w.w,
        bias: w.b.as_deref(),
        rows,
        k: w.in_dim,
        n: w.out_dim,
    }
}

impl Ops for HostOps {
    type Buf = Vec<f32>;
    type Idx = HostIdx;
    type Rope = (Vec<f32>, Vec<f32>);
    type Proj = HostProjection;
    type Tables = ();

    fn describe(&self) -> String {
        match self.arithmetic {
            Arithmetic::Reference => "host f32".into(),
            Arithmetic::Fast => format!("cpu f32 ({} threads)", rayon::current_num_threads()),
        }
    }

    fn elem_bytes(&self) -> usize {
        4
    }

    fn synchronize(&self) -> Result<(), ForwardError> {
        Ok(())
    }

    fn upload(&self, values: &[f32]) -> Result<Vec<f32>, ForwardError> {
        Ok(values.to_vec())
    }

    fn random(
        &self,
        len: usize,
        seed: u64,
        scale: f32,
        offset: f32,
    ) -> Result<Vec<f32>, ForwardError> {
        // The device kernel's splitmix64 stream, so host and GPU random models are the same.
        Ok((0..len as u64)
            .map(|i| {
                let mut z = i.wrapping_add(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^= z >> 31;
                offset + scale * ((z >> 40) as f32 * (1.0 / 8_388_608.0) - 1.0)
            })
            .collect())
    }

    fn download(&self, b: &Vec<f32>) -> Result<Vec<f32>, ForwardError> {
        Ok(b.clone())
    }

    fn alloc(&self, len: usize) -> Result<Vec<f32>, ForwardError> {
        Ok(vec![0.0; len])
    }

    fn indices(&self, values: &[u32], bound: usize) -> Result<HostIdx, ForwardError> {
        if let Some(bad) = values.iter().find(|&&v| v as usize >= bound) {
            return Err(ForwardError::Shape(format!(
                "index {bad} outside 0..{bound}"
            )));
        }
        Ok(HostIdx(values.to_vec()))
    }

    fn rope_table(&self, cos: &[f32], sin: &[f32]) -> Result<Self::Rope, ForwardError> {
        Ok((cos.to_vec(), sin.to_vec()))
    }

    fn projection(
        &self,
        p: &VisionProjection,
        values: &ProjectionValues<'_>,
    ) -> Result<HostProjection, ForwardError> {
        p.validate()?;
        need("to_kv weight", values.w_kv.len(), p.n_dim() * p.k_dim)?;
        if let (true, Some(e)) = (p.frames > 0, values.frame_embed) {
            need("frame embedding", e.len(), p.frames * p.k_dim)?;
        }
        Ok(HostProjection {
            w_kv: values.w_kv.to_vec(),
            gamma: values.gamma.to_vec(),
            beta: values.beta.to_vec(),
            frame_embed: values.frame_embed.map(<[f32]>::to_vec),
        })
    }

    fn linear(
        &self,
        x: &Vec<f32>,
        rows: usize,
        w: &Linear<Vec<f32>>,
        y: &mut Vec<f32>,
    ) -> Result<(), ForwardError> {
        if self.fast() {
            return Ok(gemm::linear(&linear_args(x, rows, w), y, false)?);
        }
        let (k, n) = (w.in_dim, w.out_dim);
        need("linear input", x.len(), rows * k)?;
        need("linear output", y.len(), rows * n)?;
        for (xr, yr) in x.chunks_exact(k).zip(y.chunks_exact_mut(n)).take(rows) {
            for (j, out) in yr.iter_mut().enumerate() {
                let dot: f64 = xr
                    .iter()
                    .zip(&w.w[j * k..(j + 1) * k])
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum();
                *out = (dot + w.b.as_ref().map_or(0.0, |b| b[j] as f64)) as f32;
            }
        }
        Ok(())
    }

    fn linear_add(
        &self,
        x: &Vec<f32>,
        rows: usize,
        w: &Linear<Vec<f32>>,
        y: &mut Vec<f32>,
    ) -> Result<(), ForwardError> {
        if self.fast() {
            return Ok(gemm::linear(&linear_args(x, rows, w), y, true)?);
        }
        let n = rows * w.out_dim;
        let mut out = vec![0f32; n];
        self.linear(x, rows, w, &mut out)?;
        self.accumulate(y, &out, n, 1.0)
    }

    fn norm(
        &self,
        x: &Vec<f32>,
        rows: usize,
        norm: &Norm<Vec<f32>>,
        out: &mut Vec<f32>,
    ) -> Result<(), ForwardError> {
        if self.fast() {
            return Ok(match &norm.b {
                Some(b) => fast::layernorm(x, rows, &norm.w, b, norm.eps, out),
                None => fast::rmsnorm(x, rows, &norm.w, norm.eps, out),
            }?);
        }
        let n = rows * norm.dim;
        need("norm input", x.len(), n)?;
        need("norm output", out.len(), n)?;
        let y = match &norm.b {
            Some(b) => reference::layernorm(F32, &x[..n], &norm.w, b, norm.eps),
            None => reference::rmsnorm(F32, &x[..n], &norm.w, norm.eps),
        };
        out[..n].copy_from_slice(&y);
        Ok(())
    }

    fn gelu(&self, x: &mut Vec<f32>, rows: usize, cols: usize) -> Result<(), ForwardError> {
        if self.fast() {
            return Ok(fast::gelu(x, rows * cols)?);
        }
        in_place("gelu input", x, rows * cols, |v| {
            reference::bias_gelu(F32, v, None)
        })
    }

    fn silu(&self, x: &mut Vec<f32>, n: usize) -> Result<(), ForwardError> {
        if self.fast() {
            return Ok(fast::silu(x, n)?);
        }
        in_place("silu input", x, n, |v| reference::silu(F32, v))
    }

    fn silu_mul(
        &self,
        gate_up: &Vec<f32>,
        rows: usize,
        inter: usize,
        out: &mut Vec<f32>,
    ) -> Result<(), ForwardError> {
        if self.fast() {
            return Ok(fast::silu_mul(gate_up, rows, inter, out)?);
        }
        need("gate|up", gate_up.len(), rows * 2 * inter)?;
        need("silu output", out.len(), rows * inter)?;
        let y = reference::silu_mul(F32, &gate_up[..rows * 2 * inter], inter);
        out[..rows * inter].copy_from_slice(&y);
        Ok(())
    }

    fn qkv_split(
        &self,
        qkv: &Vec<f32>,
        tokens: usize,
        heads: usize,
        head_dim: usize,
        rope: Option<(&HostIdx, &Self::Rope)>,
        q: &mut Vec<f32>,
        k: &mut Vec<f32>,
        v: &mut Vec<f32>,
    ) -> Result<(), ForwardError> {
        if self.fast() {
            let shape = QkvShape {
                tokens,
                heads,
                head_dim,
            };
            let rope = rope.map(|(positions, table)| Rope {
                positions: &positions.0,
                cos: &table.0,
                sin: &table.1,
            });
            return Ok(fast::qkv_split(qkv, shape, rope, q, k, v)?);
        }
        let n = tokens * heads * head_dim;
        need("fused qkv", qkv.len(), 3 * n)?;
        let (qo, ko, vo) = match rope {
            Some((positions, table)) => {
                let pos: Vec<usize> = positions.0.iter().map(|&p| p as usize).collect();
                let max = pos.iter().copied().max().unwrap_or(0);
                need("rope table", table.0.len(), (max + 1) * head_dim / 2)?;
                reference::qkv_rope_split(F32, &qkv[..3 * n], &pos, table, heads, head_dim)
            }
            None => {
                let part = |i: usize| -> Vec<f32> {
                    qkv[..3 * n]
                        .chunks_exact(3 * heads * head_dim)
                        .flat_map(|r| r[i * heads * head_dim..(i + 1) * heads * head_dim].to_vec())
                        .collect()
                };
                (part(0), part(1), part(2))
            }
        };
        for (dst, src) in [(q, qo), (k, ko), (v, vo)] {
            in_place("qkv output", dst, n, |_| src)?;
        }
        Ok(())
    }

    fn accumulate(
        &self,
        acc: &mut Vec<f32>,
        b: &Vec<f32>,
        n: usize,
        scale: f32,
    ) -> Result<(), ForwardError> {
        if self.fast() {
            return Ok(fast::add_scaled(acc, b, n, scale)?);
        }
        need("addend", b.len(), n)?;
        in_place("accumulator", acc, n, |v| {
            reference::add_scaled(F32, v, &b[..n], scale)
        })
    }

    fn add_rows(
        &self,
        x: &mut Vec<f32>,
        table: &Vec<f32>,
        rows: usize,
        cols: usize,
        div: usize,
        period: usize,
    ) -> Result<(), ForwardError> {
        need("add_rows input", x.len(), rows * cols)?;
        need("add_rows table", table.len(), period * cols)?;
        for (r, row) in x.chunks_exact_mut(cols).take(rows).enumerate() {
            let t = &table[((r / div.max(1)) % period.max(1)) * cols..][..cols];
            for (a, &b) in row.iter_mut().zip(t) {
                *a += b;
            }
        }
        Ok(())
    }

    fn argmax(
        &self,
        logits: &mut Vec<f32>,
        rows: usize,
        cols: usize,
        banned: &[u32],
    ) -> Result<Vec<u32>, ForwardError> {
        if cols == 0 {
            return Err(ForwardError::Shape("argmax over rows of no logits".into()));
        }
        need("logits", logits.len(), rows * cols)?;
        for &at in banned {
            match logits[..rows * cols].get_mut(at as usize) {
                Some(x) => *x = f32::NEG_INFINITY,
                None => {
                    return Err(ForwardError::Shape(format!(
                        "banned position {at} outside 0..{}",
                        rows * cols
                    )))
                }
            }
        }
        Ok(reference::argmax(&logits[..rows * cols], cols))
    }

    fn copy_rows(
        &self,
        src: &Vec<f32>,
        src_rows: Option<&HostIdx>,
        dst: &mut Vec<f32>,
        dst_rows: Option<&HostIdx>,
        n: usize,
        cols: usize,
    ) -> Result<(), ForwardError> {
        for i in 0..n {
            let s = src_rows.map_or(i, |r| r.0[i] as usize);
            let d = dst_rows.map_or(i, |r| r.0[i] as usize);
            need("copy source", src.len(), (s + 1) * cols)?;
            need("copy destination", dst.len(), (d + 1) * cols)?;
            dst[d * cols..(d + 1) * cols].copy_from_slice(&src[s * cols..(s + 1) * cols]);
        }
        Ok(())
    }

    fn attention(
        &self,
        p: &DenseAttention,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        out: &mut Vec<f32>,
    ) -> Result<(), ForwardError> {
        if self.fast() {
            return Ok(lynx_kernels::host::attention::dense(p, q, k, v, out)?);
        }
        let exact = |b: &Vec<f32>, n: usize| b[..n.min(b.len())].to_vec();
        let mut o = vec![0f32; p.q_len()];
        self.attention.dense(
            p,
            &exact(q, p.q_len()),
            &exact(k, p.kv_len()),
            &exact(v, p.kv_len()),
            &mut o,
            None,
        )?;
        need("attention output", out.len(), o.len())?;
        out[..o.len()].copy_from_slice(&o);
        Ok(())
    }

    fn kv_write(
        &self,
        k: &Vec<f32>,
        v: &Vec<f32>,
        slots: &HostIdx,
        k_cache: &mut Vec<f32>,
        v_cache: &mut Vec<f32>,
        heads: usize,
        head_dim: usize,
        block_size: usize,
    ) -> Result<(), ForwardError> {
        let row = heads * head_dim;
        for (src, cache) in [(k, k_cache), (v, v_cache)] {
            need("kv source", src.len(), slots.0.len() * row)?;
            for (t, &slot) in slots.0.iter().enumerate() {
                let (block, off) = (slot as usize / block_size, slot as usize % block_size);
                for h in 0..heads {
                    let at = ((block * heads + h) * block_size + off) * head_dim;
                    need("kv cache", cache.len(), at + head_dim)?;
                    cache[at..at + head_dim]
                        .copy_from_slice(&src[t * row + h * head_dim..][..head_dim]);
                }
            }
        }
        Ok(())
    }

    fn attention_filling(
        &self,
        p: &DenseAttention,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        out: &mut Vec<f32>,
        fill: CacheFill<'_, Self>,
    ) -> Result<(), ForwardError> {
        if !self.fill_by_table.load(Ordering::Relaxed) {
            return write_then_attend(self, p, q, k, v, out, fill);
        }
        let layout = (fill.max_blocks, fill.block_size, fill.heads, fill.head_dim);
        fill_by_table(p, k, fill.k_cache, &fill.table.0, layout)?;
        fill_by_table(p, v, fill.v_cache, &fill.table.0, layout)?;
        self.attention(p, q, k, v, out)
    }

    fn set_prefill_fill(&self, on: bool) -> bool {
        self.fill_by_table.store(on, Ordering::Relaxed);
        true
    }

    fn decode_tables(&self, _: &DecodeAttention) -> Result<(), ForwardError> {
        Ok(())
    }

    fn decode(
        &self,
        p: &DecodeAttention,
        _: &(),
        q: &Vec<f32>,
        k_cache: &Vec<f32>,
        v_cache: &Vec<f32>,
        out: &mut Vec<f32>,
    ) -> Result<(), ForwardError> {
        if self.fast() {
            return Ok(lynx_kernels::host::attention::decode(
                p, q, k_cache, v_cache, out,
            )?);
        }
        let n = p.batch * p.heads * p.head_dim;
        let mut o = vec![0f32; n];
        self.attention
            .decode(p, &q[..n.min(q.len())].to_vec(), k_cache, v_cache, &mut o)?;
        need("decode output", out.len(), n)?;
        out[..n].copy_from_slice(&o);
        Ok(())
    }

    fn project(
        &self,
        media: &Vec<f32>,
        p: &VisionProjection,
        proj: &HostProjection,
        k: &mut Vec<f32>,
        v: &mut Vec<f32>,
    ) -> Result<(), ForwardError> {
        if self.fast() {
            return fast_project(media, p, proj, k, v);
        }
        let n = p.rows * p.k_dim;
        need("vision tokens", media.len(), n)?;
        let weights = ProjectionWeights {
            w: &proj.w_kv,
            gamma: &proj.gamma,
            beta: &proj.beta,
            frame_embed: proj.frame_embed.as_deref(),
        };
        let (ko, vo) = projection::reference(p, &media[..n], &weights)?;
        need("K output", k.len(), ko.len())?;
        need("V output", v.len(), vo.len())?;
        k[..ko.len()].copy_from_slice(&ko);
        v[..vo.len()].copy_from_slice(&vo);
        Ok(())
    }
}
