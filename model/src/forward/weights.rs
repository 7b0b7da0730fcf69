//! Where the forward's weights come from: a checkpoint (any layout the loader reads, through its
//! `VarBuilder`) or a seeded random initialisation made where the weights live (so a 7B-shaped
//! model needs no host copy).

use candle_nn::VarBuilder;

use super::ops::{Linear, Norm, Ops};
use super::ForwardError;

/// How a tensor is initialised when the weights are random.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    /// A weight matrix: uniform `±1/sqrt(fan_in)`.
    Fan(usize),
    /// A norm scale: `1 ± 0.1`.
    Scale,
    /// A bias or small embedding: `±0.02`.
    Small,
    /// Unit uniform (token embeddings, latents).
    Unit,
}

impl Init {
    fn scale_offset(self) -> (f32, f32) {
        match self {
            Init::Fan(n) => (1.0 / (n.max(1) as f32).sqrt(), 0.0),
            Init::Scale => (0.1, 1.0),
            Init::Small => (0.02, 0.0),
            Init::Unit => (1.0, 0.0),
        }
    }
}

/// The source of every weight.
pub enum Source<'a> {
    /// Real weights in the LynxBase key namespace.
    Checkpoint(VarBuilder<'a>),
    /// Random weights from a seed (each tensor seeded by its name).
    Random(u64),
}

/// Loads weights onto a backend, by LynxBase key.
pub struct Loader<'a, 'o, O: Ops> {
    ops: &'o O,
    source: Source<'a>,
}

fn seed_of(base: u64, name: &str) -> u64 {
    // FNV-1a of the name, mixed with the base seed.
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ base;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl<'a, 'o, O: Ops> Loader<'a, 'o, O> {
    /// A loader over `source`.
    pub fn new(ops: &'o O, source: Source<'a>) -> Self {
        Self { ops, source }
    }

    /// The backend.
    pub fn ops(&self) -> &'o O {
        self.ops
    }

    /// A tensor's values on the host (small tensors: projections, scalars).
    pub fn host(&self, name: &str, shape: &[usize], init: Init) -> Result<Vec<f32>, ForwardError> {
        match &self.source {
            Source::Checkpoint(vb) => {
                let t = vb
                    .get(shape, name)
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(|e| ForwardError::Weights(format!("{name}: {e}")))?;
                Ok(t)
            }
            Source::Random(seed) => {
                let (scale, offset) = init.scale_offset();
                let len = shape.iter().product();
                // Host values of the same stream the device generator makes.
                super::host::HostOps::default().random(len, seed_of(*seed, name), scale, offset)
            }
        }
    }

    /// A tensor on the backend.
    pub fn tensor(&self, name: &str, shape: &[usize], init: Init) -> Result<O::Buf, ForwardError> {
        match &self.source {
            Source::Checkpoint(_) => self.ops.upload(&self.host(name, shape, init)?),
            Source::Random(seed) => {
                let (scale, offset) = init.scale_offset();
                self.ops
                    .random(shape.iter().product(), seed_of(*seed, name), scale, offset)
            }
        }
    }

    /// Several row blocks of one fused matrix (e.g. gate|up), each `[rows_i][cols]`.
    pub fn fused(
        &self,
        names: &[&str],
        rows: &[usize],
        cols: usize,
        init: Init,
    ) -> Result<O::Buf, ForwardError> {
        match &self.source {
            Source::Checkpoint(_) => {
                let mut all = Vec::new();
                for (name, &r) in names.iter().zip(rows) {
                    all.extend(self.host(name, &[r, cols], init)?);
                }
                self.ops.upload(&all)
            }
            Source::Random(_) => self.tensor(&names.join("|"), &[rows.iter().sum(), cols], init),
        }
    }

    /// The biases of several fused linear layers, `[sum of rows]`: a `None` part is a layer
    /// without a bias (zeros; random weights give every part a small random bias).
    pub fn fused_bias(&self, parts: &[(Option<&str>, usize)]) -> Result<O::Buf, ForwardError> {
        match &self.source {
            Source::Checkpoint(_) => {
                let mut all = Vec::new();
                for &(name, rows) in parts {
                    match name {
                        Some(name) => all.extend(self.host(name, &[rows], Init::Small)?),
                        None => all.extend(std::iter::repeat_n(0.0, rows)),
                    }
                }
                self.ops.upload(&all)
            }
            Source::Random(_) => {
                let names: Vec<&str> = parts.iter().filter_map(|p| p.0).collect();
                let rows = parts.iter().map(|p| p.1).sum::<usize>();
                self.tensor(&names.join("|"), &[rows], Init::Small)
            }
        }
    }

    /// `{prefix}.weight` (+ `{prefix}.bias`) of an `nn.Linear`.
    pub fn linear(
        &self,
        prefix: &str,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
    ) -> Result<Linear<O::Buf>, ForwardError> {
        Ok(Linear {
            w: self.tensor(
                &format!("{prefix}.weight"),
                &[out_dim, in_dim],
                Init::Fan(in_dim),
            )?,
            b: if bias {
                Some(self.tensor(&format!("{prefix}.bias"), &[out_dim], Init::Small)?)
            } else {
                None
            },
            out_dim,
            in_dim,
        })
    }

    /// A LayerNorm (`weight` + `bias`).
    pub fn layernorm(
        &self,
        prefix: &str,
        dim: usize,
        eps: f32,
    ) -> Result<Norm<O::Buf>, ForwardError> {
        Ok(Norm {
            w: self.tensor(&format!("{prefix}.weight"), &[dim], Init::Scale)?,
            b: Some(self.tensor(&format!("{prefix}.bias"), &[dim], Init::Small)?),
            dim,
            eps,
        })
    }

    /// An RMSNorm (`weight`).
    pub fn rmsnorm(
        &self,
        prefix: &str,
        dim: usize,
        eps: f32,
    ) -> Result<Norm<O::Buf>, ForwardError> {
        Ok(Norm {
            w: self.tensor(&format!("{prefix}.weight"), &[dim], Init::Scale)?,
            b: None,
            dim,
            eps,
        })
    }
}
