//! Requantisation: an exact `i32` accumulator to an 8-bit output, ONNX Runtime's way.
//!
//! MLAS (`MlasRequantizeOutput`) computes `float(acc) * scale`, clamps it to
//! `[qmin - zp, qmax - zp]`, rounds half to even and adds the zero point. The same steps in
//! the same float order give the same bytes, which is what keeps our INT8 outputs within one
//! quantisation step of ORT (in practice identical).

/// Adding then subtracting 1.5 * 2^23 rounds an f32 of magnitude < 2^22 to the nearest integer,
/// ties to even (the FPU's default mode) — MLAS's trick, and one that vectorises everywhere.
use super::Isa;

const ROUNDING_MAGIC: f32 = 12_582_912.0;

/// `v` rounded to the nearest integer, ties to even, for |v| < 2^22 (callers clamp first).
#[inline(always)]
pub fn round_half_even(v: f32) -> i32 {
    ((v + ROUNDING_MAGIC) - ROUNDING_MAGIC) as i32
}

/// Output range and zero point of one requantisation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutRange {
    /// Lowest representable output, *minus the zero point* (e.g. `0 - zp` for u8).
    pub lo: f32,
    /// Highest representable output minus the zero point.
    pub hi: f32,
    /// Output zero point.
    pub zp: i32,
}

impl OutRange {
    /// The range of an output of `qmin..=qmax` with zero point `zp`.
    pub fn new(qmin: i32, qmax: i32, zp: i32) -> OutRange {
        OutRange {
            lo: (qmin - zp) as f32,
            hi: (qmax - zp) as f32,
            zp,
        }
    }

    /// One value: `clamp(acc * scale) + zp`, rounded half to even.
    #[inline(always)]
    pub fn apply(&self, acc: i32, scale: f32) -> i32 {
        round_half_even((acc as f32 * scale).max(self.lo).min(self.hi)) + self.zp
    }
}

/// Requantises `acc[j] + offset` for every `j` into `out` (same length), with the widest
/// vectors `isa` has: this runs once per output value, and with small K (MobileNet's 16-deep
/// projections) or depthwise convolutions it is a large share of the work.
#[inline(always)]
pub fn row_isa(isa: Isa, acc: &[i32], offset: i32, scale: f32, range: &OutRange, out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    let n = acc.len().min(out.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level comes from runtime detection; pointers cover `n` elements.
        Isa::Avx512Vnni => unsafe {
            x86::row_avx512(&acc[..n], offset, scale, range, &mut out[..n])
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { x86::row_avx2(&acc[..n], offset, scale, range, &mut out[..n]) },
        _ => row(acc, offset, scale, range, out),
    }
}

/// Requantises `acc[j] + offset` for every `j` into `out` (same length). Outputs are bytes:
/// an i8 result is stored as its two's-complement byte, the range having clamped it.
#[inline(always)]
pub fn row(acc: &[i32], offset: i32, scale: f32, range: &OutRange, out: &mut [u8]) {
    for (o, &a) in out.iter_mut().zip(acc) {
        *o = range.apply(a.wrapping_add(offset), scale) as u8;
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::{row, OutRange};
    use std::arch::x86_64::*;

    /// 16 accumulators to 16 output bytes, in ORT's order: float(acc + offset) * scale,
    /// clamp, round half to even (cvtps2dq in the default rounding mode), + zero point, then a
    /// truncating narrow (the value is already in the output range).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(crate) fn requant16(
        acc: __m512i,
        offset: __m512i,
        scale: __m512,
        lo: __m512,
        hi: __m512,
        zp: __m512i,
    ) -> __m128i {
        let f = _mm512_cvtepi32_ps(_mm512_add_epi32(acc, offset));
        let f = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(f, scale), lo), hi);
        _mm512_cvtepi32_epi8(_mm512_add_epi32(_mm512_cvtps_epi32(f), zp))
    }

    /// 16 values per step through [`requant16`], masked at the tail.
    /// Callable only where the CPU has these features.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) fn row_avx512(acc: &[i32], offset: i32, scale: f32, r: &OutRange, out: &mut [u8]) {
        let (off, sc) = (_mm512_set1_epi32(offset), _mm512_set1_ps(scale));
        let (lo, hi, zp) = (
            _mm512_set1_ps(r.lo),
            _mm512_set1_ps(r.hi),
            _mm512_set1_epi32(r.zp),
        );
        let n = acc.len();
        let mut j = 0;
        while j < n {
            let left = n - j;
            let mask: __mmask16 = if left >= 16 {
                0xffff
            } else {
                (1u16 << left) - 1
            };
            // SAFETY: masked loads/stores touch only the `left` elements that exist.
            unsafe {
                let v = _mm512_maskz_loadu_epi32(mask, acc.as_ptr().add(j));
                let q = requant16(v, off, sc, lo, hi, zp);
                _mm_mask_storeu_epi8(out.as_mut_ptr().add(j) as *mut i8, mask, q);
            }
            j += 16;
        }
    }

    /// 8 values per step, narrowed with saturating packs (exact: values are already in the
    /// output range); the tail goes through the portable code.
    /// Callable only where the CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) fn row_avx2(acc: &[i32], offset: i32, scale: f32, r: &OutRange, out: &mut [u8]) {
        let (off, sc) = (_mm256_set1_epi32(offset), _mm256_set1_ps(scale));
        let (lo, hi, zp) = (
            _mm256_set1_ps(r.lo),
            _mm256_set1_ps(r.hi),
            _mm256_set1_epi32(r.zp),
        );
        let signed = r.lo + (r.zp as f32) < 0.0;
        let gather = _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0);
        let n = acc.len();
        let mut j = 0;
        while j + 8 <= n {
            // SAFETY: 8 elements at j exist in both slices.
            unsafe {
                let v = _mm256_loadu_si256(acc.as_ptr().add(j) as *const __m256i);
                let f = _mm256_cvtepi32_ps(_mm256_add_epi32(v, off));
                let f = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(f, sc), lo), hi);
                let q = _mm256_add_epi32(_mm256_cvtps_epi32(f), zp);
                let w = _mm256_packs_epi32(q, q);
                let b = if signed {
                    _mm256_packs_epi16(w, w)
                } else {
                    _mm256_packus_epi16(w, w)
                };
                let b = _mm256_permutevar8x32_epi32(b, gather);
                _mm_storel_epi64(
                    out.as_mut_ptr().add(j) as *mut __m128i,
                    _mm256_castsi256_si128(b),
                );
            }
            j += 8;
        }
        row(&acc[j..], offset, scale, r, &mut out[j..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_isa_matches_the_portable_row() {
        let mut rng = fastrand::Rng::with_seed(3);
        for isa in Isa::all_supported() {
            for (qmin, qmax) in [(0, 255), (-128, 127)] {
                for n in [0usize, 1, 7, 8, 15, 16, 17, 33, 100] {
                    let acc: Vec<i32> = (0..n).map(|_| rng.i32(-40000..40000)).collect();
                    let range = OutRange::new(qmin, qmax, rng.i32(qmin..=qmax));
                    let (offset, scale) = (rng.i32(-500..500), rng.f32() * 0.01);
                    let mut want = vec![0u8; n];
                    row(&acc, offset, scale, &range, &mut want);
                    let mut got = vec![0u8; n];
                    row_isa(isa, &acc, offset, scale, &range, &mut got);
                    assert_eq!(got, want, "{isa:?} n={n} range {range:?}");
                }
            }
        }
    }

    #[test]
    fn rounds_half_to_even_and_clamps() {
        let r = OutRange::new(0, 255, 10);
        // 2.5 -> 2, 3.5 -> 4 (ties to even), then + zp.
        assert_eq!(r.apply(5, 0.5), 12);
        assert_eq!(r.apply(7, 0.5), 14);
        assert_eq!(r.apply(-5, 0.5), 8);
        // Clamped below at 0 - zp and above at 255 - zp.
        assert_eq!(r.apply(-1000, 1.0), 0);
        assert_eq!(r.apply(1000, 1.0), 255);
        let s = OutRange::new(-128, 127, 0);
        assert_eq!(s.apply(-1000, 1.0), -128);
        assert_eq!(s.apply(1000, 1.0), 127);
    }

    #[test]
    fn matches_round_ties_even_over_a_range() {
        let r = OutRange::new(-1_000_000, 1_000_000, 0);
        for acc in -5000..5000 {
            for scale in [0.013f32, 0.25, 0.5, 1.0 / 3.0, 7.7] {
                let want = (acc as f32 * scale).round_ties_even() as i32;
                assert_eq!(r.apply(acc, scale), want, "acc {acc} scale {scale}");
            }
        }
    }
}
