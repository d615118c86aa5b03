//! Thermal monitoring on fake sysfs trees laid out like the real boards
//! (tests/data/sysfs/*, see its README), the governor driven through real files, and the
//! `beltbox board` / `beltbox thermal` commands on the real binary.

mod common;
use common::*;

use std::path::{Path, PathBuf};

use beltbox_core::board;
use beltbox_core::thermal::governor::{Governor, GovernorConfig, Inputs, Level};
use beltbox_core::thermal::sysfs::Monitor;
use beltbox_core::thermal::throttle::{assess, limits, ThrottleStatus};
use beltbox_core::thermal::Snapshot;

fn tree(name: &str) -> PathBuf {
    repo().join("tests/data/sysfs").join(name)
}

/// Identify the board of a tree, read it, assess it: what `beltbox thermal` does.
fn read_tree(root: &Path) -> (String, Snapshot, ThrottleStatus, Vec<String>) {
    let id = board::identify_under(root, "aarch64").unwrap();
    let mut m = Monitor::new(root, id.profile.as_ref()).unwrap();
    let snap = m.sample();
    let st = assess(&snap, &limits(id.profile.as_ref(), &snap));
    (id.name().to_string(), snap, st, m.warnings().to_vec())
}

fn kinds(st: &ThrottleStatus) -> Vec<String> {
    st.reasons
        .iter()
        .map(|r| {
            serde_json::to_value(r).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn raspberry_pi_4_cool() {
    let (board, snap, st, warnings) = read_tree(&tree("rpi4"));
    assert_eq!(board, "rpi4");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(snap.zones.len(), 1);
    let z = &snap.zones[0];
    assert_eq!(
        (z.zone.as_str(), z.zone_type.as_str()),
        ("thermal_zone0", "cpu-thermal")
    );
    assert_eq!(z.temp_c, Some(51.121)); // millidegrees, exactly
    assert_eq!(z.trips.len(), 1);
    assert_eq!(
        (z.trips[0].temp_c, z.trips[0].kind.as_str()),
        (110.0, "critical")
    );
    // cpu0..3 all read through the policy0 symlinks.
    assert_eq!(
        snap.cpus.iter().map(|c| c.cpu).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    assert!(snap
        .cpus
        .iter()
        .all(|c| c.cur_khz == Some(1_800_000) && c.hw_max_khz == Some(1_800_000)));
    assert_eq!(snap.vendor.as_ref().map(|v| v.raw), Some(0));
    assert!(!st.throttled);
    assert_eq!(st.evidence, vec!["cpufreq", "temperature", "vendor"]);
    assert!((st.headroom_c.unwrap() - 28.879).abs() < 1e-9);
}

#[test]
fn raspberry_pi_4_firmware_throttling() {
    let (_, snap, st, _) = read_tree(&tree("rpi4-throttled"));
    assert!(st.throttled);
    // The firmware caps the clock without touching cpufreq's max: seen through the
    // temperature and the get_throttled word, not as a cpufreq cap.
    assert_eq!(kinds(&st), vec!["at-limit", "vendor"]);
    let v = snap.vendor.unwrap();
    assert_eq!(v.raw, 0x80008);
    assert_eq!(v.active, vec!["soft-temperature-limit"]);
    assert_eq!(v.occurred, vec!["soft-temperature-limit"]);
    assert_eq!(snap.cpus[0].cur_khz, Some(1_000_000));
}

#[test]
fn raspberry_pi_5_layout() {
    let (board, snap, st, warnings) = read_tree(&tree("rpi5"));
    assert_eq!(board, "rpi5");
    assert!(warnings.is_empty(), "{warnings:?}");
    let trips: Vec<(f64, &str)> = snap.zones[0]
        .trips
        .iter()
        .map(|t| (t.temp_c, t.kind.as_str()))
        .collect();
    assert_eq!(
        trips,
        vec![
            (110.0, "critical"),
            (50.0, "active"),
            (60.0, "active"),
            (67.5, "active"),
            (75.0, "active")
        ]
    );
    // Active (fan) trips are not throttle points: 58.65 °C is fine on a Pi 5.
    assert!(!st.throttled);
    assert!(snap
        .vendor
        .unwrap()
        .path
        .contains("soc@107c000000:firmware"));
    assert_eq!(st.limits.throttle_c, 85.0);
}

#[test]
fn rk3588_bsp_capped_and_hot() {
    let (board, snap, st, warnings) = read_tree(&tree("rk3588"));
    assert_eq!(board, "rk3588");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(snap.zones.len(), 7);
    let watched: Vec<&str> = snap
        .zones
        .iter()
        .filter(|z| z.watched)
        .map(|z| z.zone_type.as_str())
        .collect();
    assert_eq!(
        watched,
        vec![
            "soc-thermal",
            "bigcore0-thermal",
            "bigcore1-thermal",
            "littlecore-thermal"
        ]
    );
    assert!(st.throttled);
    assert_eq!(kinds(&st), vec!["freq-capped", "at-limit"]);
    assert_eq!(
        st.reasons[0].to_string(),
        "cpu 4,5 capped at 1608 MHz of 2400 MHz"
    );
    let hot = st.hottest.unwrap();
    assert_eq!(
        (hot.zone.as_str(), hot.temp_c),
        ("bigcore0-thermal", 86.461)
    );
}

#[test]
fn rk3588_mainline_names_are_watched_too() {
    let (board, snap, st, warnings) = read_tree(&tree("rk3588-mainline"));
    assert_eq!(board, "rk3588");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(snap
        .zones
        .iter()
        .any(|z| z.zone_type == "package-thermal" && z.watched));
    assert!(!snap
        .zones
        .iter()
        .any(|z| z.zone_type == "gpu-thermal" && z.watched));
    assert!(!st.throttled);
    assert_eq!(snap.cpus.len(), 8);
}

#[test]
fn imx8mp_idle_clock_is_not_a_cap() {
    let (board, snap, st, _) = read_tree(&tree("imx8mp"));
    assert_eq!(board, "imx8mp");
    // Running at 1.2 GHz of 1.8 with max untouched is the cpufreq governor idling.
    assert_eq!(snap.cpus[0].cur_khz, Some(1_200_000));
    assert!(!st.throttled, "{st:?}");
    assert_eq!(snap.zones.iter().filter(|z| z.watched).count(), 2);
}

#[test]
fn qemu_virt_has_nothing_and_says_so_once() {
    let root = tree("qemu-virt");
    let id = board::identify_under(&root, "aarch64").unwrap();
    assert_eq!(id.name(), "qemu-virt");
    let mut m = Monitor::new(&root, id.profile.as_ref()).unwrap();
    for _ in 0..3 {
        let snap = m.sample();
        assert!(snap.zones.is_empty() && snap.cpus.is_empty() && snap.vendor.is_none());
        let st = assess(&snap, &limits(id.profile.as_ref(), &snap));
        assert!(!st.throttled && st.evidence.is_empty());
    }
    assert_eq!(m.warnings().len(), 1, "{:?}", m.warnings());
    assert!(m.warnings()[0].contains("no thermal zones"));
}

#[test]
fn garbage_everywhere_is_survived_and_warned_once_each() {
    let root = tree("garbage");
    let id = board::identify_under(&root, "aarch64").unwrap();
    let mut m = Monitor::new(&root, id.profile.as_ref()).unwrap();
    let first = m.sample();
    let n = m.warnings().len();
    for _ in 0..5 {
        assert_eq!(
            m.sample(),
            Snapshot {
                cpu_load_pct: first.cpu_load_pct,
                ..first.clone()
            }
        );
    }
    // Reading again warns about nothing new (the CPU-load reading may differ).
    assert_eq!(m.warnings().len(), n);
    let w = m.warnings().join("\n");
    for needle in [
        "thermal_zone0/temp: value `hot` is not an integer",
        "thermal_zone1/temp: value -274000 m°C is outside",
        "trip_point_0_temp: value `garbage`",
        "trip_point_0_type: cannot read",
        "scaling_cur_freq: value `<unsupported>`",
        "cpuinfo_max_freq: value is empty",
        "get_throttled: value `zz` is not a hexadecimal",
    ] {
        assert!(w.contains(needle), "missing `{needle}` in:\n{w}");
    }
    // One warning per broken file, not one per CPU sharing the policy.
    assert_eq!(w.matches("scaling_cur_freq").count(), 1, "{w}");
    // An empty `type` falls back to the directory name; an unreadable temp is absent.
    assert_eq!(first.zones[2].zone_type, "thermal_zone2");
    assert_eq!(first.zones[0].temp_c, None);
    assert!(first.vendor.is_none());
    let st = assess(&first, &limits(id.profile.as_ref(), &first));
    assert!(!st.throttled);
    // The watched zones are unreadable, so temperature is not evidence.
    assert!(!st.evidence.contains(&"temperature"));
}

/// A minimal Pi-4-like tree in a temp dir, with a temperature we can change.
struct LiveTree {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl LiveTree {
    fn new(zone_type: &str) -> LiveTree {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let z = root.join("sys/class/thermal/thermal_zone0");
        std::fs::create_dir_all(&z).unwrap();
        std::fs::write(z.join("type"), format!("{zone_type}\n")).unwrap();
        std::fs::write(z.join("trip_point_0_temp"), "110000\n").unwrap();
        std::fs::write(z.join("trip_point_0_type"), "critical\n").unwrap();
        let l = LiveTree { _dir: dir, root };
        l.set(40.0);
        l
    }

    fn set(&self, c: f64) {
        let z = self.root.join("sys/class/thermal/thermal_zone0");
        std::fs::write(z.join("temp"), format!("{}\n", (c * 1000.0) as i64)).unwrap();
    }
}

#[test]
fn a_missing_watched_zone_is_reported() {
    let t = LiveTree::new("gpu-thermal");
    let rpi4 = board::profile("rpi4").unwrap();
    let mut m = Monitor::new(&t.root, Some(&rpi4)).unwrap();
    let snap = m.sample();
    m.sample();
    assert!(!snap.zones[0].watched);
    let w = m.warnings().join("\n");
    assert!(
        w.contains("none of the board's zones (cpu-thermal) exist"),
        "{w}"
    );
    // cpufreq and the vendor flag are missing too: one warning each, once.
    assert_eq!(m.warnings().len(), 3, "{w}");
    assert!(!assess(&snap, &limits(Some(&rpi4), &snap)).throttled);
}

#[test]
fn an_unreadable_file_is_a_warning_not_a_crash() {
    let t = LiveTree::new("cpu-thermal");
    let temp = t.root.join("sys/class/thermal/thermal_zone0/temp");
    std::fs::remove_file(&temp).unwrap();
    std::fs::create_dir(&temp).unwrap(); // reading it fails with EISDIR
    let mut m = Monitor::new(&t.root, None).unwrap();
    let snap = m.sample();
    assert_eq!(snap.zones[0].temp_c, None);
    assert!(
        m.warnings().iter().any(|w| w.contains("cannot read")),
        "{:?}",
        m.warnings()
    );
}

/// The governor driven through real files: the temperature crosses the warning point
/// with sensor noise, sits in the hysteresis band, then falls below resume. It must step
/// down once per level, never flap, and come back only after the cool dwell.
#[test]
fn trip_crossings_through_sysfs_with_hysteresis() {
    let t = LiveTree::new("cpu-thermal");
    let rpi4 = board::profile("rpi4").unwrap(); // warn 75, resume 68, throttle 80
    let mut m = Monitor::new(&t.root, Some(&rpi4)).unwrap();
    let lim = limits(Some(&rpi4), &Snapshot::default());
    let mut g = Governor::new(GovernorConfig::new(
        lim.throttle_c,
        lim.warn_c,
        lim.resume_c,
        100.0,
        4,
        true,
    ));
    // (seconds, °C): ramp, noisy plateau around warn, band, cool.
    let mut profile: Vec<(u64, f64)> = Vec::new();
    for s in 0..60 {
        profile.push((s, 60.0 + s as f64 * 0.25)); // 60 -> 74.75
    }
    for s in 60..180 {
        profile.push((s, if s % 2 == 0 { 75.8 } else { 74.2 })); // noise across warn
    }
    for s in 180..300 {
        profile.push((s, 71.0)); // inside the band: hold
    }
    for s in 300..500 {
        profile.push((s, 62.0)); // below resume
    }
    let mut path = Vec::new();
    for (s, c) in profile {
        t.set(c);
        let snap = m.sample();
        let st = assess(&snap, &lim);
        assert!(!st.throttled);
        if let Some(tr) = g.tick(&Inputs {
            now_ms: s * 1000,
            temp_c: st.hottest.map(|h| h.temp_c),
            throttled: st.throttled,
            reference_p95_ms: None,
        }) {
            path.push((s, tr.from, tr.to));
        }
    }
    use Level::*;
    assert_eq!(
        path,
        vec![
            (60, Full, ReducedThreads),
            (66, ReducedThreads, Paced), // first warm reading after the 5 s dwell
            (72, Paced, Fallback),
            (330, Fallback, Paced), // 30 s below resume (from 300 s)
            (360, Paced, ReducedThreads),
            (390, ReducedThreads, Full),
        ]
    );
    assert!(
        m.warnings().iter().all(|w| !w.contains("/temp:")),
        "{:?}",
        m.warnings()
    );
}

#[test]
fn a_throttle_flag_in_sysfs_sends_the_governor_straight_to_fallback() {
    let root = tree("rpi4-throttled");
    let rpi4 = board::profile("rpi4").unwrap();
    let mut m = Monitor::new(&root, Some(&rpi4)).unwrap();
    let snap = m.sample();
    let lim = limits(Some(&rpi4), &snap);
    let st = assess(&snap, &lim);
    let mut g = Governor::new(GovernorConfig::new(
        lim.throttle_c,
        lim.warn_c,
        lim.resume_c,
        100.0,
        4,
        true,
    ));
    let tr = g
        .tick(&Inputs {
            now_ms: 0,
            temp_c: st.hottest.map(|h| h.temp_c),
            throttled: st.throttled,
            reference_p95_ms: None,
        })
        .unwrap();
    assert_eq!((tr.from, tr.to), (Level::Full, Level::Fallback));
    assert!(g.knobs().fallback);
}

// ---------------------------------------------------------------------------------------
// The real binary.

#[test]
fn thermal_json_reports_throttled_and_why() {
    let v = json(&beltbox(&[
        "thermal",
        "--sysfs-root",
        "tests/data/sysfs/rpi4-throttled",
        "--json",
    ]));
    assert_eq!(v["throttled"], true);
    assert_eq!(v["board"], "rpi4");
    assert_eq!(v["throttle"]["limits"]["throttle_c"], 80.0);
    assert_eq!(v["zones"][0]["type"], "cpu-thermal");
    assert_eq!(v["zones"][0]["temp_c"], 82.245);
    assert_eq!(v["vendor"]["raw"], 0x80008);
    assert_eq!(v["published"], serde_json::Value::Null);

    let v = json(&beltbox(&[
        "thermal",
        "--sysfs-root",
        "tests/data/sysfs/rpi4",
        "--json",
    ]));
    assert_eq!(v["throttled"], false);
    assert!(v["cpu_load_pct"].is_number());
}

#[test]
fn thermal_text_names_the_board_and_the_state() {
    let o = beltbox(&["thermal", "--sysfs-root", "tests/data/sysfs/rk3588"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("board: rk3588 (Radxa ROCK 5B"), "{out}");
    assert!(out.contains("throttled: YES"), "{out}");
    assert!(
        out.contains("cpu 4,5 capped at 1608 MHz of 2400 MHz"),
        "{out}"
    );
    assert!(out.contains("nothing publishes"), "{out}");
}

#[test]
fn thermal_with_an_explicit_board_and_garbage_files() {
    let v = json(&beltbox(&[
        "thermal",
        "--sysfs-root",
        "tests/data/sysfs/garbage",
        "--board",
        "imx8mp",
        "--json",
    ]));
    assert_eq!(v["board"], "imx8mp");
    assert_eq!(v["throttled"], false);
    let warnings = v["warnings"].as_array().unwrap();
    assert!(warnings.len() >= 5, "{warnings:?}");
}

#[test]
fn thermal_refuses_a_bad_root_and_an_unknown_board() {
    let o = beltbox(&["thermal", "--sysfs-root", "tests/data/sysfs/nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("tests/data/sysfs/nope: sysfs root is not a directory"),
        "{}",
        stderr(&o)
    );
    let o = beltbox(&[
        "thermal",
        "--sysfs-root",
        "tests/data/sysfs/rpi4",
        "--board",
        "rpi9",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown board `rpi9`"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn thermal_shows_what_a_running_loop_publishes() {
    use beltbox_core::thermal::status::{self, StatusFile};
    use beltbox_core::thermal::window::{LatencyWindows, WindowConfig};
    use beltbox_core::timing::StageTimings;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("run/beltbox")).unwrap();
    let mut lw = LatencyWindows::new(WindowConfig::default());
    for t in 0..100 {
        lw.record(
            t * 100,
            &StageTimings {
                inference_us: 40_000,
                ..StageTimings::default()
            },
        );
    }
    let rep = lw.report(10_000);
    let gov = Governor::new(GovernorConfig::new(80.0, 75.0, 68.0, 200.0, 2, true)).report(10_000);
    status::write(
        &root.join("run/beltbox/thermal.json"),
        &StatusFile {
            schema: status::SCHEMA,
            updated_unix_ms: status::unix_ms(),
            pid: 42,
            model: "mobilenetv2-bench-int8-qdq",
            fallback_model: Some("mobilenetv2-bench-fp32"),
            board: "rpi4",
            slo_ms: 200.0,
            latency: &rep,
            governor: Some(&gov),
            throttle: None,
        },
    )
    .unwrap();
    let r = root.to_str().unwrap();
    let v = json(&beltbox(&["thermal", "--sysfs-root", r, "--json"]));
    assert_eq!(v["published"]["stale"], false);
    assert_eq!(v["published"]["status"]["governor"]["level"], "full");
    let o = beltbox(&["thermal", "--sysfs-root", r]);
    let out = stdout(&o);
    assert!(
        out.contains("latency: mobilenetv2-bench-int8-qdq (SLO p95 200.0 ms)"),
        "{out}"
    );
    assert!(out.contains("inference        40.00"), "{out}");
    assert!(
        out.contains("governor: full (2 thread(s), duty 100 %, primary model)"),
        "{out}"
    );
    // A file that is not ours is an error naming it.
    std::fs::write(root.join("run/beltbox/thermal.json"), "{}").unwrap();
    let o = beltbox(&["thermal", "--sysfs-root", r]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("not a beltbox thermal status file"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn board_list_and_show() {
    let v = json(&beltbox(&["board", "list", "--json"]));
    let names: Vec<&str> = v["boards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec!["rpi4", "rpi5", "rk3588", "imx8mp", "qemu-virt", "x86-dev"]
    );
    assert_eq!(v["boards"][0]["ai_ram_mib"], 2048);

    let o = beltbox(&["board", "list", "--sysfs-root", "tests/data/sysfs/rpi5"]);
    let out = stdout(&o);
    assert!(out.contains("* rpi5"), "{out}");
    assert!(
        out.contains("detected: rpi5 (Raspberry Pi 5 Model B Rev 1.0"),
        "{out}"
    );

    let v = json(&beltbox(&["board", "show", "rk3588", "--json"]));
    assert_eq!(v["profile"]["cpu"]["cores"], 8);
    assert_eq!(v["profile"]["thermal"]["throttle_c"], 85.0);
    assert_eq!(v["profile"]["cpufreq"].as_array().unwrap().len(), 3);

    let o = beltbox(&["board", "show", "--sysfs-root", "tests/data/sysfs/imx8mp"]);
    assert!(o.status.success());
    assert!(
        stdout(&o).starts_with("imx8mp — NXP i.MX 8M Plus"),
        "{}",
        stdout(&o)
    );

    // A device tree nobody knows: the fallback says so and what applies instead.
    let dir = tempfile::tempdir().unwrap();
    let dt = dir.path().join("proc/device-tree");
    std::fs::create_dir_all(&dt).unwrap();
    std::fs::write(dt.join("model"), b"Pine64 RockPro64 v2.1\0").unwrap();
    std::fs::write(
        dt.join("compatible"),
        b"pine64,rockpro64\0rockchip,rk3399\0",
    )
    .unwrap();
    let o = beltbox(&[
        "board",
        "show",
        "--sysfs-root",
        dir.path().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("unknown board (Pine64 RockPro64 v2.1)"),
        "{out}"
    );
    assert!(out.contains("generic limits: throttle 85.0 °C"), "{out}");

    let o = beltbox(&["board", "show", "beaglebone"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("known boards are rpi4, rpi5, rk3588, imx8mp, qemu-virt, x86-dev"));
}

#[test]
fn board_show_accepts_a_profile_file() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo().join("boards/imx8mp.toml"))
        .unwrap()
        .replace("name = \"imx8mp\"", "name = \"imx8mp-industrial\"")
        .replace("throttle_c = 85.0", "throttle_c = 95.0");
    let p = dir.path().join("imx8mp-industrial.toml");
    std::fs::write(&p, text).unwrap();
    let v = json(&beltbox(&["board", "show", p.to_str().unwrap(), "--json"]));
    assert_eq!(v["name"], "imx8mp-industrial");
    assert_eq!(v["profile"]["thermal"]["throttle_c"], 95.0);
    std::fs::write(&p, "name = \"x\"\n").unwrap();
    let o = beltbox(&["board", "show", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("imx8mp-industrial.toml"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn soak_rejects_bad_arguments_before_doing_anything() {
    let o = beltbox(&["soak", "--duration", "soon"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not a duration"), "{}", stderr(&o));
    let o = beltbox(&["soak", "--board", "rpi9"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown board `rpi9`"),
        "{}",
        stderr(&o)
    );
    let o = beltbox(&["soak", "--model", "no-such-model"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no-such-model"), "{}", stderr(&o));
    let o = beltbox(&["soak", "--fps", "0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--fps must be in (0, 10000]"),
        "{}",
        stderr(&o)
    );
}

// ---------------------------------------------------------------------------------------
// Input-facing parsers never panic.

mod never_panic {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn sysfs_value_parsers(s in ".{0,40}", bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            use beltbox_core::thermal::sysfs::{parse_khz, parse_millidegrees, parse_throttle_word};
            let lossy = String::from_utf8_lossy(&bytes).into_owned();
            for input in [s.as_str(), lossy.as_str()] {
                if let Ok(c) = parse_millidegrees(input) {
                    prop_assert!((-60.0..=200.0).contains(&c));
                }
                if let Ok(k) = parse_khz(input) {
                    prop_assert!(k > 0);
                }
                let _ = parse_throttle_word(input);
            }
        }

        /// Arbitrary bytes in every file the monitor reads: it returns, and warns.
        #[test]
        fn monitor_on_arbitrary_files(
            temp in proptest::collection::vec(any::<u8>(), 0..32),
            trip in proptest::collection::vec(any::<u8>(), 0..32),
            kind in proptest::collection::vec(any::<u8>(), 0..16),
            freq in proptest::collection::vec(any::<u8>(), 0..32),
            flag in proptest::collection::vec(any::<u8>(), 0..32),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path();
            let z = root.join("sys/class/thermal/thermal_zone0");
            std::fs::create_dir_all(&z).unwrap();
            std::fs::write(z.join("type"), &kind).unwrap();
            std::fs::write(z.join("temp"), &temp).unwrap();
            std::fs::write(z.join("trip_point_0_temp"), &trip).unwrap();
            std::fs::write(z.join("trip_point_0_type"), &kind).unwrap();
            let f = root.join("sys/devices/system/cpu/cpu0/cpufreq");
            std::fs::create_dir_all(&f).unwrap();
            for name in ["scaling_cur_freq", "scaling_max_freq", "cpuinfo_max_freq"] {
                std::fs::write(f.join(name), &freq).unwrap();
            }
            let v = root.join("sys/devices/platform/soc/soc:firmware");
            std::fs::create_dir_all(&v).unwrap();
            std::fs::write(v.join("get_throttled"), &flag).unwrap();
            let rpi4 = board::profile("rpi4").unwrap();
            let mut m = Monitor::new(root, Some(&rpi4)).unwrap().with_cpu_load(false);
            let snap = m.sample();
            let st = assess(&snap, &limits(Some(&rpi4), &snap));
            prop_assert_eq!(snap.zones.len(), 1);
            prop_assert_eq!(snap.cpu_load_pct, None);
            prop_assert!(st.hottest.iter().all(|h| h.temp_c.is_finite()));
        }

        #[test]
        fn board_profile_parser(text in ".{0,200}") {
            let _ = board::BoardProfile::from_toml(&text, "fuzz.toml");
        }

        /// A valid profile with one threshold replaced by anything: accepted only when
        /// the hysteresis order still holds.
        #[test]
        fn board_profile_thresholds(resume in -100.0f64..200.0) {
            let text = std::fs::read_to_string(repo().join("boards/rpi4.toml"))
                .unwrap()
                .replace("resume_c = 68.0", &format!("resume_c = {resume:?}"));
            let ok = board::BoardProfile::from_toml(&text, "x.toml").is_ok();
            prop_assert_eq!(ok, resume < 75.0);
        }
    }
}
