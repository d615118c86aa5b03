//! Integer compute kernels behind beltbox's quantised convolution (`beltbox_tract::qconv`).
//!
//! Why our own: tract 0.23.9 runs a quantised convolution as im2col + a generic integer matmul
//! with zero-point and requantisation passes around it, which made INT8 models slower than
//! their FP32 originals (issue #4). These kernels do the arithmetic ONNX Runtime does — exact
//! `i32` sums of `(x - x_zp) * (w - w_zp)`, requantised with a float multiplier and rounded
//! half to even — with the data layout chosen for it:
//!
//! * [`gemm`]: `u8 x i8 -> i32` matrix product over a weight matrix packed once at load and an
//!   activation matrix packed per call (groups of 4 along K, the unit of `vpdpbusd`/`SDOT`),
//!   with the requantisation fused into the store of each output tile.
//! * [`depthwise`]: direct depthwise convolution on zero-point-free `i16` planes, no im2col.
//! * [`requant`]: the requantisation arithmetic shared by both, ORT's formula.
//! * [`qadd`]: quantised addition with MLAS QLinearAdd's fused multiply-adds (ties included).
//!
//! Each kernel has a portable implementation (the reference the others are tested against)
//! and, where it pays, `std::arch` versions chosen once per process by CPU feature detection
//! ([`Isa::detect`]): AVX-512 VNNI and AVX2 on x86_64.

// Every public item of the kernel crate is documented: these are the unsafe-heavy building
// blocks the rest of the runtime trusts (clippy -D warnings turns this into an error).
#![warn(missing_docs)]

pub mod depthwise;
pub mod gemm;
pub mod qadd;
pub mod requant;

use std::sync::OnceLock;

/// The instruction-set level the integer kernels run at on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Plain Rust; whatever the compiler vectorises for the target's baseline.
    Portable,
    /// x86_64 AVX2: exact `vpmaddwd` on bytes widened to 16 bits.
    Avx2,
    /// x86_64 AVX-512 with VNNI: `vpdpbusd`, 64 multiply-adds per instruction.
    Avx512Vnni,
}

impl Isa {
    /// The best level this CPU supports; `BELTBOX_ISA=portable|avx2|avx512vnni` caps it (for
    /// benchmarks and for testing every path on one machine). Detected once per process.
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let best = Isa::best_supported();
            match std::env::var("BELTBOX_ISA").ok().as_deref() {
                Some("portable") => Isa::Portable,
                Some("avx2") if best != Isa::Portable => Isa::Avx2,
                _ => best,
            }
        })
    }

    /// Every level this CPU can run, portable first (tests compare each against portable).
    pub fn all_supported() -> Vec<Isa> {
        let mut all = vec![Isa::Portable];
        let best = Isa::best_supported();
        if matches!(best, Isa::Avx2 | Isa::Avx512Vnni) {
            all.push(Isa::Avx2);
        }
        if best == Isa::Avx512Vnni {
            all.push(Isa::Avx512Vnni);
        }
        all
    }

    fn best_supported() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni")
            {
                return Isa::Avx512Vnni;
            }
            if is_x86_feature_detected!("avx2") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Short name for logs and `beltbox bench`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512vnni",
        }
    }
}
