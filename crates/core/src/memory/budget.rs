//! RAM budgets: parsing sizes, and choosing the strictest of several sources.
//!
//! Pure code: [`applicable`] lists the candidates (operator, manifests, board profile) for
//! both the service and `beltbox plan`; [`strictest`] picks the one that binds.

use serde::Serialize;

use super::MemoryError;

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;
pub const GIB: u64 = 1024 * MIB;

/// Where a budget came from (the output says which one bound).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BudgetSource {
    /// `--budget SIZE` on the command line.
    Flag { text: String },
    /// `memory.budget` in the service config.
    Config { text: String },
    /// `budgets.ram_mib` of the model manifest.
    Manifest { model: String },
    /// The AI share of a board profile's RAM.
    Board { board: String },
}

impl std::fmt::Display for BudgetSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BudgetSource::Flag { text } => write!(f, "--budget {text}"),
            BudgetSource::Config { text } => write!(f, "config memory.budget {text}"),
            BudgetSource::Manifest { model } => write!(f, "manifest budgets.ram_mib of {model}"),
            BudgetSource::Board { board } => write!(f, "board {board} AI RAM share"),
        }
    }
}

/// A RAM budget in bytes and its origin. The service's admission control takes one of
/// these (the strictest of what applies) and compares plans against it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Budget {
    pub bytes: u64,
    pub source: BudgetSource,
}

impl Budget {
    pub fn new(bytes: u64, source: BudgetSource) -> Budget {
        Budget { bytes, source }
    }

    pub fn from_mib(mib: u64, source: BudgetSource) -> Budget {
        Budget::new(mib.saturating_mul(MIB), source)
    }
}

/// Every budget that applies, in the order ties are credited: the operator's own
/// (`--budget` or the service config), then each model's manifest `budgets.ram_mib`, then
/// the board profile's AI share of its RAM.
pub fn applicable(
    operator: Option<Budget>,
    manifests: &[&crate::manifest::Manifest],
    board: Option<&crate::board::BoardProfile>,
) -> Vec<Budget> {
    let mut out: Vec<Budget> = operator.into_iter().collect();
    out.extend(manifests.iter().map(|m| {
        Budget::from_mib(
            m.budgets.ram_mib,
            BudgetSource::Manifest {
                model: m.name.clone(),
            },
        )
    }));
    out.extend(board.map(|p| {
        Budget::from_mib(
            p.ai_ram_mib(),
            BudgetSource::Board {
                board: p.name.clone(),
            },
        )
    }));
    out
}

/// The strictest (smallest) budget wins; ties keep the earliest candidate, so callers
/// list sources in the order they want credited (flag, manifest, board). `None` when no
/// budget applies.
pub fn strictest(candidates: &[Budget]) -> Option<&Budget> {
    candidates
        .iter()
        .reduce(|best, b| if b.bytes < best.bytes { b } else { best })
}

/// Parses a human size: plain bytes (`1048576`), decimal-or-binary units
/// (`300M` = 300 MiB: on a device, "M" means MiB in every tool a technician uses — free,
/// top, systemd's `MemoryMax=`), `KiB`/`MiB`/`GiB`/`TiB` and `K`/`M`/`G`/`T`, optionally
/// with a `B` suffix (`512MB`), case-insensitive, with a fraction (`1.5GiB`). Zero,
/// negative, empty and unknown units are errors naming the value.
pub fn parse_size(text: &str) -> Result<u64, MemoryError> {
    let bad = |why: &str| MemoryError::Size {
        value: text.to_string(),
        problem: why.to_string(),
    };
    let s = text.trim();
    if s.is_empty() {
        return Err(bad("is empty"));
    }
    if s.starts_with('-') {
        return Err(bad("is negative"));
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let unit = unit.trim();
    if num.is_empty() {
        return Err(bad("does not start with a number"));
    }
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => KIB,
        "m" | "mb" | "mib" => MIB,
        "g" | "gb" | "gib" => GIB,
        "t" | "tb" | "tib" => 1024 * GIB,
        _ => {
            return Err(bad(&format!(
                "has unknown unit `{unit}` (use B, KiB, MiB, GiB, TiB or K, M, G, T)"
            )))
        }
    };
    let value: f64 = num
        .parse()
        .map_err(|_| bad(&format!("`{num}` is not a number")))?;
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(bad("is too large"));
    }
    // Fractions of a byte round down; "0.1B" is then zero and refused below.
    let bytes = bytes.floor() as u64;
    if bytes == 0 {
        return Err(bad("must be more than zero bytes"));
    }
    Ok(bytes)
}

/// Bytes as a short human size for reports (`12.3 MiB`).
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if bytes >= GIB {
        format!("{:.2} GiB", b / GIB as f64)
    } else if bytes >= MIB {
        format!("{:.1} MiB", b / MIB as f64)
    } else if bytes >= KIB {
        format!("{:.1} KiB", b / KIB as f64)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_table() {
        let ok: &[(&str, u64)] = &[
            ("512MiB", 512 * MIB),
            ("1.5GiB", 3 * GIB / 2),
            ("300M", 300 * MIB),
            ("300MB", 300 * MIB),
            ("300mb", 300 * MIB),
            ("1048576", 1048576),
            ("64 KiB", 64 * KIB),
            ("2G", 2 * GIB),
            ("7B", 7),
            (" 1k ", 1024),
            ("0.5K", 512),
        ];
        for (text, want) in ok {
            assert_eq!(parse_size(text).ok(), Some(*want), "{text}");
        }
        let bad: &[(&str, &str)] = &[
            ("12XB", "unknown unit `XB`"),
            ("-5MiB", "negative"),
            ("0", "more than zero"),
            ("0MiB", "more than zero"),
            ("0.1B", "more than zero"),
            ("", "empty"),
            ("   ", "empty"),
            ("MiB", "does not start with a number"),
            ("1.2.3M", "not a number"),
            ("99999999999T", "too large"),
        ];
        for (text, why) in bad {
            let e = parse_size(text).expect_err(text).to_string();
            assert!(e.contains(why), "{text}: {e}");
            assert!(e.contains(&format!("`{text}`")), "names the value: {e}");
        }
    }

    #[test]
    fn strictest_wins_table() {
        let flag = |b| {
            Budget::new(
                b,
                BudgetSource::Flag {
                    text: b.to_string(),
                },
            )
        };
        let man = |b| Budget::new(b, BudgetSource::Manifest { model: "m".into() });
        let board = |b| {
            Budget::new(
                b,
                BudgetSource::Board {
                    board: "rpi4".into(),
                },
            )
        };
        let cases: Vec<(&str, Vec<Budget>, Option<Budget>)> = vec![
            ("none", vec![], None),
            ("only manifest", vec![man(64)], Some(man(64))),
            (
                "flag stricter",
                vec![flag(10), man(64), board(2048)],
                Some(flag(10)),
            ),
            (
                "manifest stricter",
                vec![flag(100), man(64), board(2048)],
                Some(man(64)),
            ),
            (
                "board stricter",
                vec![man(4096), board(2048)],
                Some(board(2048)),
            ),
            (
                "tie credits the first",
                vec![flag(64), man(64)],
                Some(flag(64)),
            ),
        ];
        for (name, c, want) in cases {
            assert_eq!(strictest(&c).cloned(), want, "{name}");
        }
    }

    proptest::proptest! {
        #[test]
        fn parse_size_never_panics(s in ".{0,24}") {
            let _ = parse_size(&s);
        }

        #[test]
        fn parse_size_round_trips_units(n in 1u64..1_000_000, unit in 0usize..4) {
            let (suffix, mult) = [("", 1), ("KiB", KIB), ("MiB", MIB), ("G", GIB)][unit];
            proptest::prop_assert_eq!(parse_size(&format!("{n}{suffix}")).ok(), Some(n * mult));
        }
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 * MIB / 2), "1.5 MiB");
        assert_eq!(human(3 * GIB), "3.00 GiB");
    }
}
