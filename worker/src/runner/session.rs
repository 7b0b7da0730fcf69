//! The model-side values the model thread keeps, for either compute backend: encoder-cache
//! entries and the running decode session.

use candle_core::{Result, Tensor};

use crate::generation::{StepError, StepModel};
use crate::model::LlmSession;
use crate::served::{DevicePrefix, DeviceStep};

/// One vision input's encoding (`num_latents x hidden`), as the encoder cache holds it.
#[derive(Clone)]
pub enum Encoded {
    /// `[1, latents, hidden]` on the CPU.
    Cpu(Tensor),
    /// On the device.
    Device(DevicePrefix),
}

impl Encoded {
    /// Bytes it occupies.
    pub fn bytes(&self) -> usize {
        match self {
            Encoded::Cpu(t) => t.elem_count() * t.dtype().size_in_bytes(),
            Encoded::Device(p) => p.bytes(),
        }
    }
}

/// The running decode session.
pub enum Session<'m> {
    /// The candle model's session.
    Cpu(LlmSession<'m>),
    /// A device session.
    Device(Box<dyn DeviceStep + 'm>),
}

impl Session<'_> {
    /// Continuous batching: appends `other`'s rows after this session's.
    pub fn join(&mut self, other: Self) -> Result<()> {
        match (self, other) {
            (Session::Cpu(a), Session::Cpu(b)) => a.join(b),
            (Session::Device(a), Session::Device(mut b)) => {
                a.add_rows(b.take_rows());
                Ok(())
            }
            _ => Err(candle_core::Error::Msg(
                "sessions of two compute backends cannot be joined".into(),
            )),
        }
    }
}

impl StepModel for Session<'_> {
    fn step(&mut self, tokens: &[u32]) -> std::result::Result<Vec<Vec<f32>>, StepError> {
        match self {
            Session::Cpu(s) => Ok(s.step(tokens)?),
            Session::Device(s) => s.step(tokens),
        }
    }

    fn select_rows(&mut self, rows: &[u32]) -> std::result::Result<(), StepError> {
        match self {
            Session::Cpu(s) => Ok(s.select_rows(rows)?),
            Session::Device(s) => s.select_rows(rows),
        }
    }
}
