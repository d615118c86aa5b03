//! Direct depthwise convolution of one channel, requantised on the way out.
//!
//! tract lowers a depthwise convolution to im2col + matmul, which copies every input value
//! `kh * kw` times to do `kh * kw` multiply-adds with it. Here the channel's input is turned
//! once into zero-point-free `i16` planes — one per row/column phase of the stride, so that
//! every tap reads one contiguous slice — and each tap is one vectorisable multiply-add over
//! the whole output plane. Padding is the plane's zero border (an input at its zero
//! point contributes nothing), so there are no bounds checks in the loop.

use super::requant::{row_isa, OutRange};
use super::Isa;

/// Geometry of one 2-D depthwise convolution (1-D convolutions use `h = 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Geometry {
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride: rows, columns.
    pub stride: (usize, usize),
    /// Dilation: rows, columns.
    pub dilation: (usize, usize),
    /// Padding: top, left, bottom, right.
    pub pads: [usize; 4],
}

impl Geometry {
    /// Output height and width (ONNX's formula with explicit pads).
    pub fn output(&self) -> (usize, usize) {
        let span = |n: usize, k: usize, d: usize, s: usize, a: usize, b: usize| {
            let full = n + a + b;
            let kext = d * (k - 1) + 1;
            if full < kext {
                0
            } else {
                (full - kext) / s + 1
            }
        };
        (
            span(
                self.h,
                self.kh,
                self.dilation.0,
                self.stride.0,
                self.pads[0],
                self.pads[2],
            ),
            span(
                self.w,
                self.kw,
                self.dilation.1,
                self.stride.1,
                self.pads[1],
                self.pads[3],
            ),
        )
    }
}

/// Reusable buffers (one per op evaluation; grown once, then reused for every channel).
#[derive(Debug, Default)]
pub struct Scratch {
    planes: Vec<i16>,
    row: Vec<i16>,
    acc: Vec<i32>,
}

impl Scratch {
    /// Bytes this geometry needs (for the memory plan).
    pub fn bytes(g: &Geometry) -> usize {
        let (ph, pw) = (g.h + g.pads[0] + g.pads[2], g.w + g.pads[1] + g.pads[3]);
        let (qh, qw) = (ph.div_ceil(g.stride.0), pw.div_ceil(g.stride.1));
        let (oh, _) = g.output();
        (g.stride.0 * g.stride.1 * qh * qw + qw) * 2 + oh * qw * 4
    }
}

/// One channel's operands: `x` is the `h x w` input (bytes; `signed` says i8), `taps` the
/// `kh * kw` weights minus their zero point, `offset` the bias; `scale` and `range` the
/// requantisation to the output.
#[derive(Debug, Clone, Copy)]
pub struct Channel<'a> {
    /// Plane and kernel geometry.
    pub geometry: &'a Geometry,
    /// The input plane, `h * w` bytes.
    pub x: &'a [u8],
    /// Whether `x` holds i8 (else u8).
    pub signed: bool,
    /// Input zero point.
    pub x_zp: i32,
    /// Kernel taps with the weight zero point subtracted.
    pub taps: &'a [i16],
    /// Added to every accumulator (bias, already in accumulator units).
    pub offset: i32,
    /// Requantisation multiplier.
    pub scale: f32,
    /// Output zero point and clamp.
    pub range: &'a OutRange,
}

/// Convolves one channel into `out` (`oh * ow` bytes), at the instruction-set level `isa`.
pub fn channel(isa: Isa, c: &Channel, scratch: &mut Scratch, out: &mut [u8]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the AVX-512 level is only produced by runtime detection (`Isa::detect`),
        // so the CPU has the features `channel_avx512` is compiled for.
        Isa::Avx512Vnni => unsafe { channel_avx512(c, scratch, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for AVX2.
        Isa::Avx2 => unsafe { channel_avx2(c, scratch, out) },
        _ => channel_impl(isa, c, scratch, out),
    }
}

/// [`channel_impl`] compiled with AVX-512; safe code, but only callable where the CPU has
/// the features (hence `unsafe` at the call).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
fn channel_avx512(c: &Channel, scratch: &mut Scratch, out: &mut [u8]) {
    channel_impl(Isa::Avx512Vnni, c, scratch, out)
}

/// [`channel_impl`] compiled with AVX2; see [`channel_avx512`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn channel_avx2(c: &Channel, scratch: &mut Scratch, out: &mut [u8]) {
    channel_impl(Isa::Avx2, c, scratch, out)
}

/// The one implementation, compiled once per instruction set by the wrappers above.
#[inline(always)]
fn channel_impl(isa: Isa, c: &Channel, scratch: &mut Scratch, out: &mut [u8]) {
    let Channel {
        geometry: g,
        x,
        signed,
        x_zp,
        taps,
        offset,
        scale,
        range,
    } = *c;
    let (oh, ow) = g.output();
    if oh == 0 || ow == 0 {
        return;
    }
    let (sh, sw) = g.stride;
    let (dh, dw) = g.dilation;
    let ph = g.h + g.pads[0] + g.pads[2];
    let pw = g.w + g.pads[1] + g.pads[3];
    // Phase (qy, qx) holds padded rows qy, qy + sh, ... and columns qx, qx + sw, ...: then
    // the input of tap (ky, kx) for output (oy, ox) sits at row oy + ky*dh/sh, column
    // ox + kx*dw/sw of one phase. Computing "wide" outputs (qw columns per row, the extra
    // ones discarded) makes every tap ONE contiguous multiply-add over oh*qw values,
    // however small the plane (7x7 at the end of MobileNet).
    let qh = ph.div_ceil(sh);
    let qw = pw.div_ceil(sw);
    let plane_len = qh * qw;
    scratch.planes.clear();
    // + qw: the wide outputs of the last row may read past a phase's end.
    scratch.planes.resize(sh * sw * plane_len + qw, 0);
    let (pl, w) = (g.pads[1], g.w);
    for y in 0..g.h {
        let src = &x[y * w..][..w];
        let py = y + g.pads[0];
        let (qy, ry) = (py % sh, py / sh);
        if sw == 2 {
            // Widen the padded row once (contiguous, vectorises), then split even/odd
            // columns into the two phases.
            scratch.row.clear();
            scratch.row.resize(pw, 0);
            let mid = &mut scratch.row[pl..][..w];
            if signed {
                mid.iter_mut()
                    .zip(src)
                    .for_each(|(d, &v)| *d = (v as i8 as i16) - x_zp as i16);
            } else {
                mid.iter_mut()
                    .zip(src)
                    .for_each(|(d, &v)| *d = (v as i16) - x_zp as i16);
            }
            let o0 = ((qy * 2) * qh + ry) * qw;
            let (left, right) = scratch.planes.split_at_mut(o0 + plane_len);
            let (even, odd) = (&mut left[o0..][..qw], &mut right[..qw]);
            for (j, pair) in scratch.row.chunks_exact(2).enumerate() {
                even[j] = pair[0];
                odd[j] = pair[1];
            }
            if pw % 2 == 1 {
                even[pw / 2] = scratch.row[pw - 1];
            }
            continue;
        }
        for q in 0..sw {
            // Phase column j holds input column j * sw + q - pl: the js where it is in 0..w.
            let first = if pl > q { (pl - q).div_ceil(sw) } else { 0 };
            let end = if pl + w > q {
                (pl + w - q).div_ceil(sw).min(qw)
            } else {
                0
            };
            if first >= end {
                continue;
            }
            let dst = &mut scratch.planes[((qy * sw + q) * qh + ry) * qw..][first..end];
            let start = first * sw + q - pl;
            if sw == 1 {
                let src = &src[start..][..dst.len()];
                if signed {
                    dst.iter_mut()
                        .zip(src)
                        .for_each(|(d, &v)| *d = (v as i8 as i16) - x_zp as i16);
                } else {
                    dst.iter_mut()
                        .zip(src)
                        .for_each(|(d, &v)| *d = (v as i16) - x_zp as i16);
                }
            } else {
                for (i, d) in dst.iter_mut().enumerate() {
                    let v = src[start + i * sw];
                    let v = if signed { v as i8 as i16 } else { v as i16 };
                    *d = v - x_zp as i16;
                }
            }
        }
    }
    // Output rows in blocks whose accumulators (and input rows) stay in L1.
    let block = (4096 / qw).clamp(1, oh);
    scratch.acc.clear();
    scratch.acc.resize(block * qw, 0);
    let planes = &scratch.planes;
    for oy0 in (0..oh).step_by(block) {
        let rows = block.min(oh - oy0);
        let wide = rows * qw;
        let acc = &mut scratch.acc[..wide];
        acc.fill(0);
        for ky in 0..g.kh {
            let ey = ky * dh;
            for kx in 0..g.kw {
                let ex = kx * dw;
                let phase = (ey % sh) * sw + ex % sw;
                let base = phase * plane_len + (oy0 + ey / sh) * qw + ex / sw;
                let src = &planes[base..][..wide];
                let t = taps[ky * g.kw + kx] as i32;
                for (a, &v) in acc.iter_mut().zip(src) {
                    *a += t * v as i32;
                }
            }
        }
        for r in 0..rows {
            let oy = oy0 + r;
            row_isa(
                isa,
                &acc[r * qw..][..ow],
                offset,
                scale,
                range,
                &mut out[oy * ow..][..ow],
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Textbook loop: every output, every tap, bounds-checked padding.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        g: &Geometry,
        x: &[u8],
        x_zp: i32,
        w: &[i8],
        w_zp: i32,
        bias: i32,
        scale: f32,
        r: &OutRange,
    ) -> Vec<u8> {
        let (oh, ow) = g.output();
        let mut out = vec![0u8; oh * ow];
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = bias;
                for ky in 0..g.kh {
                    for kx in 0..g.kw {
                        let iy =
                            (oy * g.stride.0 + ky * g.dilation.0) as isize - g.pads[0] as isize;
                        let ix =
                            (ox * g.stride.1 + kx * g.dilation.1) as isize - g.pads[1] as isize;
                        if iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w {
                            let v = x[iy as usize * g.w + ix as usize] as i32;
                            acc += (v - x_zp) * (w[ky * g.kw + kx] as i32 - w_zp);
                        }
                    }
                }
                out[oy * ow + ox] = r.apply(acc, scale) as u8;
            }
        }
        out
    }

    #[test]
    fn every_isa_matches_the_reference() {
        let mut rng = fastrand::Rng::with_seed(7);
        let shapes = [
            // h, w, k, stride, dilation, pads
            (7, 7, 3, 1, 1, [1, 1, 1, 1]),
            (8, 8, 3, 2, 1, [1, 1, 1, 1]),
            (9, 13, 3, 2, 1, [0, 1, 1, 0]),
            (5, 17, 5, 1, 2, [2, 3, 2, 1]),
            (11, 6, 1, 3, 1, [0, 0, 0, 0]),
            (1, 31, 3, 1, 1, [0, 1, 0, 1]), // no output rows
            (1, 31, 3, 1, 1, [1, 1, 1, 1]),
            (7, 7, 3, 1, 1, [0, 0, 0, 0]),
            (112, 112, 3, 2, 1, [1, 1, 1, 1]),
        ];
        for isa in Isa::all_supported() {
            for &(h, w, k, s, d, pads) in &shapes {
                let g = Geometry {
                    h,
                    w,
                    kh: k,
                    kw: k,
                    stride: (s, s),
                    dilation: (d, d),
                    pads,
                };
                let x: Vec<u8> = (0..h * w).map(|_| rng.u8(..)).collect();
                let wt: Vec<i8> = (0..k * k).map(|_| rng.i8(..)).collect();
                let (x_zp, w_zp, bias) = (rng.i32(0..256), rng.i32(-3..3), rng.i32(-900..900));
                let scale = rng.f32() * 0.01 + 1e-4;
                let range = OutRange::new(0, 255, rng.i32(0..256));
                let taps: Vec<i16> = wt.iter().map(|&v| (v as i32 - w_zp) as i16).collect();
                let mut got = vec![0u8; g.output().0 * g.output().1];
                let mut scratch = Scratch::default();
                let c = Channel {
                    geometry: &g,
                    x: &x,
                    signed: false,
                    x_zp,
                    taps: &taps,
                    offset: bias,
                    scale,
                    range: &range,
                };
                channel(isa, &c, &mut scratch, &mut got);
                let want = reference(&g, &x, x_zp, &wt, w_zp, bias, scale, &range);
                assert_eq!(got, want, "{isa:?} {g:?}");
            }
        }
    }

    #[test]
    fn signed_input_is_read_as_i8() {
        let g = Geometry {
            h: 1,
            w: 3,
            kh: 1,
            kw: 1,
            stride: (1, 1),
            dilation: (1, 1),
            pads: [0; 4],
        };
        let x = [0x80u8, 0xff, 0x05]; // -128, -1, 5
        let mut out = [0u8; 3];
        let range = OutRange::new(-128, 127, 0);
        let c = Channel {
            geometry: &g,
            x: &x,
            signed: true,
            x_zp: 0,
            taps: &[1],
            offset: 0,
            scale: 1.0,
            range: &range,
        };
        channel(Isa::Portable, &c, &mut Scratch::default(), &mut out);
        assert_eq!(out, [0x80, 0xff, 0x05]);
    }
}
