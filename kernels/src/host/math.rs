//! Vectorisable `exp`, GELU and SiLU in f32: branch-free polynomial forms that the compiler turns into
//! SIMD code, within a few ulp of the correctly rounded values (tested against f64 below).

const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in a part exact in f32 and the rest (Cody and Waite's reduction).
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// `1.5 * 2^23`: adding and subtracting it rounds an f32 to the nearest integer.
const ROUND: f32 = 12_582_912.0;

/// `e^x` (about 1e-38 below -87.3, where f32 would become subnormal; saturates above 88.3).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.3);
    let n = (x * LOG2_E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // Taylor series of e^r on |r| <= ln2 / 2 up to r^7 (remainder below 5e-9 relative).
    let mut p = 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

/// `erfc(a)` for `a >= 0` by the Chebyshev fit of Numerical Recipes (`erfcc`), whose error is
/// below 1.2e-7 *relative* everywhere, so GELU keeps its precision in the negative tail where
/// `1 + erf` cancels.
#[inline(always)]
fn erfc_positive(a: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * a);
    let mut p = 0.170_872_77;
    p = p * t - 0.822_152_23;
    p = p * t + 1.488_515_9;
    p = p * t - 1.135_204;
    p = p * t + 0.278_868_07;
    p = p * t - 0.186_288_06;
    p = p * t + 0.096_784_18;
    p = p * t + 0.374_091_96;
    p = p * t + 1.000_023_7;
    p = p * t - 1.265_512_2;
    t * exp(p - a * a)
}

/// Exact GELU, `0.5 x (1 + erf(x / sqrt 2))`, with `1 + erf(u)` taken as `erfc(-u)`.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    let u = x * std::f32::consts::FRAC_1_SQRT_2;
    let c = erfc_positive(u.abs());
    0.5 * x * if x >= 0.0 { 2.0 - c } else { c }
}

/// SiLU, `x / (1 + e^-x)`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid() -> impl Iterator<Item = f32> {
        (-40_000..=40_000).map(|i| i as f32 * 0.002)
    }

    #[test]
    fn exp_is_within_a_few_ulp() {
        for x in grid().chain([-87.0, -50.5, 30.25, 88.0]) {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            assert!(
                ((got - want) / want).abs() < 4.0 * f32::EPSILON as f64,
                "exp({x}) = {got}, want {want}"
            );
        }
        assert_eq!(exp(-1000.0).min(1e-30), exp(-1000.0), "underflows to ~0");
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    /// GELU to a few ulp; in the far negative tail (values below 1e-5) the f32 rounding of
    /// `x^2` inside `exp` dominates, a relative error growing with `x^2` (1e-5 at x = -10).
    fn gelu_and_silu_match_f64() {
        for x in grid() {
            let g = 0.5 * x as f64 * libm::erfc(-(x as f64) / std::f64::consts::SQRT_2);
            assert!(
                (gelu(x) as f64 - g).abs() <= (4e-7 + 2.5e-7 * (x * x) as f64) * g.abs() + 1e-30,
                "gelu({x}) = {}, want {g}",
                gelu(x)
            );
            let s = x as f64 / (1.0 + (-(x as f64)).exp());
            assert!(
                (silu(x) as f64 - s).abs() <= 4e-7 * (1.0 + s.abs()),
                "silu({x})"
            );
        }
    }
}
