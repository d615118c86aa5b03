//! CPU features that decide which integer kernels can run (logged at load, in bench).

pub fn features() -> Vec<&'static str> {
    // Other targets (armv7) have no stable runtime feature probe: the list stays empty.
    #[cfg_attr(
        not(any(target_arch = "x86_64", target_arch = "aarch64")),
        allow(unused_mut)
    )]
    let mut f = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($feat:tt),*) => {$(
                if std::arch::is_x86_feature_detected!($feat) { f.push($feat); }
            )*};
        }
        probe!(
            "sse4.1",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vnni",
            "avxvnni"
        );
    }
    #[cfg(target_arch = "aarch64")]
    {
        macro_rules! probe {
            ($($feat:tt),*) => {$(
                if std::arch::is_aarch64_feature_detected!($feat) { f.push($feat); }
            )*};
        }
        probe!("neon", "asimd", "fp16", "dotprod", "i8mm", "sve");
    }
    f
}

pub fn arch() -> &'static str {
    std::env::consts::ARCH
}
