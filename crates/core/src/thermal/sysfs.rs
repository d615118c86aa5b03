//! The sysfs adapter: thermal zones, cpufreq and vendor throttle flags under a root
//! directory (`/` on a device, a fake tree in tests and in the soak).
//!
//! Files read, all as the kernel formats them:
//! - `sys/class/thermal/thermal_zoneN/type`: zone name (`cpu-thermal`, `soc-thermal`, ...)
//! - `.../temp`: millidegrees Celsius, signed (`45250`, `-5000` in a cold store)
//! - `.../trip_point_K_temp` / `_type`: millidegrees / `active|passive|hot|critical`
//! - `sys/devices/system/cpu/cpuN/cpufreq/{scaling_cur_freq,scaling_max_freq,cpuinfo_max_freq}`: kHz
//! - the board's vendor flag, e.g. the Raspberry Pi firmware's `get_throttled` (`%x\n`)
//!
//! Why every failure is a warning and never an error: the monitor runs beside the
//! inference loop for a whole shift. A sensor that disappears (driver reload), returns
//! `EAGAIN`, or prints garbage must not take the service down; it must be reported once
//! (not every second into the journal) and the reading treated as absent.

use std::collections::HashSet;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::ThermalError;
use crate::board::{BoardProfile, VendorFlagKind, VendorFlagSpec};

/// Why a value in a sysfs file was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValueError {
    #[error("is empty")]
    Empty,
    #[error("`{0}` is not an integer")]
    NotAnInteger(String),
    #[error("{0} m°C is outside the plausible range -60 °C .. 200 °C")]
    Implausible(i64),
    #[error("`{0}` is not a frequency in kHz")]
    BadFrequency(String),
    #[error("`{0}` is not a hexadecimal throttle word")]
    BadHex(String),
}

/// Quotes at most 32 characters of a bad value, escaped: garbage (binary, a huge file)
/// must not flood the journal.
fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(32).flat_map(char::escape_debug).collect();
    if s.chars().count() > 32 {
        out.push('…');
    }
    out
}

/// Plausible die temperatures. Anything outside is a broken sensor or a driver's error
/// sentinel (some report -274000 or 0x7fffffff), not weather.
const MIN_MILLI_C: i64 = -60_000;
const MAX_MILLI_C: i64 = 200_000;

/// `temp` / `trip_point_N_temp`: signed millidegrees Celsius -> °C.
pub fn parse_millidegrees(s: &str) -> Result<f64, ValueError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(ValueError::Empty);
    }
    let v: i64 = t.parse().map_err(|_| ValueError::NotAnInteger(shown(t)))?;
    if !(MIN_MILLI_C..=MAX_MILLI_C).contains(&v) {
        return Err(ValueError::Implausible(v));
    }
    Ok(v as f64 / 1000.0)
}

/// cpufreq files: a positive integer in kHz.
pub fn parse_khz(s: &str) -> Result<u64, ValueError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(ValueError::Empty);
    }
    match t.parse::<u64>() {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(ValueError::BadFrequency(shown(t))),
    }
}

/// The Raspberry Pi firmware's throttle word: the driver prints `%x\n`; `vcgencmd` prints
/// `throttled=0x50005`. Both are accepted.
pub fn parse_throttle_word(s: &str) -> Result<u32, ValueError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(ValueError::Empty);
    }
    let hex = t.strip_prefix("throttled=").unwrap_or(t);
    let hex = hex
        .strip_prefix("0x")
        .or_else(|| hex.strip_prefix("0X"))
        .unwrap_or(hex);
    u32::from_str_radix(hex, 16).map_err(|_| ValueError::BadHex(shown(t)))
}

/// Bits of the Raspberry Pi throttle word (firmware mailbox tag 0x00030046).
const RPI_BITS: [(u32, &str); 4] = [
    (0, "under-voltage"),
    (1, "arm-frequency-capped"),
    (2, "throttled"),
    (3, "soft-temperature-limit"),
];

/// Conditions active now (bits 0-3).
pub fn rpi_active(word: u32) -> Vec<&'static str> {
    RPI_BITS
        .iter()
        .filter(|(b, _)| word & (1 << b) != 0)
        .map(|(_, n)| *n)
        .collect()
}

/// Conditions that occurred since boot (bits 16-19).
pub fn rpi_occurred(word: u32) -> Vec<&'static str> {
    RPI_BITS
        .iter()
        .filter(|(b, _)| word & (1 << (b + 16)) != 0)
        .map(|(_, n)| *n)
        .collect()
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TripPoint {
    pub index: u32,
    pub kind: String,
    pub temp_c: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ZoneReading {
    /// Directory name, `thermal_zoneN`.
    pub zone: String,
    #[serde(rename = "type")]
    pub zone_type: String,
    pub temp_c: Option<f64>,
    pub trips: Vec<TripPoint>,
    /// Counted for throttle detection (named in the board profile, or no profile).
    pub watched: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CpuFreqReading {
    pub cpu: u32,
    pub cur_khz: Option<u64>,
    /// `scaling_max_freq`: lowered by thermal cooling devices (and by users).
    pub max_khz: Option<u64>,
    /// `cpuinfo_max_freq`: the hardware maximum.
    pub hw_max_khz: Option<u64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VendorReading {
    pub kind: VendorFlagKind,
    pub path: String,
    pub raw: u32,
    pub active: Vec<&'static str>,
    pub occurred: Vec<&'static str>,
}

/// One reading of everything the monitor watches.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Snapshot {
    pub zones: Vec<ZoneReading>,
    pub cpus: Vec<CpuFreqReading>,
    pub vendor: Option<VendorReading>,
    /// Whole-machine CPU use (sysinfo, from the real /proc even under a fake root).
    pub cpu_load_pct: Option<f32>,
}

/// Reads the thermal state under a root; remembers which problems it already reported.
pub struct Monitor {
    root: PathBuf,
    watch: Vec<String>,
    expect_cpufreq: bool,
    vendor: Option<VendorFlagSpec>,
    warned: HashSet<String>,
    warnings: Vec<String>,
    cpu: Option<(sysinfo::System, Instant)>,
    cpu_load_enabled: bool,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("root", &self.root)
            .field("watch", &self.watch)
            .finish()
    }
}

impl Monitor {
    /// A monitor over `root` (which must be a directory), watching what `profile` names;
    /// without a profile every zone is watched and no vendor flag is read.
    pub fn new(root: &Path, profile: Option<&BoardProfile>) -> Result<Monitor, ThermalError> {
        if !root.is_dir() {
            return Err(ThermalError::Root(root.to_path_buf()));
        }
        Ok(Monitor {
            root: root.to_path_buf(),
            watch: profile.map(|p| p.thermal.watch.clone()).unwrap_or_default(),
            expect_cpufreq: profile.is_some_and(|p| !p.cpufreq.is_empty()),
            vendor: profile.and_then(|p| p.vendor_flag.clone()),
            warned: HashSet::new(),
            warnings: Vec::new(),
            cpu: None,
            cpu_load_enabled: true,
        })
    }

    /// Turns the CPU-load reading off (its first sample waits 200 ms for sysinfo; tests
    /// and harnesses that sample many fresh monitors do not need it).
    pub fn with_cpu_load(mut self, on: bool) -> Monitor {
        self.cpu_load_enabled = on;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every distinct problem seen so far (each was logged once, when first seen).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    fn warn(&mut self, key: String, message: String) {
        if self.warned.insert(key) {
            log::warn!("thermal: {message}");
            self.warnings.push(message);
        }
    }

    /// Reads a small sysfs file. Missing -> `None` silently when `quiet_missing`, any
    /// other failure (permissions, EIO, EAGAIN from a sensor not ready) -> warning once.
    fn read(&mut self, path: &Path, quiet_missing: bool) -> Option<String> {
        match std::fs::read(path) {
            // sysfs attributes are one page at most; anything longer is not ours.
            Ok(bytes) => {
                Some(String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]).into_owned())
            }
            Err(e) if e.kind() == ErrorKind::NotFound && quiet_missing => None,
            Err(e) => {
                self.warn(
                    format!("read:{}", path.display()),
                    format!("{}: cannot read: {e}", path.display()),
                );
                None
            }
        }
    }

    fn parse<T>(
        &mut self,
        path: &Path,
        quiet_missing: bool,
        f: fn(&str) -> Result<T, ValueError>,
    ) -> Option<T> {
        let text = self.read(path, quiet_missing)?;
        match f(&text) {
            Ok(v) => Some(v),
            Err(e) => {
                self.warn(
                    format!("parse:{}", path.display()),
                    format!("{}: value {e}; ignored", path.display()),
                );
                None
            }
        }
    }

    /// Reads everything once. Never fails: what cannot be read is absent (and warned).
    pub fn sample(&mut self) -> Snapshot {
        let zones = self.read_zones();
        let cpus = self.read_cpufreq();
        let vendor = self.read_vendor();
        let cpu_load_pct = if self.cpu_load_enabled {
            self.cpu_load()
        } else {
            None
        };
        Snapshot {
            zones,
            cpus,
            vendor,
            cpu_load_pct,
        }
    }

    fn read_zones(&mut self) -> Vec<ZoneReading> {
        let dir = self.root.join("sys/class/thermal");
        let mut zones = Vec::new();
        for (n, path) in numbered_entries(&dir, "thermal_zone") {
            let zone_type = self
                .read(&path.join("type"), false)
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| format!("thermal_zone{n}"));
            let temp_c = self.parse(&path.join("temp"), false, parse_millidegrees);
            let mut trips = Vec::new();
            for k in trip_indices(&path) {
                let temp = self.parse(
                    &path.join(format!("trip_point_{k}_temp")),
                    false,
                    parse_millidegrees,
                );
                let kind = self
                    .read(&path.join(format!("trip_point_{k}_type")), false)
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|| "unknown".into());
                if let Some(temp_c) = temp {
                    trips.push(TripPoint {
                        index: k,
                        kind,
                        temp_c,
                    });
                }
            }
            let watched = self.watch.is_empty() || self.watch.contains(&zone_type);
            zones.push(ZoneReading {
                zone: format!("thermal_zone{n}"),
                zone_type,
                temp_c,
                trips,
                watched,
            });
        }
        if zones.is_empty() {
            self.warn(
                "no-zones".into(),
                format!(
                    "no thermal zones under {}; temperature-based throttle detection is off",
                    dir.display()
                ),
            );
        } else if !self.watch.is_empty() && !zones.iter().any(|z| z.watched) {
            let present: Vec<&str> = zones.iter().map(|z| z.zone_type.as_str()).collect();
            self.warn(
                "no-watched-zone".into(),
                format!(
                    "none of the board's zones ({}) exist under {}; found {}",
                    self.watch.join(", "),
                    dir.display(),
                    present.join(", ")
                ),
            );
        }
        zones
    }

    fn read_cpufreq(&mut self) -> Vec<CpuFreqReading> {
        let dir = self.root.join("sys/devices/system/cpu");
        let mut cpus = Vec::new();
        // cpuN/cpufreq is a symlink to the shared policyN directory: read each policy
        // once (and warn about a broken file once, not once per CPU).
        let mut policies: Vec<(PathBuf, CpuFreqReading)> = Vec::new();
        for (n, path) in numbered_entries(&dir, "cpu") {
            let f = path.join("cpufreq");
            if !f.is_dir() {
                continue;
            }
            let canonical = std::fs::canonicalize(&f).unwrap_or_else(|_| f.clone());
            if let Some((_, r)) = policies.iter().find(|(p, _)| *p == canonical) {
                cpus.push(CpuFreqReading {
                    cpu: n,
                    ..r.clone()
                });
                continue;
            }
            let reading = CpuFreqReading {
                cpu: n,
                cur_khz: self.parse(&canonical.join("scaling_cur_freq"), false, parse_khz),
                max_khz: self.parse(&canonical.join("scaling_max_freq"), false, parse_khz),
                hw_max_khz: self.parse(&canonical.join("cpuinfo_max_freq"), false, parse_khz),
            };
            policies.push((canonical, reading.clone()));
            cpus.push(reading);
        }
        if cpus.is_empty() && self.expect_cpufreq {
            self.warn(
                "no-cpufreq".into(),
                format!(
                    "no cpufreq policies under {}; frequency capping cannot be seen",
                    dir.display()
                ),
            );
        }
        cpus
    }

    fn read_vendor(&mut self) -> Option<VendorReading> {
        let spec = self.vendor.clone()?;
        for rel in &spec.paths {
            let path = self.root.join(rel);
            if !path.exists() {
                continue;
            }
            let raw = match spec.kind {
                VendorFlagKind::RpiGetThrottled => self.parse(&path, false, parse_throttle_word)?,
            };
            return Some(VendorReading {
                kind: spec.kind,
                path: path.display().to_string(),
                raw,
                active: rpi_active(raw),
                occurred: rpi_occurred(raw),
            });
        }
        self.warn(
            "no-vendor-flag".into(),
            format!(
                "vendor throttle flag not found (looked for {} under {}); firmware throttling is seen only \
                 through temperature and clock",
                spec.paths.join(", "),
                self.root.display()
            ),
        );
        None
    }

    /// Machine-wide CPU use. sysinfo needs two refreshes at least 200 ms apart; the
    /// first call pays that wait once, later calls use the previous refresh.
    fn cpu_load(&mut self) -> Option<f32> {
        let (sys, last) = self.cpu.get_or_insert_with(|| {
            let mut s = sysinfo::System::new_with_specifics(
                sysinfo::RefreshKind::nothing()
                    .with_cpu(sysinfo::CpuRefreshKind::nothing().with_cpu_usage()),
            );
            std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
            s.refresh_cpu_usage();
            (s, Instant::now())
        });
        if last.elapsed() >= sysinfo::MINIMUM_CPU_UPDATE_INTERVAL {
            sys.refresh_cpu_usage();
            *last = Instant::now();
        }
        let v = sys.global_cpu_usage();
        v.is_finite().then_some(v)
    }
}

/// Entries `PREFIXn` of a directory, sorted by n (thermal_zone10 after thermal_zone9).
/// Follows symlinks, as /sys/class/thermal entries are links into /sys/devices.
fn numbered_entries(dir: &Path, prefix: &str) -> Vec<(u32, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<(u32, PathBuf)> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let n: u32 = name.to_str()?.strip_prefix(prefix)?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    v.sort_by_key(|(n, _)| *n);
    v
}

/// Indices K of `trip_point_K_temp` files in a zone directory, sorted.
fn trip_indices(zone: &Path) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir(zone) else {
        return Vec::new();
    };
    let mut v: Vec<u32> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            name.to_str()?
                .strip_prefix("trip_point_")?
                .strip_suffix("_temp")?
                .parse()
                .ok()
        })
        .collect();
    v.sort_unstable();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millidegree_table() {
        let ok: &[(&str, f64)] = &[
            ("45250\n", 45.25),
            ("0", 0.0),
            ("-5000\n", -5.0),
            ("  110000  ", 110.0),
            ("199999", 199.999),
        ];
        for (s, want) in ok {
            assert_eq!(parse_millidegrees(s), Ok(*want), "{s:?}");
        }
        let bad: &[(&str, ValueError)] = &[
            ("", ValueError::Empty),
            ("\n", ValueError::Empty),
            ("45.2", ValueError::NotAnInteger("45.2".into())),
            ("hot", ValueError::NotAnInteger("hot".into())),
            ("-274000", ValueError::Implausible(-274_000)),
            ("2147483647", ValueError::Implausible(2_147_483_647)),
            (
                "99999999999999999999999",
                ValueError::NotAnInteger("99999999999999999999999".into()),
            ),
        ];
        for (s, want) in bad {
            assert_eq!(parse_millidegrees(s).as_ref(), Err(want), "{s:?}");
        }
        // Garbage is quoted short and escaped.
        let e = parse_millidegrees(&"\u{1}x".repeat(100))
            .unwrap_err()
            .to_string();
        assert!(
            e.len() < 200 && e.contains("\\u{1}") && e.contains('…'),
            "{e}"
        );
    }

    #[test]
    fn khz_and_throttle_word_tables() {
        assert_eq!(parse_khz("1800000\n"), Ok(1_800_000));
        assert!(parse_khz("0").is_err());
        assert!(parse_khz("-1").is_err());
        assert!(parse_khz("<unknown>").is_err());
        for (s, want) in [
            ("0\n", 0),
            ("50005\n", 0x50005),
            ("0x80008", 0x80008),
            ("throttled=0xe0008", 0xe0008),
        ] {
            assert_eq!(parse_throttle_word(s), Ok(want), "{s:?}");
        }
        assert!(parse_throttle_word("zz").is_err());
        assert!(parse_throttle_word("1ffffffff").is_err());
        assert_eq!(rpi_active(0x50005), vec!["under-voltage", "throttled"]);
        assert_eq!(rpi_occurred(0x50005), vec!["under-voltage", "throttled"]);
        assert_eq!(rpi_active(0xe0000), Vec::<&str>::new());
        assert_eq!(
            rpi_occurred(0xe0000),
            vec![
                "arm-frequency-capped",
                "throttled",
                "soft-temperature-limit"
            ]
        );
    }

    #[test]
    fn a_root_that_is_not_a_directory_is_refused() {
        let e = Monitor::new(Path::new("/nonexistent/beltbox-sysfs"), None).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/beltbox-sysfs"), "{e}");
    }
}
