//! Time for expiry checks on boxes whose clock cannot be trusted.
//!
//! Many boxes have no RTC: they boot at 1970 and stay there until NTP answers, which on
//! an offline belt may be never. TUF metadata expires so that a frozen channel (an
//! attacker replaying old, validly signed metadata) stops being accepted; checked against
//! a 1970 clock it never expires, checked against nothing every update would be refused.
//!
//! beltbox checks expiry against **the later of the system clock and a time floor**. The
//! floor is a persisted lower bound on the real time that only ever rises: every verified
//! channel raises it to the newest publication time its targets metadata carries (the
//! publisher writes `published` into each target's signed custom metadata, so the floor is
//! evidence signed by the targets key, not a guess). A box at 1970 that once saw a channel
//! published on 2026-11-30 refuses metadata that expired before that date, forever; a box
//! whose clock is right is not held back by the floor. The system clock never raises the
//! floor: a clock wrong in the future would otherwise expire every channel for good.
//!
//! A technician can override expiry explicitly (`--allow-expired`); the override is
//! logged and recorded in the model's history.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::durable::{self, DurableError};

#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    #[error(transparent)]
    Io(#[from] DurableError),
    #[error("time floor {}: {problem}", path.display())]
    Corrupt { path: PathBuf, problem: String },
}

/// Where the effective time came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeSource {
    SystemClock,
    /// The floor was later than the system clock (no RTC, no NTP yet).
    Floor,
}

/// The time expiry is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Now {
    pub unix_s: i64,
    pub source: TimeSource,
}

/// The later of the two.
pub fn effective(system_unix_s: i64, floor_unix_s: i64) -> Now {
    if floor_unix_s > system_unix_s {
        Now {
            unix_s: floor_unix_s,
            source: TimeSource::Floor,
        }
    } else {
        Now {
            unix_s: system_unix_s,
            source: TimeSource::SystemClock,
        }
    }
}

pub fn system_unix_s() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        // Before 1970: the floor carries the check.
        Err(_) => 0,
    }
}

pub fn system_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FloorFile {
    unix_s: i64,
    /// What raised it last (for the technician reading the file).
    from: String,
}

/// The persisted floor (`state_dir/ota/time-floor.json`).
#[derive(Debug, Clone)]
pub struct Floor {
    path: PathBuf,
}

impl Floor {
    pub fn at(path: &Path) -> Floor {
        Floor {
            path: path.to_path_buf(),
        }
    }

    /// 0 on a fresh box. A floor file a power cut damaged reads as the floor before its
    /// last rise ([`durable::read_kept`]).
    pub fn read(&self) -> Result<i64, ClockError> {
        let one = |path: &Path| -> Result<Option<i64>, ClockError> {
            let bytes = match fs::read(path) {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(durable::at("read", path)(e).into()),
            };
            let f: FloorFile = serde_json::from_slice(&bytes).map_err(|e| ClockError::Corrupt {
                path: path.to_path_buf(),
                problem: e.to_string(),
            })?;
            Ok(Some(f.unix_s))
        };
        Ok(durable::read_kept(&self.path, one)?.unwrap_or(0))
    }

    /// Raises the floor to `unix_s` if that is later; never lowers it. Returns the floor.
    pub fn raise(&self, unix_s: i64, from: &str) -> Result<i64, ClockError> {
        let cur = self.read()?;
        if unix_s <= cur {
            return Ok(cur);
        }
        let f = FloorFile {
            unix_s,
            from: from.to_string(),
        };
        let bytes = serde_json::to_vec_pretty(&f).map_err(|e| ClockError::Corrupt {
            path: self.path.clone(),
            problem: e.to_string(),
        })?;
        let valid = |b: &[u8]| serde_json::from_slice::<FloorFile>(b).is_ok();
        let fresh = serde_json::to_vec_pretty(&FloorFile {
            unix_s: 0,
            from: "a fresh box".into(),
        })
        .unwrap_or_default();
        durable::write_kept(&self.path, &bytes, valid, &fresh)?;
        Ok(unix_s)
    }

    /// The time to check expiry against now.
    pub fn now(&self) -> Result<Now, ClockError> {
        Ok(effective(system_unix_s(), self.read()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_later_of_clock_and_floor_wins() {
        assert_eq!(effective(10, 20).unix_s, 20);
        assert_eq!(effective(10, 20).source, TimeSource::Floor);
        assert_eq!(effective(30, 20).source, TimeSource::SystemClock);
    }

    #[test]
    fn floor_only_rises_and_survives_reopen() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("time-floor.json");
        let f = Floor::at(&p);
        assert_eq!(f.read().unwrap(), 0);
        assert_eq!(f.raise(1_800_000_000, "a").unwrap(), 1_800_000_000);
        assert_eq!(f.raise(1_700_000_000, "b").unwrap(), 1_800_000_000);
        assert_eq!(Floor::at(&p).read().unwrap(), 1_800_000_000);
        // Cut by a power cut: the floor before its last rise.
        fs::write(&p, b"{\"unix_s\":").unwrap();
        assert_eq!(f.read().unwrap(), 0);
        assert_eq!(f.raise(1_900_000_000, "c").unwrap(), 1_900_000_000);
        assert_eq!(f.raise(2_000_000_000, "d").unwrap(), 2_000_000_000);
        fs::write(&p, b"").unwrap();
        assert_eq!(f.read().unwrap(), 1_900_000_000);
        fs::write(durable::backup_of(&p), b"{").unwrap();
        assert!(matches!(f.read(), Err(ClockError::Corrupt { .. })));
    }
}
