//! `u8 x i8 -> i32` matrix product with the requantisation fused into the output store.
//!
//! `C[m][n] = sum_k A[m][k] * B[k][n]`: A holds the weights (i8, packed once when the model
//! loads), B the activations (u8, packed on every call), and each finished `MR x NR` tile of
//! C is turned into 8-bit outputs while it is still in L1 — no `i32` output tensor, no
//! separate zero-point or requantisation passes.
//!
//! Both operands are packed in groups of 4 consecutive K values, the unit of a 32-bit lane of
//! `vpdpbusd` (AVX-512 VNNI: `u8 x i8`, four products summed into each `i32` lane, no
//! intermediate saturation). AVX2 has no such instruction, and its `vpmaddubsw` saturates at
//! 16 bits (255 * 127 * 2 does not fit), so the AVX2 kernel widens the same bytes to 16 bits
//! and uses `vpmaddwd`, which is exact. The portable kernel is the reference for both.
//!
//! Zero points are not subtracted in the inner loop: the caller folds `x_zp * sum_k A[m][k]`
//! into a per-row offset (weights are constant) and, when a weight zero point is non-zero,
//! `w_zp[m] * sum_k B[k][n]` through [`col_sums`].

use super::requant::{row_isa, OutRange};
use super::Isa;

/// Rows of A per micro-tile.
pub const MR: usize = 8;
/// Columns of B per micro-tile (two AVX-512 vectors of 16 `i32` lanes).
pub const NR: usize = 32;

/// Number of 4-deep groups covering `k`.
fn groups(k: usize) -> usize {
    k.div_ceil(4)
}

/// The weight matrix in the one form its ISA's kernel reads: bytes packed
/// `[m / MR][k / 4][MR][4]` with zeros past `m` and `k` (portable, VNNI), or those bytes
/// widened (AVX2). Holding one form, not both, keeps weight RAM at what the kernel needs:
/// an INT8 MobileNet held 4 MiB more while both were kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedA {
    m: usize,
    k: usize,
    /// The packed bytes; empty when the weights are held `wide`.
    data: Vec<i8>,
    /// x86_64 AVX2 only: the weights widened, `[m / MR][k / 4][MR][2]`: per 4-group, the
    /// 16-bit pairs `(w0, w2)` and `(w1, w3)` as one `i32` each, so the inner loop
    /// broadcasts them as they are instead of sign-extending on every use. Empty otherwise.
    #[cfg(target_arch = "x86_64")]
    wide: Vec<i32>,
    row_sums: Vec<i32>,
}

impl PackedA {
    /// Packs the `m x k` matrix whose element `(r, c)` is `w(r, c)` for the kernels of
    /// `isa` (the form [`gemm`] with that `isa` reads).
    pub fn new(isa: Isa, m: usize, k: usize, w: impl Fn(usize, usize) -> i8) -> PackedA {
        let kg = groups(k);
        let tiles = m.div_ceil(MR);
        let mut data = vec![0i8; tiles * kg * MR * 4];
        let mut row_sums = vec![0i32; m];
        for (r, sum) in row_sums.iter_mut().enumerate() {
            let (tile, rr) = (r / MR, r % MR);
            for c in 0..k {
                let v = w(r, c);
                *sum += v as i32;
                let (g, t) = (c / 4, c % 4);
                data[((tile * kg + g) * MR + rr) * 4 + t] = v;
            }
        }
        #[cfg(target_arch = "x86_64")]
        let (data, wide) = if isa == Isa::Avx2 {
            let wide = data
                .chunks_exact(4)
                .flat_map(|w| {
                    let pair = |lo: i8, hi: i8| {
                        (lo as i16 as u16 as u32 | (hi as i16 as u16 as u32) << 16) as i32
                    };
                    [pair(w[0], w[2]), pair(w[1], w[3])]
                })
                .collect();
            (Vec::new(), wide)
        } else {
            (data, Vec::new())
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = isa;
        PackedA {
            m,
            k,
            data,
            #[cfg(target_arch = "x86_64")]
            wide,
            row_sums,
        }
    }

    /// Rows of A (output channels).
    pub fn rows(&self) -> usize {
        self.m
    }

    /// Depth K (the reduction length).
    pub fn depth(&self) -> usize {
        self.k
    }

    /// `sum_k A[r][k]`, for folding the activation zero point into a per-row offset.
    pub fn row_sum(&self, r: usize) -> i32 {
        self.row_sums[r]
    }

    /// Whether the weights are held widened (AVX2).
    #[cfg(target_arch = "x86_64")]
    fn is_wide(&self) -> bool {
        !self.wide.is_empty()
    }

    /// Heap bytes held (for the memory plan).
    pub fn bytes(&self) -> usize {
        #[cfg(target_arch = "x86_64")]
        let wide = self.wide.len() * 4;
        #[cfg(not(target_arch = "x86_64"))]
        let wide = 0;
        self.data.len() + wide + self.row_sums.len() * 4
    }
}

/// Length of the buffer [`pack_b`] fills for a `k x n` matrix.
pub fn packed_b_len(k: usize, n: usize) -> usize {
    n.div_ceil(NR) * groups(k) * NR * 4
}

/// Packs the `k x n` activation matrix (row `r` at `src[r * stride..][..n]`) into
/// `[n / NR][k / 4][NR][4]`. `flip` XORs every byte with 0x80, which maps i8 activations onto
/// u8 (`x + 128`); the caller moves its zero point by the same 128.
pub fn pack_b(src: &[u8], k: usize, n: usize, stride: usize, flip: bool, out: &mut Vec<u8>) {
    let kg = groups(k);
    out.clear();
    out.resize(packed_b_len(k, n), 0);
    let xor = if flip { 0x80 } else { 0 };
    // x86_64: 16 columns at a time with SSE2 (baseline); the rest, and other targets, one by one.
    #[cfg(target_arch = "x86_64")]
    let c0 = {
        let mut c0 = 0;
        while c0 + 16 <= n {
            // SAFETY: SSE2 is part of the x86_64 baseline, so every x86_64 CPU has it.
            unsafe { pack_b_16_sse2(src, k, kg, stride, c0, xor, out) };
            c0 += 16;
        }
        c0
    };
    #[cfg(not(target_arch = "x86_64"))]
    let c0 = 0;
    for c in c0..n {
        let (p, j) = (c / NR, c % NR);
        for r in 0..k {
            let (g, t) = (r / 4, r % 4);
            out[((p * kg + g) * NR + j) * 4 + t] = src[r * stride + c] ^ xor;
        }
    }
}

/// Packs columns `c0..c0 + 16` of every row: four rows of 16 bytes become 16 groups of 4.
/// Safe code: every load and store goes through a bounds-checked slice of exactly the bytes
/// it touches; only the SSE2 feature makes the call `unsafe`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn pack_b_16_sse2(
    src: &[u8],
    k: usize,
    kg: usize,
    stride: usize,
    c0: usize,
    xor: u8,
    out: &mut [u8],
) {
    use std::arch::x86_64::*;
    let flip = _mm_set1_epi8(xor as i8);
    let (p, j0) = (c0 / NR, c0 % NR);
    let load = |r: usize| -> __m128i {
        if r < k {
            let row = &src[r * stride + c0..][..16];
            // SAFETY: `row` has 16 readable bytes; unaligned load.
            unsafe { _mm_xor_si128(_mm_loadu_si128(row.as_ptr() as *const __m128i), flip) }
        } else {
            _mm_setzero_si128()
        }
    };
    for g in 0..kg {
        let (r0, r1, r2, r3) = (
            load(4 * g),
            load(4 * g + 1),
            load(4 * g + 2),
            load(4 * g + 3),
        );
        let t0 = _mm_unpacklo_epi8(r0, r1);
        let t1 = _mm_unpackhi_epi8(r0, r1);
        let t2 = _mm_unpacklo_epi8(r2, r3);
        let t3 = _mm_unpackhi_epi8(r2, r3);
        let dst = &mut out[((p * kg + g) * NR + j0) * 4..][..64];
        let d = dst.as_mut_ptr() as *mut __m128i;
        // SAFETY: `dst` has 64 writable bytes; unaligned stores.
        unsafe {
            _mm_storeu_si128(d, _mm_unpacklo_epi16(t0, t2));
            _mm_storeu_si128(d.add(1), _mm_unpackhi_epi16(t0, t2));
            _mm_storeu_si128(d.add(2), _mm_unpacklo_epi16(t1, t3));
            _mm_storeu_si128(d.add(3), _mm_unpackhi_epi16(t1, t3));
        }
    }
}

/// `sum_k B[k][c]` of the unpacked activations (after `flip`), one per column.
pub fn col_sums(src: &[u8], k: usize, n: usize, stride: usize, flip: bool) -> Vec<i32> {
    let xor = if flip { 0x80 } else { 0 };
    let mut sums = vec![0i32; n];
    for r in 0..k {
        for (s, &v) in sums.iter_mut().zip(&src[r * stride..][..n]) {
            *s += (v ^ xor) as i32;
        }
    }
    sums
}

/// What happens to each accumulator row `r` on its way out:
/// `out[r * ldo + c] = requant(acc + offset[r] - w_zp[r] * col_sums[c], scale[r])`.
pub struct Epilogue<'a> {
    /// Per row: bias plus the folded zero-point terms, added to the accumulator.
    pub offset: &'a [i32],
    /// Per row: the requantisation multiplier `x_scale * w_scale / y_scale`.
    pub scale: &'a [f32],
    /// With `w_zp`: the column sums of B; `None` when every weight zero point is zero.
    pub col_sums: Option<(&'a [i32], &'a [i32])>,
    /// Output zero point and clamp.
    pub range: OutRange,
    /// The output, row `r` at `r * ldo`.
    pub out: &'a mut [u8],
    /// Output row stride in bytes.
    pub ldo: usize,
}

/// Multiplies `a` by the packed `b` (`n` columns) and stores the requantised result.
pub fn gemm(isa: Isa, a: &PackedA, b: &[u8], n: usize, ep: &mut Epilogue) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: this level comes from runtime detection (`Isa::detect`).
        Isa::Avx512Vnni if ep.col_sums.is_none() && !a.is_wide() => unsafe {
            x86::gemm_vnni(a, b, n, ep)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above; the epilogue loop vectorises with AVX2.
        Isa::Avx2 | Isa::Avx512Vnni => unsafe { x86::gemm_avx2(isa, a, b, n, ep) },
        _ => gemm_impl(isa, a, b, n, ep),
    }
}

/// The tile loop with a separate epilogue per tile (every ISA; weight zero points).
#[inline(always)]
fn gemm_impl(isa: Isa, a: &PackedA, b: &[u8], n: usize, ep: &mut Epilogue) {
    let kg = groups(a.k);
    let panels = n.div_ceil(NR);
    let tiles = a.m.div_ceil(MR);
    debug_assert!(b.len() >= panels * kg * NR * 4);
    let mut tile = [0i32; MR * NR];
    for p in 0..panels {
        let bp = &b[p * kg * NR * 4..][..kg * NR * 4];
        let c0 = p * NR;
        let cols = NR.min(n - c0);
        for t in 0..tiles {
            kernel(isa, kg, a, t, bp, &mut tile);
            for rr in 0..MR.min(a.m - t * MR) {
                let r = t * MR + rr;
                let acc = &mut tile[rr * NR..][..cols];
                if let Some((sums, w_zp)) = ep.col_sums {
                    for (a, &s) in acc.iter_mut().zip(&sums[c0..]) {
                        *a = a.wrapping_sub(w_zp[r].wrapping_mul(s));
                    }
                }
                let out = &mut ep.out[r * ep.ldo + c0..][..cols];
                row_isa(isa, acc, ep.offset[r], ep.scale[r], &ep.range, out);
            }
        }
    }
}

/// One `MR x NR` tile (row tile `t` of `a`): `tile[r * NR + j] = sum over the kg groups of
/// a . b`.
fn kernel(isa: Isa, kg: usize, a: &PackedA, t: usize, b: &[u8], tile: &mut [i32; MR * NR]) {
    #[cfg(target_arch = "x86_64")]
    if a.is_wide() {
        let wide = &a.wide[t * kg * MR * 2..][..kg * MR * 2];
        // SAFETY: `wide` is only built for `Isa::Avx2`, which is only produced after
        // runtime detection confirmed AVX2; `wide`/`b` hold exactly `kg` groups (sliced
        // here and by `gemm`).
        return unsafe { x86::tile_avx2(kg, wide.as_ptr(), b.as_ptr(), tile) };
    }
    let ap = &a.data[t * kg * MR * 4..][..kg * MR * 4];
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512Vnni` is only produced after runtime detection confirmed the
        // features; `ap`/`b` hold exactly `kg` packed groups (sliced here and by `gemm`).
        Isa::Avx512Vnni => unsafe { x86::tile_vnni(kg, ap.as_ptr(), b.as_ptr(), tile) },
        _ => tile_portable(kg, ap, b, tile),
    }
}

/// The reference kernel.
fn tile_portable(kg: usize, a: &[i8], b: &[u8], tile: &mut [i32; MR * NR]) {
    tile.fill(0);
    for g in 0..kg {
        let ag = &a[g * MR * 4..][..MR * 4];
        let bg = &b[g * NR * 4..][..NR * 4];
        for r in 0..MR {
            let w = &ag[r * 4..][..4];
            for (j, x) in bg.chunks_exact(4).enumerate() {
                let s: i32 = (0..4).map(|t| w[t] as i32 * x[t] as i32).sum();
                tile[r * NR + j] += s;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{gemm_impl, groups, Epilogue, Isa, PackedA, MR, NR};
    use crate::requant::x86::requant16;
    use std::arch::x86_64::*;

    /// [`gemm_impl`] compiled for AVX2 (its epilogue loop vectorises 8 wide). Safe code;
    /// callable only where the CPU has AVX2 (hence `unsafe` at the call).
    #[target_feature(enable = "avx2")]
    pub(super) fn gemm_avx2(isa: Isa, a: &PackedA, b: &[u8], n: usize, ep: &mut Epilogue) {
        gemm_impl(isa, a, b, n, ep)
    }

    /// VNNI tiles requantised in registers: with K as small as 16 (MobileNet's projections)
    /// the epilogue, not the dot products, is most of the work, so it must not go through
    /// memory or scalar code. Callable only where the CPU has these features.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) fn gemm_vnni(a: &PackedA, b: &[u8], n: usize, ep: &mut Epilogue) {
        let kg = groups(a.k);
        let panels = n.div_ceil(NR);
        let tiles = a.m.div_ceil(MR);
        assert!(
            b.len() >= panels * kg * NR * 4 && ep.out.len() >= a.m.saturating_sub(1) * ep.ldo + n
        );
        assert!(ep.offset.len() >= a.m && ep.scale.len() >= a.m);
        assert!(
            a.data.len() >= tiles * kg * MR * 4,
            "VNNI reads the packed bytes"
        );
        let lo = _mm512_set1_ps(ep.range.lo);
        let hi = _mm512_set1_ps(ep.range.hi);
        let zp = _mm512_set1_epi32(ep.range.zp);
        let out = ep.out.as_mut_ptr();
        for p in 0..panels {
            let c0 = p * NR;
            let cols = NR.min(n - c0);
            let m0: __mmask16 = if cols >= 16 {
                0xffff
            } else {
                (1u16 << cols) - 1
            };
            let m1: __mmask16 = if cols >= 32 {
                0xffff
            } else if cols > 16 {
                (1u16 << (cols - 16)) - 1
            } else {
                0
            };
            for t in 0..tiles {
                let rows = MR.min(a.m - t * MR);
                // SAFETY: (block) group g of panel p / tile t is inside `b` / `a.data`
                // (asserted above and by the packing layout); stores are masked to `cols`
                // columns of rows < `rows`, inside `ep.out` (asserted above).
                unsafe {
                    let acc = dot_vnni(
                        kg,
                        a.data.as_ptr().add(t * kg * MR * 4),
                        b.as_ptr().add(p * kg * NR * 4),
                    );
                    for (rr, acc) in acc.iter().enumerate() {
                        if rr >= rows {
                            break;
                        }
                        let r = t * MR + rr;
                        let off = _mm512_set1_epi32(*ep.offset.get_unchecked(r));
                        let sc = _mm512_set1_ps(*ep.scale.get_unchecked(r));
                        let dst = out.add(r * ep.ldo + c0) as *mut i8;
                        for (h, mask) in [(0usize, m0), (1, m1)] {
                            if mask == 0 {
                                continue;
                            }
                            let q = requant16(acc[h], off, sc, lo, hi, zp);
                            _mm_mask_storeu_epi8(dst.add(h * 16), mask, q);
                        }
                    }
                }
            }
        }
    }

    /// `vpdpbusd`: per group, two 64-byte loads of B, eight 4-byte broadcasts of A and
    /// sixteen dot-product instructions into sixteen accumulators (kept in registers).
    ///
    /// # Safety
    /// `a` and `b` point to `kg` packed groups (MR*4 and NR*4 readable bytes each).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn dot_vnni(kg: usize, a: *const i8, b: *const u8) -> [[__m512i; 2]; MR] {
        let mut acc = [[_mm512_setzero_si512(); 2]; MR];
        for g in 0..kg {
            // SAFETY: (whole block) the caller passes `kg` groups of MR*4 and NR*4 bytes.
            unsafe {
                let bp = b.add(g * NR * 4);
                let b0 = _mm512_loadu_si512(bp as *const _);
                let b1 = _mm512_loadu_si512(bp.add(64) as *const _);
                let ap = a.add(g * MR * 4);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let w = _mm512_set1_epi32((ap.add(r * 4) as *const i32).read_unaligned());
                    acc[0] = _mm512_dpbusd_epi32(acc[0], b0, w);
                    acc[1] = _mm512_dpbusd_epi32(acc[1], b1, w);
                }
            }
        }
        acc
    }

    /// One tile through [`dot_vnni`], stored as `i32` (the path with weight zero points).
    ///
    /// # Safety
    /// As [`dot_vnni`]; the CPU has AVX-512 VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile_vnni(
        kg: usize,
        a: *const i8,
        b: *const u8,
        tile: &mut [i32; MR * NR],
    ) {
        // SAFETY: the caller's contract is dot_vnni's.
        let acc = unsafe { dot_vnni(kg, a, b) };
        let c = tile.as_mut_ptr();
        for (r, acc) in acc.iter().enumerate() {
            // SAFETY: rows of NR i32 inside the tile.
            unsafe {
                _mm512_storeu_si512(c.add(r * NR) as *mut _, acc[0]);
                _mm512_storeu_si512(c.add(r * NR + 16) as *mut _, acc[1]);
            }
        }
    }

    /// Exact AVX2 version: the tile as four 4 x 16 blocks.
    ///
    /// # Safety
    /// `a` points to `kg` widened groups (MR*2 readable `i32` each, [`PackedA`]'s `wide`) and
    /// `b` to `kg` packed groups (NR*4 readable bytes each); the CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn tile_avx2(
        kg: usize,
        a: *const i32,
        b: *const u8,
        tile: &mut [i32; MR * NR],
    ) {
        let c = tile.as_mut_ptr();
        for rh in 0..MR / 4 {
            for ch in 0..NR / 16 {
                // SAFETY: offsets stay inside one group's MR*4 / NR*4 bytes and the tile.
                unsafe {
                    block_4x16(
                        kg,
                        a.add(rh * 4 * 2),
                        b.add(ch * 64),
                        c.add(rh * 4 * NR + ch * 16),
                    )
                };
            }
        }
    }

    /// Bytes 0 and 2 of each 32-bit lane of B zero-extended to 16 bits (`and 0x00ff`), bytes 1
    /// and 3 by a logical shift; A arrives widened the same way (`(w0, w2)`, `(w1, w3)`); two
    /// `vpmaddwd` give the lane's four products summed, exactly.
    ///
    /// # Safety
    /// `a`/`b` point to `kg` packed groups (rows of one 4-row block of widened A, 16 columns
    /// of B, at the tile's strides) and `c` to a 4 x NR block of writable `i32`s; the CPU has
    /// AVX2.
    #[target_feature(enable = "avx2")]
    unsafe fn block_4x16(kg: usize, a: *const i32, b: *const u8, c: *mut i32) {
        let mask = _mm256_set1_epi16(0x00ff);
        let mut acc = [[_mm256_setzero_si256(); 2]; 4];
        for g in 0..kg {
            // SAFETY: (whole block) inside group `g` of the packed operands.
            unsafe {
                let bp = b.add(g * NR * 4);
                let v0 = _mm256_loadu_si256(bp as *const __m256i);
                let v1 = _mm256_loadu_si256(bp.add(32) as *const __m256i);
                let (lo0, hi0) = (_mm256_and_si256(v0, mask), _mm256_srli_epi16(v0, 8));
                let (lo1, hi1) = (_mm256_and_si256(v1, mask), _mm256_srli_epi16(v1, 8));
                let ap = a.add(g * MR * 2);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let w02 = _mm256_set1_epi32(ap.add(r * 2).read());
                    let w13 = _mm256_set1_epi32(ap.add(r * 2 + 1).read());
                    let s0 =
                        _mm256_add_epi32(_mm256_madd_epi16(lo0, w02), _mm256_madd_epi16(hi0, w13));
                    let s1 =
                        _mm256_add_epi32(_mm256_madd_epi16(lo1, w02), _mm256_madd_epi16(hi1, w13));
                    acc[0] = _mm256_add_epi32(acc[0], s0);
                    acc[1] = _mm256_add_epi32(acc[1], s1);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            // SAFETY: row r of the block, 16 i32 inside the tile.
            unsafe {
                _mm256_storeu_si256(c.add(r * NR) as *mut __m256i, acc[0]);
                _mm256_storeu_si256(c.add(r * NR + 8) as *mut __m256i, acc[1]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Straight triple loop over the unpacked matrices, with zero points and requantisation.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        w: &[i8],
        x: &[u8],
        m: usize,
        k: usize,
        n: usize,
        x_zp: i32,
        w_zp: &[i32],
        bias: &[i32],
        scale: &[f32],
        range: &OutRange,
    ) -> Vec<u8> {
        let mut out = vec![0u8; m * n];
        for r in 0..m {
            for c in 0..n {
                let mut acc = bias[r];
                for d in 0..k {
                    acc += (x[d * n + c] as i32 - x_zp) * (w[r * k + d] as i32 - w_zp[r]);
                }
                out[r * n + c] = range.apply(acc, scale[r]) as u8;
            }
        }
        out
    }

    fn run(isa: Isa, seed: u64, m: usize, k: usize, n: usize, with_w_zp: bool) {
        let mut rng = fastrand::Rng::with_seed(seed);
        let w: Vec<i8> = (0..m * k).map(|_| rng.i8(..)).collect();
        let x: Vec<u8> = (0..k * n).map(|_| rng.u8(..)).collect();
        let x_zp = rng.i32(0..256);
        let w_zp: Vec<i32> = (0..m)
            .map(|_| if with_w_zp { rng.i32(-20..20) } else { 0 })
            .collect();
        let bias: Vec<i32> = (0..m).map(|_| rng.i32(-5000..5000)).collect();
        let scale: Vec<f32> = (0..m).map(|_| rng.f32() * 0.002 + 1e-5).collect();
        let range = OutRange::new(0, 255, rng.i32(0..256));
        let want = reference(&w, &x, m, k, n, x_zp, &w_zp, &bias, &scale, &range);

        let a = PackedA::new(isa, m, k, |r, c| w[r * k + c]);
        let mut b = Vec::new();
        pack_b(&x, k, n, n, false, &mut b);
        let offset: Vec<i32> = (0..m)
            .map(|r| bias[r] - x_zp * a.row_sum(r) + k as i32 * x_zp * w_zp[r])
            .collect();
        let sums = col_sums(&x, k, n, n, false);
        let mut got = vec![0u8; m * n];
        let mut ep = Epilogue {
            offset: &offset,
            scale: &scale,
            col_sums: with_w_zp.then_some((&sums[..], &w_zp[..])),
            range,
            out: &mut got,
            ldo: n,
        };
        gemm(isa, &a, &b, n, &mut ep);
        assert_eq!(got, want, "{isa:?} m={m} k={k} n={n} w_zp={with_w_zp}");
    }

    #[test]
    fn every_isa_matches_the_reference_on_odd_shapes() {
        for isa in Isa::all_supported() {
            for (i, &(m, k, n)) in [
                (1, 1, 1),
                (8, 4, 32),
                (9, 5, 33),
                (16, 27, 100),
                (24, 96, 49),
                (7, 130, 17),
            ]
            .iter()
            .enumerate()
            {
                run(isa, i as u64, m, k, n, false);
                run(isa, 100 + i as u64, m, k, n, true);
            }
        }
    }

    #[test]
    fn one_weight_form_per_isa() {
        // 16 x 32 weights: 512 bytes packed, 1024 widened for AVX2, never both.
        for isa in Isa::all_supported() {
            let a = PackedA::new(isa, 16, 32, |_, _| 1);
            let per_weight = if isa == Isa::Avx2 { 2 } else { 1 };
            assert_eq!(a.bytes(), 16 * 32 * per_weight + 16 * 4, "{isa:?}");
        }
    }

    #[test]
    fn extreme_values_do_not_saturate() {
        // 255 * -128 four times per lane overflows 16 bits; every kernel must stay exact.
        for isa in Isa::all_supported() {
            let (m, k, n) = (8, 64, 32);
            let a = PackedA::new(isa, m, k, |_, _| -128);
            let x = vec![255u8; k * n];
            let mut b = Vec::new();
            pack_b(&x, k, n, n, false, &mut b);
            let mut got = vec![0u8; m * n];
            let offset = vec![0; m];
            let scale = vec![-1.0 / (255.0 * 128.0 * 64.0) * 100.0; m];
            let mut ep = Epilogue {
                offset: &offset,
                scale: &scale,
                col_sums: None,
                range: OutRange::new(0, 255, 0),
                out: &mut got,
                ldo: n,
            };
            gemm(isa, &a, &b, n, &mut ep);
            assert!(got.iter().all(|&v| v == 100), "{isa:?}: {:?}", &got[..4]);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn random_shapes(m in 1usize..40, k in 1usize..80, n in 1usize..70, seed in 0u64..1000, zp in any::<bool>()) {
            for isa in Isa::all_supported() {
                run(isa, seed, m, k, n, zp);
            }
        }
    }
}
