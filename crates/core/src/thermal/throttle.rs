//! Throttle detection: pure code from a [`Snapshot`] and the board's limits to "is the
//! platform throttling, and why".
//!
//! Three independent signals, any one is enough:
//! 1. **cpufreq capped**: `scaling_max_freq < cpuinfo_max_freq` on some CPU. Kernel
//!    thermal cooling devices (RK3588, i.MX 8M Plus, x86) lower the policy's max through
//!    frequency QoS; `scaling_cur_freq` below max is just an idle governor, not a cap.
//! 2. **temperature**: the hottest *watched* zone at or above the throttle point. The
//!    board profile knows the real point (on a Raspberry Pi it is the firmware's 80/85 °C,
//!    not any sysfs trip); for an unknown board the lowest passive trip is used.
//! 3. **vendor flag**: the Raspberry Pi firmware's `get_throttled` bits 0-3 (under-voltage,
//!    ARM clock capped, throttled, soft temperature limit) — firmware throttling is
//!    invisible to cpufreq on those boards.

use serde::Serialize;

use super::sysfs::Snapshot;
use crate::board::BoardProfile;

/// Used when there is neither a profile nor a passive trip: typical SoC soft limits.
pub const DEFAULT_THROTTLE_C: f64 = 85.0;
pub const DEFAULT_WARN_C: f64 = 80.0;
pub const DEFAULT_RESUME_C: f64 = 72.0;

/// The temperatures that matter, and where they came from.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Limits {
    pub throttle_c: f64,
    pub warn_c: f64,
    pub resume_c: f64,
    /// `profile rpi4`, `passive trip of soc-thermal`, or `default`.
    pub source: String,
}

/// The board profile's limits; without one, the lowest passive trip of any zone (minus
/// the default margins), else the defaults.
pub fn limits(profile: Option<&BoardProfile>, snap: &Snapshot) -> Limits {
    if let Some(p) = profile {
        return Limits {
            throttle_c: p.thermal.throttle_c,
            warn_c: p.thermal.warn_c,
            resume_c: p.thermal.resume_c,
            source: format!("profile {}", p.name),
        };
    }
    let passive = snap
        .zones
        .iter()
        .flat_map(|z| z.trips.iter().map(move |t| (z, t)))
        .filter(|(_, t)| t.kind == "passive")
        .min_by(|a, b| a.1.temp_c.total_cmp(&b.1.temp_c));
    match passive {
        Some((z, t)) => Limits {
            throttle_c: t.temp_c,
            warn_c: t.temp_c - (DEFAULT_THROTTLE_C - DEFAULT_WARN_C),
            resume_c: t.temp_c - (DEFAULT_THROTTLE_C - DEFAULT_RESUME_C),
            source: format!("passive trip of {}", z.zone_type),
        },
        None => Limits {
            throttle_c: DEFAULT_THROTTLE_C,
            warn_c: DEFAULT_WARN_C,
            resume_c: DEFAULT_RESUME_C,
            source: "default".into(),
        },
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ThrottleReason {
    /// cpufreq max lowered below the hardware max on these CPUs.
    FreqCapped {
        cpus: Vec<u32>,
        max_khz: u64,
        hw_max_khz: u64,
    },
    /// A watched zone at or above the throttle point.
    AtLimit {
        zone: String,
        temp_c: f64,
        limit_c: f64,
    },
    /// The vendor flag reports active conditions.
    Vendor { raw: u32, active: Vec<&'static str> },
}

impl std::fmt::Display for ThrottleReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ThrottleReason::FreqCapped {
                cpus,
                max_khz,
                hw_max_khz,
            } => write!(
                f,
                "cpu {} capped at {} MHz of {} MHz",
                cpu_list(cpus),
                max_khz / 1000,
                hw_max_khz / 1000
            ),
            ThrottleReason::AtLimit {
                zone,
                temp_c,
                limit_c,
            } => {
                write!(
                    f,
                    "{zone} at {temp_c:.1} °C (throttle point {limit_c:.1} °C)"
                )
            }
            ThrottleReason::Vendor { raw, active } => {
                write!(f, "firmware flags 0x{raw:x}: {}", active.join(", "))
            }
        }
    }
}

/// `0-3`, `4,5`, `0-3,6`: CPU lists the way the kernel prints them.
pub fn cpu_list(cpus: &[u32]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            i += 1;
            end = cpus[i];
        }
        parts.push(if end > start + 1 {
            format!("{start}-{end}")
        } else if end == start + 1 {
            format!("{start},{end}")
        } else {
            start.to_string()
        });
        i += 1;
    }
    parts.join(",")
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HotZone {
    pub zone: String,
    pub temp_c: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ThrottleStatus {
    pub throttled: bool,
    pub reasons: Vec<ThrottleReason>,
    /// Hottest watched zone with a readable temperature.
    pub hottest: Option<HotZone>,
    pub limits: Limits,
    /// `throttle_c - hottest`; negative when past the point.
    pub headroom_c: Option<f64>,
    /// Which signals could be read at all: `temperature`, `cpufreq`, `vendor`. An empty
    /// list means "not throttled" is a guess (QEMU, containers).
    pub evidence: Vec<&'static str>,
}

pub fn assess(snap: &Snapshot, limits: &Limits) -> ThrottleStatus {
    let mut reasons = Vec::new();
    let mut evidence = Vec::new();

    // 1. cpufreq caps, grouped by (max, hw max) so a 4-core policy is one reason.
    let mut capped: Vec<(u64, u64, Vec<u32>)> = Vec::new();
    let mut any_freq = false;
    for c in &snap.cpus {
        if let (Some(max), Some(hw)) = (c.max_khz, c.hw_max_khz) {
            any_freq = true;
            if max < hw {
                match capped.iter_mut().find(|(m, h, _)| *m == max && *h == hw) {
                    Some(g) => g.2.push(c.cpu),
                    None => capped.push((max, hw, vec![c.cpu])),
                }
            }
        }
    }
    if any_freq {
        evidence.push("cpufreq");
    }
    for (max_khz, hw_max_khz, cpus) in capped {
        reasons.push(ThrottleReason::FreqCapped {
            cpus,
            max_khz,
            hw_max_khz,
        });
    }

    // 2. Temperature of the hottest watched zone.
    let hottest = snap
        .zones
        .iter()
        .filter(|z| z.watched)
        .filter_map(|z| z.temp_c.map(|t| (z, t)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(z, t)| HotZone {
            zone: z.zone_type.clone(),
            temp_c: t,
        });
    if let Some(h) = &hottest {
        evidence.push("temperature");
        if h.temp_c >= limits.throttle_c {
            reasons.push(ThrottleReason::AtLimit {
                zone: h.zone.clone(),
                temp_c: h.temp_c,
                limit_c: limits.throttle_c,
            });
        }
    }

    // 3. Vendor flag.
    if let Some(v) = &snap.vendor {
        evidence.push("vendor");
        if !v.active.is_empty() {
            reasons.push(ThrottleReason::Vendor {
                raw: v.raw,
                active: v.active.clone(),
            });
        }
    }

    ThrottleStatus {
        throttled: !reasons.is_empty(),
        reasons,
        headroom_c: hottest.as_ref().map(|h| limits.throttle_c - h.temp_c),
        hottest,
        limits: limits.clone(),
        evidence,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::thermal::sysfs::{CpuFreqReading, TripPoint, VendorReading, ZoneReading};

    fn zone(t: &str, temp: Option<f64>, watched: bool, trips: &[(f64, &str)]) -> ZoneReading {
        ZoneReading {
            zone: "thermal_zone0".into(),
            zone_type: t.into(),
            temp_c: temp,
            trips: trips
                .iter()
                .enumerate()
                .map(|(i, (c, k))| TripPoint {
                    index: i as u32,
                    kind: k.to_string(),
                    temp_c: *c,
                })
                .collect(),
            watched,
        }
    }

    fn cpu(n: u32, max: u64, hw: u64) -> CpuFreqReading {
        CpuFreqReading {
            cpu: n,
            cur_khz: Some(max),
            max_khz: Some(max),
            hw_max_khz: Some(hw),
        }
    }

    fn lim(t: f64) -> Limits {
        Limits {
            throttle_c: t,
            warn_c: t - 5.0,
            resume_c: t - 12.0,
            source: "test".into(),
        }
    }

    #[test]
    fn detection_table() {
        let rpi_flag = |raw: u32| VendorReading {
            kind: crate::board::VendorFlagKind::RpiGetThrottled,
            path: "get_throttled".into(),
            raw,
            active: crate::thermal::sysfs::rpi_active(raw),
            occurred: crate::thermal::sysfs::rpi_occurred(raw),
        };
        // (name, snapshot, expected throttled, expected reason kinds)
        let cases: Vec<(&str, Snapshot, bool, Vec<&str>)> = vec![
            ("nothing readable", Snapshot::default(), false, vec![]),
            (
                "cool, uncapped",
                Snapshot {
                    zones: vec![zone("cpu-thermal", Some(55.0), true, &[])],
                    cpus: (0..4).map(|n| cpu(n, 1_800_000, 1_800_000)).collect(),
                    ..Snapshot::default()
                },
                false,
                vec![],
            ),
            (
                "exactly at the limit counts",
                Snapshot {
                    zones: vec![zone("cpu-thermal", Some(80.0), true, &[])],
                    ..Snapshot::default()
                },
                true,
                vec!["at-limit"],
            ),
            (
                "an unwatched hot zone does not count",
                Snapshot {
                    zones: vec![
                        zone("gpu-thermal", Some(99.0), false, &[]),
                        zone("soc-thermal", Some(60.0), true, &[]),
                    ],
                    ..Snapshot::default()
                },
                false,
                vec![],
            ),
            (
                "policy capped by a cooling device",
                Snapshot {
                    cpus: vec![
                        cpu(4, 1_608_000, 2_400_000),
                        cpu(5, 1_608_000, 2_400_000),
                        cpu(0, 1_800_000, 1_800_000),
                    ],
                    ..Snapshot::default()
                },
                true,
                vec!["freq-capped"],
            ),
            (
                "history bits alone are not throttling now",
                Snapshot {
                    vendor: Some(rpi_flag(0xe0000)),
                    ..Snapshot::default()
                },
                false,
                vec![],
            ),
            (
                "firmware soft limit",
                Snapshot {
                    vendor: Some(rpi_flag(0x80008)),
                    ..Snapshot::default()
                },
                true,
                vec!["vendor"],
            ),
        ];
        for (name, snap, want, kinds) in cases {
            let s = assess(&snap, &lim(80.0));
            assert_eq!(s.throttled, want, "{name}: {s:?}");
            let got: Vec<String> = s
                .reasons
                .iter()
                .map(|r| {
                    serde_json::to_value(r).unwrap()["kind"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect();
            assert_eq!(got, kinds, "{name}");
        }
    }

    #[test]
    fn capped_cpus_are_grouped_per_policy() {
        let snap = Snapshot {
            cpus: vec![cpu(4, 1_608_000, 2_400_000), cpu(5, 1_608_000, 2_400_000)],
            ..Snapshot::default()
        };
        let s = assess(&snap, &lim(85.0));
        assert_eq!(s.reasons.len(), 1);
        assert_eq!(
            s.reasons[0].to_string(),
            "cpu 4,5 capped at 1608 MHz of 2400 MHz"
        );
        assert_eq!(s.evidence, vec!["cpufreq"]);
    }

    #[test]
    fn limits_come_from_profile_then_passive_trip_then_default() {
        let rpi4 = crate::board::profile("rpi4").unwrap();
        let snap = Snapshot {
            zones: vec![zone(
                "soc-thermal",
                Some(40.0),
                true,
                &[(115.0, "critical"), (85.0, "passive"), (75.0, "passive")],
            )],
            ..Snapshot::default()
        };
        assert_eq!(limits(Some(&rpi4), &snap).throttle_c, 80.0);
        let l = limits(None, &snap);
        assert_eq!((l.throttle_c, l.warn_c, l.resume_c), (75.0, 70.0, 62.0));
        assert_eq!(l.source, "passive trip of soc-thermal");
        let crit_only = Snapshot {
            zones: vec![zone(
                "cpu-thermal",
                Some(40.0),
                true,
                &[(110.0, "critical")],
            )],
            ..Snapshot::default()
        };
        assert_eq!(limits(None, &crit_only).source, "default");
    }

    #[test]
    fn cpu_lists_print_like_the_kernel() {
        assert_eq!(cpu_list(&[0, 1, 2, 3]), "0-3");
        assert_eq!(cpu_list(&[4, 5]), "4,5");
        assert_eq!(cpu_list(&[0, 1, 2, 3, 6]), "0-3,6");
        assert_eq!(cpu_list(&[]), "");
    }
}
