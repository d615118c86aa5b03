//! Quantised addition (`QLinearAdd`) with the float steps of ONNX Runtime's MLAS kernel.
//!
//! MLAS does not dequantise, add and requantise. It folds the three scales into two ratios
//! and one constant and evaluates, per element, with fused multiply-adds:
//!
//! ```text
//! ratio_a = a_scale / c_scale            ratio_b = b_scale / c_scale            (f32)
//! fixed   = c_zp - (ratio_a * a_zp + ratio_b * b_zp)                             (f32)
//! c       = saturate(round_half_even(fma(a, ratio_a, fma(b, ratio_b, fixed))))
//! ```
//!
//! and when one operand is a single value for a whole run of the other (a scalar, or a
//! tensor broadcast along the innermost axis) it first folds that value into the constant
//! with a separate multiply and add. Every float step rounds, so on exact ties (where the
//! real result is `n + 0.5`) only the same steps land on the same side: the earlier
//! "dequantise, add, divide" formula disagreed with ORT on 229 of 10,240 tie-heavy cases.
//! `f32::mul_add` is a true fused multiply-add on every target (an instruction with FMA,
//! a correctly rounded library call without), so the result does not depend on the CPU.

/// The folded constants of one `QLinearAdd`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AddParams {
    /// `a_scale / c_scale`.
    pub ratio_a: f32,
    /// `b_scale / c_scale`.
    pub ratio_b: f32,
    /// `c_zp - (ratio_a * a_zp + ratio_b * b_zp)`.
    pub fixed: f32,
    /// Whether the operands and the result are `i8` (else `u8`).
    pub signed: bool,
}

impl AddParams {
    /// Folds `[a, b, c]` scales and zero points the way MLAS does.
    pub fn new(scales: [f32; 3], zero_points: [i32; 3], signed: bool) -> AddParams {
        let [sa, sb, sc] = scales;
        let [za, zb, zc] = zero_points;
        let ratio_a = sa / sc;
        let ratio_b = sb / sc;
        let fixed = zc as f32 - (ratio_a * za as f32 + ratio_b * zb as f32);
        AddParams {
            ratio_a,
            ratio_b,
            fixed,
            signed,
        }
    }

    /// The constant with a single `a` value folded in (MLAS's scalar-A path).
    pub fn fixed_with_a(&self, a: u8) -> f32 {
        self.fixed + self.value(a) * self.ratio_a
    }

    /// The constant with a single `b` value folded in (MLAS's scalar-B path).
    pub fn fixed_with_b(&self, b: u8) -> f32 {
        self.fixed + self.value(b) * self.ratio_b
    }

    fn value(&self, q: u8) -> f32 {
        if self.signed {
            q as i8 as f32
        } else {
            q as f32
        }
    }

    fn store(&self, v: f32) -> u8 {
        let (lo, hi) = if self.signed {
            (-128.0, 127.0)
        } else {
            (0.0, 255.0)
        };
        // Clamping to integer bounds before rounding equals MLAS's round-then-saturate.
        crate::requant::round_half_even(v.clamp(lo, hi)) as u8
    }
}

/// `out[i] = fma(a[i], ratio_a, fma(b[i], ratio_b, fixed))`, saturated: both operands vary.
///
/// Panics if the slices differ in length (a caller bug, never input-dependent).
pub fn add(p: &AddParams, a: &[u8], b: &[u8], out: &mut [u8]) {
    assert!(a.len() == out.len() && b.len() == out.len());
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has FMA (checked just above), the only requirement of `add_fma`.
        unsafe { add_fma(p, a, b, out) };
        return;
    }
    add_body(p, a, b, out)
}

/// `out[i] = fma(x[i], ratio, fixed)`, saturated: one operand varies, the other is folded
/// into `fixed` ([`AddParams::fixed_with_a`] / [`AddParams::fixed_with_b`]).
///
/// Panics if the slices differ in length.
pub fn add_one(p: &AddParams, x: &[u8], ratio: f32, fixed: f32, out: &mut [u8]) {
    assert!(x.len() == out.len());
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has FMA (checked just above), the only requirement of `add_one_fma`.
        unsafe { add_one_fma(p, x, ratio, fixed, out) };
        return;
    }
    add_one_body(p, x, ratio, fixed, out)
}

#[inline(always)]
fn add_body(p: &AddParams, a: &[u8], b: &[u8], out: &mut [u8]) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        let v = p
            .value(x)
            .mul_add(p.ratio_a, p.value(y).mul_add(p.ratio_b, p.fixed));
        *o = p.store(v);
    }
}

#[inline(always)]
fn add_one_body(p: &AddParams, x: &[u8], ratio: f32, fixed: f32, out: &mut [u8]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = p.store(p.value(v).mul_add(ratio, fixed));
    }
}

/// [`add_body`] compiled with FMA, so `mul_add` is one vectorisable instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
fn add_fma(p: &AddParams, a: &[u8], b: &[u8], out: &mut [u8]) {
    add_body(p, a, b, out)
}

/// [`add_one_body`] compiled with FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
fn add_one_fma(p: &AddParams, x: &[u8], ratio: f32, fixed: f32, out: &mut [u8]) {
    add_one_body(p, x, ratio, fixed, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_ties_round_to_even() {
        // Ratios 1 and 0.5 exactly: every odd b - b_zp lands on n + 0.5.
        let p = AddParams::new([0.02, 0.01, 0.02], [0, 3, 0], false);
        assert_eq!((p.ratio_a, p.ratio_b), (1.0, 0.5));
        let a = [10u8, 10, 11, 11];
        let b = [4u8, 6, 4, 6]; // b - zp = 1, 3 -> +0.5, +1.5
        let mut out = [0u8; 4];
        add(&p, &a, &b, &mut out);
        assert_eq!(out, [10, 12, 12, 12]); // 10.5 -> 10, 11.5 -> 12, 11.5 -> 12, 12.5 -> 12
        let mut one = [0u8; 4];
        add_one(&p, &a, p.ratio_a, p.fixed_with_b(4), &mut one);
        assert_eq!(one, [10, 10, 12, 12]);
    }

    #[test]
    fn fma_and_portable_paths_agree_and_saturate() {
        let p = AddParams::new([0.037, 0.051, 0.029], [-3, 17, -128], true);
        let a: Vec<u8> = (0..=255).collect();
        let b = a.clone();
        let (mut x, mut y) = (vec![0u8; 256], vec![0u8; 256]);
        add(&p, &a, &b, &mut x);
        add_body(&p, &a, &b, &mut y);
        assert_eq!(x, y);
        assert!(x.iter().any(|&v| v as i8 == 127) && x.iter().any(|&v| v as i8 == -128));
    }
}
