//! Where the forward's weights come from: a checkpoint (any layout the loader reads, through its
//! `VarBuilder`) or a seeded random initialisation made where the weights live (so a 7B-shaped
//! model needs no host copy).

use candle_nn::VarBuilder;

use super::ops::{Linear, Norm, Ops};
use super::ForwardError;
use crate::checkpoint::keys::{Key, LinearKeys, NormKeys, Role};

/// `(scale, offset)` of a random tensor's uniform values, by role: matrices `±1/sqrt(fan_in)`,
/// norm scales `1 ± 0.1`, biases, embeddings and scalars `±0.02`, tables unit uniform.
fn random_range(key: &Key) -> (f32, f32) {
    match key.role {
        Role::Matrix => (1.0 / (key.fan_in() as f32).sqrt(), 0.0),
        Role::NormScale => (0.1, 1.0),
        Role::Bias | Role::Embedding | Role::Scalar => (0.02, 0.0),
        Role::Table => (1.0, 0.0),
    }
}

/// The source of every weight.
pub enum Source<'a> {
    /// Real weights in the LynxBase key namespace.
    Checkpoint(VarBuilder<'a>),
    /// Random weights from a seed (each tensor seeded by its name).
    Random(u64),
}

/// Loads weights onto a backend, by their [`Key`]s.
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
    pub fn host(&self, key: &Key) -> Result<Vec<f32>, ForwardError> {
        let name = &key.name;
        match &self.source {
            Source::Checkpoint(vb) => vb
                .get(key.shape.as_slice(), name)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| ForwardError::Weights(format!("{name}: {e}"))),
            Source::Random(seed) => {
                let (scale, offset) = random_range(key);
                // Host values of the same stream the device generator makes.
                super::host::HostOps::default().random(
                    key.len(),
                    seed_of(*seed, name),
                    scale,
                    offset,
                )
            }
        }
    }

    /// A tensor on the backend.
    pub fn tensor(&self, key: &Key) -> Result<O::Buf, ForwardError> {
        match &self.source {
            Source::Checkpoint(_) => self.ops.upload(&self.host(key)?),
            Source::Random(seed) => {
                let (scale, offset) = random_range(key);
                self.ops
                    .random(key.len(), seed_of(*seed, &key.name), scale, offset)
            }
        }
    }

    /// Tensors of one role stacked into one buffer (e.g. gate|up rows). Random weights draw the
    /// whole stack from one stream, seeded by the names joined with `|`.
    fn stacked(&self, parts: &[&Key]) -> Result<O::Buf, ForwardError> {
        match &self.source {
            Source::Checkpoint(_) => {
                let mut all = Vec::new();
                for key in parts {
                    all.extend(self.host(key)?);
                }
                self.ops.upload(&all)
            }
            Source::Random(_) => {
                let names: Vec<&str> = parts.iter().map(|k| k.name.as_str()).collect();
                let mut shape = parts[0].shape.clone();
                shape[0] = parts.iter().map(|k| k.shape[0]).sum();
                self.tensor(&Key {
                    name: names.join("|"),
                    shape,
                    role: parts[0].role,
                })
            }
        }
    }

    /// `nn.Linear` layers with the same input fused into one GEMM (e.g. q|k|v): weights stacked
    /// by rows; a part without a bias gets zeros when another part has one.
    pub fn fused_linear(&self, parts: &[&LinearKeys]) -> Result<Linear<O::Buf>, ForwardError> {
        let weights: Vec<&Key> = parts.iter().map(|p| &p.weight).collect();
        let out_dim = parts.iter().map(|p| p.out_dim()).sum();
        let b = if parts.iter().any(|p| p.bias.is_some()) {
            Some(match &self.source {
                Source::Checkpoint(_) => {
                    let mut all = Vec::with_capacity(out_dim);
                    for p in parts {
                        match &p.bias {
                            Some(key) => all.extend(self.host(key)?),
                            None => all.extend(std::iter::repeat_n(0.0, p.out_dim())),
                        }
                    }
                    self.ops.upload(&all)?
                }
                Source::Random(_) => {
                    let names: Vec<&str> = parts
                        .iter()
                        .filter_map(|p| p.bias.as_ref().map(|k| k.name.as_str()))
                        .collect();
                    self.tensor(&Key {
                        name: names.join("|"),
                        shape: vec![out_dim],
                        role: Role::Bias,
                    })?
                }
            })
        } else {
            None
        };
        Ok(Linear {
            w: self.stacked(&weights)?,
            b,
            out_dim,
            in_dim: parts[0].in_dim(),
        })
    }

    /// An `nn.Linear`.
    pub fn linear(&self, keys: &LinearKeys) -> Result<Linear<O::Buf>, ForwardError> {
        Ok(Linear {
            w: self.tensor(&keys.weight)?,
            b: keys.bias.as_ref().map(|k| self.tensor(k)).transpose()?,
            out_dim: keys.out_dim(),
            in_dim: keys.in_dim(),
        })
    }

    /// A LayerNorm (keys with a bias) or an RMSNorm (without).
    pub fn norm(&self, keys: &NormKeys, eps: f32) -> Result<Norm<O::Buf>, ForwardError> {
        Ok(Norm {
            w: self.tensor(&keys.weight)?,
            b: keys.bias.as_ref().map(|k| self.tensor(k)).transpose()?,
            dim: keys.dim(),
            eps,
        })
    }
}
