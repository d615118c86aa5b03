//! `beltbox board list|show`, `beltbox thermal`, `beltbox soak`: argument structs and the
//! subcommand bodies. Output formatting lives here; policy lives in `beltbox_core::thermal`.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde::Serialize;

use beltbox_core::board::{self, BoardProfile, Identification, MatchedBy};
use beltbox_core::thermal::governor::Level;
use beltbox_core::thermal::status::{self, Published};
use beltbox_core::thermal::sysfs::{CpuFreqReading, Snapshot};
use beltbox_core::thermal::throttle::{self, cpu_list, Limits, ThrottleStatus};
use beltbox_core::thermal::{Monitor, ThermalError};
use beltbox_tools::soak::{self, Mode, Scenario, SoakConfig, SoakError, SoakReport};

use super::{emit, resolve_model, to_json, CliError};

#[derive(Subcommand)]
pub enum BoardAction {
    /// List the bundled board profiles; `*` marks the board this machine is detected as.
    List {
        /// Detect the board from this root instead of / (a fake tree, a mounted image).
        #[arg(long, value_name = "DIR", default_value = "/")]
        sysfs_root: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show one profile: NAME (or a profile file ending in .toml), else the detected board.
    Show {
        /// Profile name (see `board list`) or path to a profile .toml.
        name: Option<String>,
        /// Detect the board from this root instead of / (when NAME is not given).
        #[arg(long, value_name = "DIR", default_value = "/")]
        sysfs_root: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct ThermalArgs {
    /// Read sysfs (and the device tree) under DIR instead of / — a fake tree in tests,
    /// a soak's tree, a board's root mounted elsewhere.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub sysfs_root: PathBuf,
    /// Board profile name or .toml file (default: detected from the device tree).
    #[arg(long, value_name = "NAME")]
    pub board: Option<String>,
    /// Status file of a running service or soak (default: DIR/run/beltbox/thermal.json
    /// with --sysfs-root, else $BELTBOX_RUNTIME_DIR or /run/beltbox/thermal.json).
    #[arg(long, value_name = "FILE")]
    pub status: Option<PathBuf>,
    /// Machine-readable output (`throttled` is a boolean at the top level).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct SoakArgs {
    /// Primary model package.
    #[arg(long, value_name = "PKG", default_value = "mobilenetv2-bench-int8-qdq")]
    pub model: String,
    /// Lighter fallback model package (same inputs, results flagged).
    #[arg(long, value_name = "PKG", default_value = "mobilenetv2-bench-fp32")]
    pub fallback: String,
    /// Run without a fallback model (the governor stops at pacing).
    #[arg(long, conflicts_with = "fallback")]
    pub no_fallback: bool,
    /// Only the governed run.
    #[arg(long, conflicts_with = "ungoverned")]
    pub governed: bool,
    /// Only the ungoverned run.
    #[arg(long)]
    pub ungoverned: bool,
    /// Long mode, for the record: 12 min per run, 30 s / 10 min windows.
    #[arg(long)]
    pub long: bool,
    /// Run length (e.g. 90s, 15m); keeps the short or long mode's time scales.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<f64>,
    /// Board whose sysfs layout, throttle point and flags the fake platform imitates.
    #[arg(long, value_name = "NAME", default_value = "rpi4")]
    pub board: String,
    /// Intra-op threads at full speed (default: the board's, at most this machine's cores).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: Option<u16>,
    /// Belt rate in frames/s (default: calibrated to keep a cold box half busy).
    #[arg(long, value_name = "FPS")]
    pub fps: Option<f64>,
    /// How much slower the runtime gets while throttled (CPU burners).
    #[arg(long, value_name = "X", default_value_t = 3.0)]
    pub slowdown: f64,
    /// Where to build the fake sysfs tree, kept afterwards for `beltbox thermal
    /// --sysfs-root DIR` (default: a fresh directory under $TMPDIR, removed at the end).
    #[arg(long, value_name = "DIR")]
    pub sysfs_root: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `60`, `60s`, `10m`, `1.5h` -> seconds.
fn parse_duration(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (num, scale) = match t.char_indices().last() {
        Some((i, 's')) => (&t[..i], 1.0),
        Some((i, 'm')) => (&t[..i], 60.0),
        Some((i, 'h')) => (&t[..i], 3600.0),
        _ => (t, 1.0),
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 5.0 / scale => Ok(v * scale),
        Ok(_) => Err(format!("`{s}` is shorter than the 5 s minimum")),
        Err(_) => Err(format!("`{s}` is not a duration like 90s, 15m or 1h")),
    }
}

impl From<ThermalError> for CliError {
    fn from(e: ThermalError) -> Self {
        CliError::Thermal(e)
    }
}

impl From<SoakError> for CliError {
    fn from(e: SoakError) -> Self {
        CliError::Soak(e)
    }
}

impl From<board::BoardError> for CliError {
    fn from(e: board::BoardError) -> Self {
        CliError::Thermal(e.into())
    }
}

// ---------------------------------------------------------------------------------------
// beltbox board

fn identify(root: &Path, name: Option<&str>) -> Result<Identification, CliError> {
    Ok(match name {
        Some(n) => board::explicit(n, root)?,
        None if root == Path::new("/") => board::identify()?,
        None => board::identify_under(root, std::env::consts::ARCH)?,
    })
}

pub fn board_cmd(action: BoardAction) -> Result<(), CliError> {
    match action {
        BoardAction::List { sysfs_root, json } => board_list(&sysfs_root, json),
        BoardAction::Show {
            name,
            sysfs_root,
            json,
        } => board_show(name.as_deref(), &sysfs_root, json),
    }
}

fn board_list(root: &Path, json: bool) -> Result<(), CliError> {
    let all = board::profiles()?;
    let detected = identify(root, None)?;
    if json {
        #[derive(Serialize)]
        struct Row<'a> {
            detected: bool,
            ai_ram_mib: u64,
            #[serde(flatten)]
            profile: &'a BoardProfile,
        }
        let rows: Vec<Row> = all
            .iter()
            .map(|p| Row {
                detected: p.name == detected.name(),
                ai_ram_mib: p.ai_ram_mib(),
                profile: p,
            })
            .collect();
        return emit(&to_json(&serde_json::json!({
            "detected": detected.name(),
            "identification": detected.describe(),
            "boards": rows,
        })));
    }
    let mut out = format!(
        "  {:<10} {:<8} {:>5} {:>9} {:>8}  {:<22} {}\n",
        "board", "soc", "cores", "AI RAM", "throttle", "zones", "description"
    );
    for p in &all {
        let mark = if p.name == detected.name() { "*" } else { " " };
        let zones = if p.thermal.watch.is_empty() {
            "(none)".to_string()
        } else {
            p.thermal.watch.join(",")
        };
        out.push_str(&format!(
            "{mark} {:<10} {:<8} {:>5} {:>5} MiB {:>6.1}°C  {:<22} {}\n",
            p.name,
            p.soc,
            p.cpu.cores,
            p.ai_ram_mib(),
            p.thermal.throttle_c,
            truncate(&zones, 22),
            p.description
        ));
    }
    out.push_str(&format!("detected: {}", detected.describe()));
    emit(&out)
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

fn board_show(name: Option<&str>, root: &Path, json: bool) -> Result<(), CliError> {
    let id = identify(root, name)?;
    let Some(p) = &id.profile else {
        // Unknown board: say so, and say what applies instead.
        let generic = throttle::limits(None, &Snapshot::default());
        if json {
            return emit(&to_json(&serde_json::json!({
                "name": "unknown",
                "identification": id,
                "generic_limits": generic,
            })));
        }
        return emit(&format!(
            "{}\ngeneric limits: throttle {:.1} °C, warn {:.1} °C, resume {:.1} °C (or the lowest passive trip point the kernel exposes)",
            id.describe(),
            generic.throttle_c,
            generic.warn_c,
            generic.resume_c
        ));
    };
    if json {
        return emit(&to_json(&serde_json::json!({
            "name": p.name,
            "identification": id.describe(),
            "matched_by": id.matched_by,
            "ai_ram_mib": p.ai_ram_mib(),
            "profile": p,
        })));
    }
    let mut s = format!("{} — {}\n", p.name, p.description);
    if !matches!(id.matched_by, MatchedBy::Explicit(_)) {
        s.push_str(&format!("  detected: {}\n", id.describe()));
    }
    s.push_str(&format!(
        "  soc {}, {}, {} cores ({})\n  RAM {} MiB, runtime share {:.0} % = {} MiB; default threads {}\n",
        p.soc,
        p.arch,
        p.cpu.cores,
        p.cpu.core,
        p.memory.ram_mib,
        p.memory.ai_share * 100.0,
        p.ai_ram_mib(),
        p.budgets.threads
    ));
    let t = &p.thermal;
    s.push_str(&format!(
        "  thermal: watch {}; governor steps down at {:.1} °C, back up below {:.1} °C; platform throttles at {:.1} °C\n",
        if t.watch.is_empty() { "(no sensors)".to_string() } else { t.watch.join(", ") },
        t.warn_c,
        t.resume_c,
        t.throttle_c
    ));
    for z in &t.zones {
        let trips: Vec<String> = z
            .trips
            .iter()
            .map(|tr| format!("{:.1} {}", tr.temp_c, tr.kind))
            .collect();
        s.push_str(&format!(
            "    {} trips: {}\n",
            z.zone_type,
            trips.join(", ")
        ));
    }
    for c in &p.cpufreq {
        s.push_str(&format!(
            "  cpufreq {}: cpus {}, {}-{} MHz\n",
            c.policy,
            cpu_list(&c.cpus),
            c.min_khz / 1000,
            c.max_khz / 1000
        ));
    }
    if let Some(v) = &p.vendor_flag {
        s.push_str(&format!(
            "  vendor flag: {:?} at /{}\n",
            v.kind,
            v.paths.join(" or /")
        ));
    }
    let d = &p.detect;
    let mut rules = Vec::new();
    if !d.compatible.is_empty() {
        rules.push(format!("compatible {}", d.compatible.join(" | ")));
    }
    if !d.model.is_empty() {
        rules.push(format!("model contains {}", d.model.join(" | ")));
    }
    if let Some(a) = &d.arch_fallback {
        rules.push(format!("no device tree and a {a} CPU"));
    }
    s.push_str(&format!("  detected by: {}", rules.join("; ")));
    emit(&s)
}

// ---------------------------------------------------------------------------------------
// beltbox thermal

#[derive(Serialize)]
struct ThermalJson<'a> {
    board: &'a str,
    identification: String,
    sysfs_root: String,
    throttled: bool,
    throttle: &'a ThrottleStatus,
    #[serde(flatten)]
    snapshot: &'a Snapshot,
    warnings: &'a [String],
    /// What a running service or soak publishes (latency windows, governor); null when
    /// nothing runs.
    published: Option<Published>,
}

pub fn thermal_cmd(args: &ThermalArgs) -> Result<(), CliError> {
    let root = &args.sysfs_root;
    let mut monitor = Monitor::new(root, None)?; // validates the root before detection
    let id = identify(root, args.board.as_deref())?;
    if id.profile.is_some() {
        monitor = Monitor::new(root, id.profile.as_ref())?;
    }
    let snap = monitor.sample();
    let limits = throttle::limits(id.profile.as_ref(), &snap);
    let st = throttle::assess(&snap, &limits);
    let status_path = match &args.status {
        Some(p) => p.clone(),
        None if root != Path::new("/") => root.join("run/beltbox/thermal.json"),
        None => status::default_path(),
    };
    let published = status::read(&status_path)?;
    if args.json {
        return emit(&to_json(&ThermalJson {
            board: id.name(),
            identification: id.describe(),
            sysfs_root: root.display().to_string(),
            throttled: st.throttled,
            throttle: &st,
            snapshot: &snap,
            warnings: monitor.warnings(),
            published,
        }));
    }
    emit(&thermal_text(
        &id,
        root,
        &snap,
        &st,
        &limits,
        published.as_ref(),
        &status_path,
    ))
}

fn thermal_text(
    id: &Identification,
    root: &Path,
    snap: &Snapshot,
    st: &ThrottleStatus,
    limits: &Limits,
    published: Option<&Published>,
    status_path: &Path,
) -> String {
    let mut s = format!("board: {}\nsysfs root: {}\n", id.describe(), root.display());
    if snap.zones.is_empty() {
        s.push_str("zones: none\n");
    } else {
        s.push_str("zones:\n");
        for z in &snap.zones {
            let temp = z
                .temp_c
                .map(|t| format!("{t:6.1} °C"))
                .unwrap_or_else(|| "     ? °C".into());
            let trips: Vec<String> = z
                .trips
                .iter()
                .map(|t| format!("{:.1} {}", t.temp_c, t.kind))
                .collect();
            s.push_str(&format!(
                "  {:<14} {:<20} {}  trips: {:<40} {}\n",
                z.zone,
                z.zone_type,
                temp,
                if trips.is_empty() {
                    "-".to_string()
                } else {
                    trips.join(", ")
                },
                if z.watched { "watched" } else { "" }
            ));
        }
    }
    if snap.cpus.is_empty() {
        s.push_str("cpufreq: none\n");
    } else {
        s.push_str("cpufreq:\n");
        for (cpus, r) in group_cpus(&snap.cpus) {
            let mhz = |v: Option<u64>| {
                v.map(|k| format!("{}", k / 1000))
                    .unwrap_or_else(|| "?".into())
            };
            s.push_str(&format!(
                "  cpu {:<8} {:>5} MHz  (max {} of {} MHz)\n",
                cpu_list(&cpus),
                mhz(r.cur_khz),
                mhz(r.max_khz),
                mhz(r.hw_max_khz)
            ));
        }
    }
    if let Some(v) = &snap.vendor {
        s.push_str(&format!(
            "vendor flag: 0x{:x} ({}){} at {}\n",
            v.raw,
            if v.active.is_empty() {
                "ok".to_string()
            } else {
                v.active.join(", ")
            },
            if v.occurred.is_empty() {
                String::new()
            } else {
                format!("; since boot: {}", v.occurred.join(", "))
            },
            v.path
        ));
    }
    if let Some(l) = snap.cpu_load_pct {
        s.push_str(&format!("cpu load: {l:.0} %\n"));
    }
    let hot = st
        .hottest
        .as_ref()
        .map(|h| format!("hottest {} {:.1} °C, ", h.zone, h.temp_c))
        .unwrap_or_default();
    let headroom = st
        .headroom_c
        .map(|h| format!(", headroom {h:.1} °C"))
        .unwrap_or_default();
    s.push_str(&format!(
        "throttled: {}{} — {hot}throttle point {:.1} °C ({}){headroom}; evidence: {}\n",
        if st.throttled { "YES" } else { "no" },
        if st.throttled {
            format!(
                " ({})",
                st.reasons
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        } else {
            String::new()
        },
        limits.throttle_c,
        limits.source,
        if st.evidence.is_empty() {
            "none (cannot tell)".to_string()
        } else {
            st.evidence.join(", ")
        }
    ));
    match published {
        None => s.push_str(&format!(
            "latency: nothing publishes {} (the service is not running)",
            status_path.display()
        )),
        Some(p) => s.push_str(&published_text(p)),
    }
    s
}

/// Consecutive CPUs with identical readings, as one row.
fn group_cpus(cpus: &[CpuFreqReading]) -> Vec<(Vec<u32>, &CpuFreqReading)> {
    let mut out: Vec<(Vec<u32>, &CpuFreqReading)> = Vec::new();
    for c in cpus {
        match out.last_mut() {
            Some((list, r))
                if r.cur_khz == c.cur_khz
                    && r.max_khz == c.max_khz
                    && r.hw_max_khz == c.hw_max_khz =>
            {
                list.push(c.cpu)
            }
            _ => out.push((vec![c.cpu], c)),
        }
    }
    out
}

fn published_text(p: &Published) -> String {
    let v = &p.status;
    let f = |x: &serde_json::Value| {
        x.as_f64()
            .map(|v| format!("{v:9.2}"))
            .unwrap_or_else(|| "        -".into())
    };
    let mut s = format!(
        "latency: {} (SLO p95 {} ms) on {}, status {:.1} s old{}\n",
        v["model"].as_str().unwrap_or("?"),
        v["slo_ms"],
        v["board"].as_str().unwrap_or("?"),
        p.age_ms as f64 / 1e3,
        if p.stale {
            " — STALE: the publisher stopped"
        } else {
            ""
        }
    );
    s.push_str(&format!(
        "  {:<12} {:>9} {:>9}   (ms; windows {} s / {} s)\n",
        "stage",
        "burst p95",
        "sust. p95",
        v["latency"]["burst_window_s"],
        v["latency"]["sustained_window_s"]
    ));
    if let Some(stages) = v["latency"]["stages"].as_array() {
        for st in stages {
            s.push_str(&format!(
                "  {:<12} {} {}\n",
                st["stage"].as_str().unwrap_or("?"),
                f(&st["burst"]["p95_ms"]),
                f(&st["sustained"]["p95_ms"])
            ));
        }
    }
    let g = &v["governor"];
    if g.is_object() {
        s.push_str(&format!(
            "governor: {} ({} thread(s), duty {:.0} %, {} model); {} transition(s)",
            g["level"].as_str().unwrap_or("?"),
            g["knobs"]["threads"],
            g["knobs"]["duty"].as_f64().unwrap_or(1.0) * 100.0,
            if g["knobs"]["fallback"].as_bool() == Some(true) {
                "fallback"
            } else {
                "primary"
            },
            g["stats"]["transitions"]
        ));
        if let Some(last) = g["recent"].as_array().and_then(|r| r.last()) {
            s.push_str(&format!(
                "; last {} -> {} at {:.1} s ({})",
                last["from"].as_str().unwrap_or("?"),
                last["to"].as_str().unwrap_or("?"),
                last["at_ms"].as_f64().unwrap_or(0.0) / 1e3,
                last["reason"]["kind"].as_str().unwrap_or("?")
            ));
        }
    } else {
        s.push_str("governor: off");
    }
    s
}

// ---------------------------------------------------------------------------------------
// beltbox soak

pub fn soak_cmd(args: &SoakArgs) -> Result<(), CliError> {
    let primary = resolve_model(&args.model)?;
    let fallback = if args.no_fallback {
        None
    } else {
        Some(resolve_model(&args.fallback)?)
    };
    let board = board::profile(&args.board)?;
    let mut scenario = if args.long {
        Scenario::long()
    } else {
        Scenario::short()
    };
    if let Some(d) = args.duration {
        scenario = scenario.with_duration(d);
    }
    let mut cfg = SoakConfig::new(primary, fallback, board, scenario);
    if let Some(t) = args.threads {
        cfg.threads = usize::from(t);
    }
    cfg.fps = args.fps;
    cfg.slowdown = args.slowdown;
    if let Some(r) = &args.sysfs_root {
        cfg.root = r.clone();
        cfg.remove_root = false;
    }
    cfg.modes = match (args.governed, args.ungoverned) {
        (true, false) => vec![Mode::Governed],
        (false, true) => vec![Mode::Ungoverned],
        _ => vec![Mode::Ungoverned, Mode::Governed],
    };
    let progress = |line: &str| eprintln!("soak: {line}");
    let report = soak::run(&cfg, &progress)?;
    if args.json {
        emit(&to_json(&report))?;
    } else {
        emit(&soak_text(&report))?;
    }
    match &report.targets {
        Some(t) if !t.met => {
            Err(SoakError::Failed("targets missed (see the table above)".into()).into())
        }
        _ => Ok(()),
    }
}

fn ms(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.1} ms"))
        .unwrap_or_else(|| "-".into())
}

/// The report as Markdown (pasteable into docs/thermal.md).
pub fn soak_text(r: &SoakReport) -> String {
    let c = &r.calibration;
    let mut s = format!(
        "soak: {} (fallback {}) on a fake {} board, {} scenario: {:.0} s per run, burst window {:.0} s, sustained window {:.0} s\n",
        r.model,
        r.fallback_model.as_deref().unwrap_or("none"),
        r.board,
        r.scenario.name,
        r.scenario.duration_s,
        r.scenario.windows.burst_ms as f64 / 1e3,
        r.scenario.windows.sustained_ms as f64 / 1e3,
    );
    let p95 = |i: usize| {
        let p = c.p95_ms[i].map(|v| format!("p95 {v:.1}"));
        let cpu = c.cpu_ms[i].map(|v| format!("CPU {v:.1}"));
        match (p, cpu) {
            (Some(p), Some(cpu)) => format!(" ({p}, {cpu})"),
            (Some(p), None) => format!(" ({p})"),
            _ => String::new(),
        }
    };
    s.push_str(&format!(
        "calibration ({} interleaved rounds): primary {:.1} ms{} at {} thread(s){}{}; {:.1} ms CPU/frame ({}); belt {:.2} fps; \
         thermal: ambient {:.0} °C, k {:.1} °C per busy core, tau {:.0} s, throttle at {:.0} °C -> {}x slower; load average {:.2}\n\n",
        c.rounds,
        c.primary_full_ms,
        p95(0),
        c.full_threads,
        c.primary_reduced_ms
            .map(|v| format!(", {v:.1} ms{} at {} thread(s)", p95(1), c.reduced_threads))
            .unwrap_or_default(),
        c.fallback_ms
            .map(|v| format!(", fallback {v:.1} ms{}", p95(3)))
            .unwrap_or_default(),
        c.cpu_ms_per_frame,
        c.cpu_source,
        c.fps,
        c.ambient_c,
        c.k_c_per_core,
        c.tau_s,
        c.throttle_c,
        c.slowdown,
        c.load_avg_1m
    ));
    s.push_str(
        "| run | frames offered | served | shed (queue full) | skipped (paced) | fallback (flagged) | burst p95 | sustained p95 | SLO | frames > SLO | throttled | peak temp | model switches | transitions |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for run in &r.runs {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} ms | {} | {:.1} s | {:.1} °C | {} | {} |\n",
            run.mode.name(),
            run.frames_offered,
            run.frames_served,
            run.frames_shed,
            run.frames_skipped,
            run.frames_fallback,
            ms(run.burst_p95_ms),
            ms(run.sustained_p95_ms),
            run.slo_ms,
            run.slo_violations,
            run.throttled_s,
            run.peak_temp_c,
            run.model_switches,
            run.transitions.len()
        ));
    }
    for run in &r.runs {
        if run.mode == Mode::Governed {
            let levels: Vec<String> = Level::ALL
                .iter()
                .filter(|l| run.level_s[l.index()] > 0.0)
                .map(|l| {
                    let p95 = run.level_p95_ms[l.index()]
                        .map(|p| format!(", p95 {p:.1} ms"))
                        .unwrap_or_default();
                    format!("{} {:.1} s{p95}", l.name(), run.level_s[l.index()])
                })
                .collect();
            s.push_str(&format!(
                "\ngoverned run, time per level: {}\n",
                levels.join("; ")
            ));
            for t in &run.transitions {
                s.push_str(&format!("  {t}\n"));
            }
        }
        for w in &run.monitor_warnings {
            s.push_str(&format!("  {} run monitor warning: {w}\n", run.mode.name()));
        }
    }
    if let Some(t) = &r.targets {
        let yes = |b: bool| if b { "yes" } else { "NO" };
        let g = r.runs.iter().find(|x| x.mode == Mode::Governed);
        let u = r.runs.iter().find(|x| x.mode == Mode::Ungoverned);
        let gs = g.and_then(|x| x.sustained_p95_ms).unwrap_or(f64::NAN);
        let gb = g.and_then(|x| x.burst_p95_ms).unwrap_or(f64::NAN);
        let us = u.and_then(|x| x.sustained_p95_ms).unwrap_or(f64::NAN);
        let slo = g.map(|x| x.slo_ms).unwrap_or(f64::NAN);
        s.push_str(&format!(
            "\ntargets: governed sustained p95 <= SLO: {} ({gs:.1} <= {slo:.0} ms); <= 1.1x burst p95: {} ({gs:.1} <= {:.1} ms); \
             ungoverned violates SLO: {} ({us:.1} > {slo:.0} ms); governed frames all accounted (served + shed + skipped + pending): {} => {}",
            yes(t.governed_sustained_within_slo),
            yes(t.governed_sustained_within_1_1_burst),
            1.1 * gb,
            yes(t.ungoverned_violates_slo),
            yes(t.governed_frames_accounted),
            if t.met { "MET" } else { "MISSED" }
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations() {
        assert_eq!(super::parse_duration("60"), Ok(60.0));
        assert_eq!(super::parse_duration("90s"), Ok(90.0));
        assert_eq!(super::parse_duration("15m"), Ok(900.0));
        assert_eq!(super::parse_duration("0.5h"), Ok(1800.0));
        assert!(super::parse_duration("1s").is_err());
        assert!(super::parse_duration("soon").is_err());
        assert!(super::parse_duration("").is_err());
    }
}
