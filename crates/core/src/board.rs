//! Which board are we on, and what do we know about it.
//!
//! Two layers:
//! - [`detect`] / [`detect_under`]: the raw device-tree model string, for the load log.
//! - Board profiles (`boards/*.toml`, compiled into the binary): cores, RAM and the share
//!   the runtime may plan for, which thermal zones to watch, the temperature at which the
//!   platform starts throttling, cpufreq policies, vendor throttle flags. [`identify_under`]
//!   matches the device tree (`compatible` first, then `model`) against the profiles, and
//!   falls back to the architecture for machines without a device tree (x86 dev boxes).
//!
//! Profiles are embedded rather than read from disk so that a technician's `beltbox board
//! show` and the governor's thresholds can never disagree with what shipped; a custom
//! profile can still be given as a file (`--board path/to/board.toml`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The bundled profiles, in `board list` order.
const PROFILES: &[(&str, &str)] = &[
    ("rpi4", include_str!("../../../boards/rpi4.toml")),
    ("rpi5", include_str!("../../../boards/rpi5.toml")),
    ("rk3588", include_str!("../../../boards/rk3588.toml")),
    ("imx8mp", include_str!("../../../boards/imx8mp.toml")),
    ("qemu-virt", include_str!("../../../boards/qemu-virt.toml")),
    ("x86-dev", include_str!("../../../boards/x86-dev.toml")),
];

#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    #[error("board profile {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("board profile {origin}: `{field}` {problem}")]
    Invalid {
        origin: String,
        field: &'static str,
        problem: String,
    },
    #[error(
        "unknown board `{name}`: known boards are {known}; or give a profile file ending in .toml"
    )]
    Unknown { name: String, known: String },
    #[error("{path}: cannot read board profile: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One board profile (`boards/NAME.toml`). Unknown keys are errors, like manifests.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BoardProfile {
    pub name: String,
    pub description: String,
    pub soc: String,
    pub arch: String,
    pub detect: DetectRules,
    pub cpu: CpuSpec,
    /// cpufreq policies as the kernel exposes them (empty: none, e.g. QEMU).
    #[serde(default)]
    pub cpufreq: Vec<CpufreqPolicy>,
    pub memory: MemorySpec,
    pub budgets: BoardBudgets,
    pub thermal: ThermalSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_flag: Option<VendorFlagSpec>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DetectRules {
    /// Substrings of the device-tree `model` property.
    #[serde(default)]
    pub model: Vec<String>,
    /// Exact entries of the device-tree `compatible` list.
    #[serde(default)]
    pub compatible: Vec<String>,
    /// Chosen when there is no device tree and the CPU architecture is this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch_fallback: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CpuSpec {
    pub cores: u32,
    pub core: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CpufreqPolicy {
    /// Directory name under /sys/devices/system/cpu/cpufreq (e.g. `policy0`).
    pub policy: String,
    pub cpus: Vec<u32>,
    pub min_khz: u64,
    /// `cpuinfo_max_freq`: the hardware maximum.
    pub max_khz: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MemorySpec {
    pub ram_mib: u64,
    /// Fraction of RAM the inference runtime may plan for (0 < share <= 1).
    pub ai_share: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BoardBudgets {
    /// Default intra-op threads for the primary model.
    pub threads: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ThermalSpec {
    /// Thermal zone `type`s to watch; the hottest of those present counts.
    pub watch: Vec<String>,
    /// Temperature at which the platform starts cutting the CPU clock.
    pub throttle_c: f64,
    /// The governor steps down at or above this temperature...
    pub warn_c: f64,
    /// ...and steps back up only at or below this one (the hysteresis band).
    pub resume_c: f64,
    /// The zones and trip points as the kernel exposes them (documentation, and the
    /// layout of the soak's fake sysfs).
    #[serde(default)]
    pub zones: Vec<ZoneSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ZoneSpec {
    #[serde(rename = "type")]
    pub zone_type: String,
    #[serde(default)]
    pub trips: Vec<TripSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TripSpec {
    pub temp_c: f64,
    /// `trip_point_N_type`: active, passive, hot or critical.
    pub kind: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum VendorFlagKind {
    /// The Raspberry Pi firmware's throttle word, printed as `%x\n`.
    RpiGetThrottled,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VendorFlagSpec {
    pub kind: VendorFlagKind,
    /// Candidate paths relative to the sysfs root's parent (`sys/...`); the first that
    /// exists is read.
    pub paths: Vec<String>,
}

impl BoardProfile {
    /// Parses and validates a profile; `origin` names it in errors (file or bundled name).
    pub fn from_toml(text: &str, origin: &str) -> Result<BoardProfile, BoardError> {
        let p: BoardProfile = toml::from_str(text).map_err(|e| BoardError::Parse {
            origin: origin.to_string(),
            message: e.message().to_string(),
        })?;
        p.validate(origin)?;
        Ok(p)
    }

    fn validate(&self, origin: &str) -> Result<(), BoardError> {
        let bad = |field: &'static str, problem: String| BoardError::Invalid {
            origin: origin.to_string(),
            field,
            problem,
        };
        if self.name.trim().is_empty() {
            return Err(bad("name", "is empty".into()));
        }
        if self.cpu.cores == 0 {
            return Err(bad("cpu.cores", "must be at least 1".into()));
        }
        if !(self.memory.ai_share > 0.0 && self.memory.ai_share <= 1.0) {
            return Err(bad(
                "memory.ai_share",
                format!("is {}; must be in (0, 1]", self.memory.ai_share),
            ));
        }
        if self.budgets.threads == 0 || self.budgets.threads > self.cpu.cores {
            return Err(bad(
                "budgets.threads",
                format!(
                    "is {}; must be between 1 and cpu.cores ({})",
                    self.budgets.threads, self.cpu.cores
                ),
            ));
        }
        let t = &self.thermal;
        let finite = t.throttle_c.is_finite() && t.warn_c.is_finite() && t.resume_c.is_finite();
        // The governor's hysteresis only works with resume < warn <= throttle.
        if !(finite && t.resume_c < t.warn_c && t.warn_c <= t.throttle_c) {
            return Err(bad(
                "thermal",
                format!(
                    "needs resume_c < warn_c <= throttle_c, got {} / {} / {}",
                    t.resume_c, t.warn_c, t.throttle_c
                ),
            ));
        }
        for z in &t.zones {
            for trip in &z.trips {
                if !matches!(
                    trip.kind.as_str(),
                    "active" | "passive" | "hot" | "critical"
                ) {
                    return Err(bad(
                        "thermal.zones.trips.kind",
                        format!(
                            "`{}` is not one of active, passive, hot, critical",
                            trip.kind
                        ),
                    ));
                }
            }
        }
        for p in &self.cpufreq {
            if p.max_khz == 0 || p.min_khz > p.max_khz || p.cpus.is_empty() {
                return Err(bad(
                    "cpufreq",
                    format!("policy {} needs cpus and 0 < min_khz <= max_khz", p.policy),
                ));
            }
        }
        Ok(())
    }

    /// RAM the runtime may plan for, in MiB.
    pub fn ai_ram_mib(&self) -> u64 {
        (self.memory.ram_mib as f64 * self.memory.ai_share).floor() as u64
    }
}

/// Names of the bundled profiles.
pub fn names() -> Vec<&'static str> {
    PROFILES.iter().map(|(n, _)| *n).collect()
}

/// All bundled profiles, parsed and validated.
pub fn profiles() -> Result<Vec<BoardProfile>, BoardError> {
    PROFILES
        .iter()
        .map(|(name, text)| BoardProfile::from_toml(text, &format!("boards/{name}.toml")))
        .collect()
}

/// A bundled profile by name, or a profile file when the argument ends in `.toml`.
pub fn profile(name_or_path: &str) -> Result<BoardProfile, BoardError> {
    if name_or_path.ends_with(".toml") {
        let path = PathBuf::from(name_or_path);
        let text = std::fs::read_to_string(&path).map_err(|source| BoardError::Io {
            path: path.clone(),
            source,
        })?;
        return BoardProfile::from_toml(&text, &path.display().to_string());
    }
    match PROFILES.iter().find(|(n, _)| *n == name_or_path) {
        Some((n, text)) => BoardProfile::from_toml(text, &format!("boards/{n}.toml")),
        None => Err(BoardError::Unknown {
            name: name_or_path.to_string(),
            known: names().join(", "),
        }),
    }
}

/// The device-tree model (e.g. "Raspberry Pi 4 Model B Rev 1.4"), `BELTBOX_BOARD` if set,
/// or "unknown" (x86 dev machines and QEMU have no device tree model).
pub fn detect() -> String {
    if let Some(b) = env_board() {
        return b;
    }
    detect_under(Path::new("/"))
}

pub fn detect_under(root: &Path) -> String {
    dt_model(root).unwrap_or_else(|| "unknown".to_string())
}

fn env_board() -> Option<String> {
    let b = std::env::var("BELTBOX_BOARD").ok()?;
    let b = b.trim();
    (!b.is_empty()).then(|| b.to_string())
}

/// Device-tree property locations: the procfs view and the sysfs one (same data; some
/// containers mount only one of them).
const DT_DIRS: [&str; 2] = ["proc/device-tree", "sys/firmware/devicetree/base"];

fn dt_model(root: &Path) -> Option<String> {
    for dir in DT_DIRS {
        if let Ok(bytes) = std::fs::read(root.join(dir).join("model")) {
            // The property is NUL-terminated.
            let s = String::from_utf8_lossy(&bytes)
                .trim_end_matches('\0')
                .trim()
                .to_string();
            if !s.is_empty() {
                return Some(s);
            }
        }
    }
    None
}

fn dt_compatible(root: &Path) -> Vec<String> {
    for dir in DT_DIRS {
        if let Ok(bytes) = std::fs::read(root.join(dir).join("compatible")) {
            // A NUL-separated string list, most specific first.
            let list: Vec<String> = bytes
                .split(|&b| b == 0)
                .map(|s| String::from_utf8_lossy(s).trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            if !list.is_empty() {
                return list;
            }
        }
    }
    Vec::new()
}

/// How a profile was chosen, for the log and `board show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "by", content = "value", rename_all = "kebab-case")]
pub enum MatchedBy {
    /// `BELTBOX_BOARD` or `--board`.
    Explicit(String),
    Compatible(String),
    Model(String),
    Arch(String),
    /// Nothing matched: generic thresholds apply.
    Unknown,
}

#[derive(Debug, Clone, Serialize)]
pub struct Identification {
    /// The device-tree model string, if there is one.
    pub model: Option<String>,
    pub compatible: Vec<String>,
    pub matched_by: MatchedBy,
    pub profile: Option<BoardProfile>,
}

impl Identification {
    pub fn name(&self) -> &str {
        self.profile
            .as_ref()
            .map(|p| p.name.as_str())
            .unwrap_or("unknown")
    }

    /// One line for logs: what we matched and how, or why nothing did.
    pub fn describe(&self) -> String {
        let model = self.model.as_deref().unwrap_or("no device-tree model");
        match (&self.matched_by, &self.profile) {
            (MatchedBy::Explicit(n), _) => {
                format!("{} (given as `{n}`; device tree: {model})", self.name())
            }
            (MatchedBy::Compatible(c), _) => format!("{} ({model}; compatible `{c}`)", self.name()),
            (MatchedBy::Model(m), _) => format!("{} ({model}; model contains `{m}`)", self.name()),
            (MatchedBy::Arch(a), _) => format!("{} (no device tree; {a} CPU)", self.name()),
            (MatchedBy::Unknown, _) => format!(
                "unknown board ({model}): no profile matches, generic thermal limits apply; \
                 pass --board NAME (see `beltbox board list`)"
            ),
        }
    }
}

/// Identifies the board under `/`, honouring `BELTBOX_BOARD` when it names a profile.
pub fn identify() -> Result<Identification, BoardError> {
    if let Some(b) = env_board() {
        if PROFILES.iter().any(|(n, _)| *n == b) || b.ends_with(".toml") {
            return explicit(&b, Path::new("/"));
        }
    }
    identify_under(Path::new("/"), std::env::consts::ARCH)
}

/// A profile the user named, with the device tree under `root` for the record.
pub fn explicit(name_or_path: &str, root: &Path) -> Result<Identification, BoardError> {
    Ok(Identification {
        model: dt_model(root),
        compatible: dt_compatible(root),
        matched_by: MatchedBy::Explicit(name_or_path.to_string()),
        profile: Some(profile(name_or_path)?),
    })
}

/// Matches the device tree under `root` against the bundled profiles. `arch` is the CPU
/// architecture to fall back on when there is no device tree (a parameter so tests can
/// pretend to be another machine).
pub fn identify_under(root: &Path, arch: &str) -> Result<Identification, BoardError> {
    let model = dt_model(root);
    let compatible = dt_compatible(root);
    let all = profiles()?;
    let (matched_by, profile) = match_profile(&all, model.as_deref(), &compatible, arch);
    Ok(Identification {
        model,
        compatible,
        matched_by,
        profile,
    })
}

/// Pure matching: `compatible` is the most reliable signal (vendors rename boards, not
/// SoCs), then model substrings, then the architecture when there is no device tree.
pub fn match_profile(
    all: &[BoardProfile],
    model: Option<&str>,
    compatible: &[String],
    arch: &str,
) -> (MatchedBy, Option<BoardProfile>) {
    for c in compatible {
        if let Some(p) = all
            .iter()
            .find(|p| p.detect.compatible.iter().any(|x| x == c))
        {
            return (MatchedBy::Compatible(c.clone()), Some(p.clone()));
        }
    }
    if let Some(m) = model {
        let lower = m.to_ascii_lowercase();
        for p in all {
            if let Some(hit) = p
                .detect
                .model
                .iter()
                .find(|s| lower.contains(&s.to_ascii_lowercase()))
            {
                return (MatchedBy::Model(hit.clone()), Some(p.clone()));
            }
        }
    }
    if model.is_none() && compatible.is_empty() {
        if let Some(p) = all
            .iter()
            .find(|p| p.detect.arch_fallback.as_deref() == Some(arch))
        {
            return (MatchedBy::Arch(arch.to_string()), Some(p.clone()));
        }
    }
    (MatchedBy::Unknown, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nul_terminated_model() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(super::detect_under(dir.path()), "unknown");
        let p = dir.path().join("sys/firmware/devicetree/base");
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("model"), b"Raspberry Pi 5 Model B Rev 1.0\0").unwrap();
        assert_eq!(
            super::detect_under(dir.path()),
            "Raspberry Pi 5 Model B Rev 1.0"
        );
    }

    #[test]
    fn every_bundled_profile_parses_and_is_named_after_its_file() {
        let all = profiles().unwrap();
        assert_eq!(all.len(), 6);
        for (p, (file_name, _)) in all.iter().zip(PROFILES) {
            assert_eq!(&p.name, file_name);
            assert!(p.ai_ram_mib() > 0);
        }
        for required in ["rpi4", "rpi5", "rk3588", "imx8mp", "qemu-virt", "x86-dev"] {
            assert!(names().contains(&required), "{required}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_thresholds_are_refused_with_the_field() {
        let good = PROFILES[0].1;
        let e = BoardProfile::from_toml(&format!("{good}\nfan = true\n"), "x.toml").unwrap_err();
        assert!(e.to_string().contains("fan"), "{e}");
        let swapped = good.replace("resume_c = 68.0", "resume_c = 79.0");
        let e = BoardProfile::from_toml(&swapped, "x.toml").unwrap_err();
        assert!(e.to_string().contains("resume_c < warn_c"), "{e}");
        let e = profile("rpi9").unwrap_err();
        assert!(e.to_string().contains("rpi4, rpi5"), "{e}");
    }

    /// One case per row: (model, compatible list, arch) -> expected profile.
    #[test]
    fn matching_table() {
        let all = profiles().unwrap();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        // (device-tree model, compatible list, CPU arch, expected profile)
        type Case<'a> = (Option<&'a str>, Vec<String>, &'a str, Option<&'a str>);
        let cases: &[Case] = &[
            (
                Some("Raspberry Pi 4 Model B Rev 1.4"),
                s(&["raspberrypi,4-model-b", "brcm,bcm2711"]),
                "aarch64",
                Some("rpi4"),
            ),
            (
                Some("Raspberry Pi 400 Rev 1.0"),
                vec![],
                "aarch64",
                Some("rpi4"),
            ),
            (
                Some("Raspberry Pi 5 Model B Rev 1.0"),
                s(&["raspberrypi,5-model-b", "brcm,bcm2712"]),
                "aarch64",
                Some("rpi5"),
            ),
            (
                Some("Radxa ROCK 5B"),
                s(&["radxa,rock-5b", "rockchip,rk3588"]),
                "aarch64",
                Some("rk3588"),
            ),
            (
                Some("Orange Pi 5"),
                s(&["xunlong,orangepi-5", "rockchip,rk3588s"]),
                "aarch64",
                Some("rk3588"),
            ),
            (
                Some("NXP i.MX8MPlus EVK board"),
                s(&["fsl,imx8mp-evk", "fsl,imx8mp"]),
                "aarch64",
                Some("imx8mp"),
            ),
            (
                Some("linux,dummy-virt"),
                s(&["linux,dummy-virt"]),
                "aarch64",
                Some("qemu-virt"),
            ),
            (None, vec![], "x86_64", Some("x86-dev")),
            // A device tree we don't know is *not* an x86 box, whatever the arch says.
            (
                Some("Pine64 RockPro64"),
                s(&["pine64,rockpro64", "rockchip,rk3399"]),
                "aarch64",
                None,
            ),
            (None, vec![], "aarch64", None),
        ];
        for (model, compat, arch, want) in cases {
            let (by, got) = match_profile(&all, *model, compat, arch);
            assert_eq!(
                got.as_ref().map(|p| p.name.as_str()),
                *want,
                "{model:?} {compat:?} -> {by:?}"
            );
        }
    }

    #[test]
    fn identifies_from_a_fake_device_tree() {
        let dir = tempfile::tempdir().unwrap();
        let dt = dir.path().join("proc/device-tree");
        std::fs::create_dir_all(&dt).unwrap();
        std::fs::write(dt.join("model"), b"Raspberry Pi 4 Model B Rev 1.5\0").unwrap();
        std::fs::write(
            dt.join("compatible"),
            b"raspberrypi,4-model-b\0brcm,bcm2711\0",
        )
        .unwrap();
        let id = identify_under(dir.path(), "aarch64").unwrap();
        assert_eq!(id.name(), "rpi4");
        assert_eq!(id.matched_by, MatchedBy::Compatible("brcm,bcm2711".into()));
        assert!(id.describe().contains("Rev 1.5"), "{}", id.describe());

        let empty = tempfile::tempdir().unwrap();
        let id = identify_under(empty.path(), "riscv64").unwrap();
        assert_eq!(id.name(), "unknown");
        assert!(id.describe().contains("--board"), "{}", id.describe());
    }
}
