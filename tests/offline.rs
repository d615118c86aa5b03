//! Offline-first (issue #16, docs/offline.md): the result spool and its uploader, driven
//! through the real service (`beltbox run`) with a real MQTT broker (Debian's mosquitto,
//! tests/offline/install.sh), a real MQTT subscriber (rumqttc) as the fleet's receiver,
//! and a real HTTP receiver (Python's http.server, tests/offline/receiver.py).
//!
//! Every count asserted here is computed in this run: the sequence numbers the service
//! acknowledged (answers with `"spooled": true`) against the message ids the receivers got.

mod common;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::server::{bytes_request, golden, metric, Server, INFER};
use serde_json::Value;

// ---------------------------------------------------------------------------------------
// The parts: broker, receivers, load.

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn mosquitto() -> PathBuf {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("mosquitto is not installed: run `bash tests/offline/install.sh` (the README's test command does)")
}

/// A mosquitto broker on `port`, persistent (sessions and queued messages survive a
/// restart, as a fleet broker is configured).
struct Broker {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Broker {
    fn start(dir: &Path, port: u16) -> Broker {
        std::fs::create_dir_all(dir).unwrap();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                // `user root`: run as root (CI), mosquitto would otherwise drop to its own
                // user and fail to write its persistence file here; ignored when not root.
                "listener {port} 127.0.0.1\nallow_anonymous true\nuser root\npersistence true\npersistence_location {}/\nautosave_interval 1\nmax_queued_messages 1000000\nmax_inflight_messages 100\n",
                dir.display()
            ),
        )
        .unwrap();
        let mut b = Broker {
            child: None,
            port,
            dir: dir.to_path_buf(),
        };
        b.up();
        b
    }

    fn up(&mut self) {
        let log =
            std::fs::File::create(self.dir.join(format!("log.{}", fastrand::u32(..)))).unwrap();
        let child = Command::new(mosquitto())
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "mosquitto did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM (mosquitto saves its persistence file) and wait.
    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The fleet's side: a persistent-session QoS 1 subscriber to every box's results.
struct MqttReceiver {
    got: Arc<Mutex<Vec<Value>>>,
    subscribed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MqttReceiver {
    fn start(port: u16) -> MqttReceiver {
        let got = Arc::new(Mutex::new(Vec::new()));
        let subscribed = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s, st) = (Arc::clone(&got), Arc::clone(&subscribed), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut o = rumqttc::MqttOptions::new("fleet-receiver", "127.0.0.1", port);
            o.set_clean_session(false)
                .set_keep_alive(Duration::from_secs(5))
                .set_max_packet_size(1 << 20, 1 << 20);
            let (client, mut conn) = rumqttc::Client::new(o, 100);
            for ev in conn.iter() {
                if st.load(Relaxed) {
                    break;
                }
                match ev {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        // Subscribing again on every connection is harmless and covers a
                        // broker that lost the session.
                        let _ = client.try_subscribe("beltbox/#", rumqttc::QoS::AtLeastOnce);
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        s.store(true, Relaxed)
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let v: Value = serde_json::from_slice(&p.payload).unwrap();
                        g.lock().unwrap().push(v);
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        let r = MqttReceiver {
            got,
            subscribed,
            stop,
            thread: Some(thread),
        };
        let t = Instant::now();
        while !r.subscribed.load(Relaxed) {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the receiver did not subscribe"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    /// Sequence numbers in the order received (duplicates included).
    fn seqs(&self) -> Vec<u64> {
        self.stream("results")
            .iter()
            .map(|v| v["seq"].as_u64().unwrap())
            .collect()
    }

    fn ids(&self) -> Vec<String> {
        self.stream("results")
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_string())
            .collect()
    }

    /// Every message of one stream, in the order received.
    fn stream(&self, name: &str) -> Vec<Value> {
        let got = self.got.lock().unwrap();
        got.iter()
            .filter(|v| v["stream"] == name)
            .cloned()
            .collect()
    }
}

impl Drop for MqttReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        // The iterator wakes at the next packet or keep-alive.
        if let Some(t) = self.thread.take() {
            drop(t);
        }
    }
}

/// tests/offline/receiver.py: keeps `id<TAB>key` lines in `out`.
struct HttpReceiver {
    child: Child,
    url: String,
    out: PathBuf,
}

impl HttpReceiver {
    fn start(dir: &Path) -> HttpReceiver {
        std::fs::create_dir_all(dir).unwrap();
        let port_file = dir.join("port");
        let out = dir.join("received");
        let child = Command::new("python3")
            .arg(common::repo().join("tests/offline/receiver.py"))
            .arg(&port_file)
            .arg(&out)
            .spawn()
            .expect("python3 (tests/offline/install.sh)");
        let t = Instant::now();
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(&port_file) {
                break p;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "receiver.py did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        HttpReceiver {
            child,
            url: format!("http://127.0.0.1:{port}/ingest"),
            out,
        }
    }

    fn ids(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| l.split('\t').next().unwrap_or("").to_string())
            .collect()
    }

    fn set(&self, what: &str, on: bool) {
        let flag = self.out.with_extension(what);
        if on {
            std::fs::write(flag, b"").unwrap();
        } else {
            let _ = std::fs::remove_file(flag);
        }
    }
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sequence number in a message id `BOX/results/EPOCH/SEQ`.
fn seq_of(id: &str) -> u64 {
    id.rsplit('/').next().unwrap().parse().unwrap()
}

/// What a run of client threads saw: acknowledged sequence numbers, answers sent
/// unspooled, and other outcomes.
#[derive(Default, Debug)]
struct Load {
    acked: BTreeSet<u64>,
    unspooled: u64,
    errors: u64,
}

/// `threads` clients posting golden digits until `stop` (or `count` answers each, if
/// given), or until the connection dies (the service was killed).
fn load(s: &Server, threads: usize, count: Option<usize>, stop: &AtomicBool) -> Load {
    let files: Vec<Vec<u8>> = golden()
        .iter()
        .map(|(p, _)| std::fs::read(p).unwrap())
        .collect();
    let out = Mutex::new(Load::default());
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (files, out) = (&files, &out);
            scope.spawn(move || {
                let mut c = s.client();
                let mut i = 0;
                while !stop.load(Relaxed) && count.is_none_or(|n| i < n) {
                    let (body, len) = bytes_request(&files[(t + i) % files.len()], Value::Null);
                    i += 1;
                    let r = match c.request(
                        "POST",
                        INFER,
                        &[
                            ("Content-Type", "application/octet-stream"),
                            ("Inference-Header-Content-Length", &len),
                        ],
                        &body,
                    ) {
                        Ok(r) => r,
                        Err(_) => return, // the service is gone
                    };
                    let mut o = out.lock().unwrap();
                    if r.status != 200 {
                        o.errors += 1;
                        continue;
                    }
                    let p = r.json().unwrap()["parameters"].clone();
                    if p["spooled"] == true {
                        o.acked.insert(p["result_seq"].as_u64().unwrap());
                    } else {
                        o.unspooled += 1;
                    }
                }
            });
        }
    });
    out.into_inner().unwrap()
}

fn config(state: &Path, extra: &str) -> String {
    format!(
        "state_dir = \"{}\"\n[ota]\nrecent_frames = 0\n{extra}\n",
        state.display()
    )
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let t = Instant::now();
    while !done() {
        assert!(
            t.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every acknowledged seq arrived; the received ids hold no seq that was never written.
/// Returns (unique received, duplicates).
fn delivered_exactly_once(name: &str, acked: &BTreeSet<u64>, ids: &[String]) -> (usize, usize) {
    let unique: BTreeSet<&String> = ids.iter().collect();
    let seqs: BTreeSet<u64> = unique.iter().map(|id| seq_of(id)).collect();
    let missing: Vec<_> = acked.difference(&seqs).collect();
    assert!(
        missing.is_empty(),
        "{name}: acknowledged but never received: {missing:?}"
    );
    // One epoch, one id per seq: after dropping duplicates each record is there once.
    assert_eq!(unique.len(), seqs.len(), "{name}: two ids for one seq");
    (unique.len(), ids.len() - unique.len())
}

// ---------------------------------------------------------------------------------------
// The tests.

/// The acknowledgement contract under SIGKILL: the service is killed three times in the
/// middle of heavy concurrent writes; after it comes back and uploads, every answer it
/// acknowledged is at both receivers, each exactly once after dropping duplicates by id.
#[test]
fn sigkill_during_heavy_writes_loses_no_acknowledged_result() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(&tmp.path().join("broker"), free_port());
    let mqtt = MqttReceiver::start(broker.port);
    let http = HttpReceiver::start(&tmp.path().join("http"));
    let state = tmp.path().join("state");
    let cfg = config(
        &state,
        &format!(
            "[upload]\nmqtt = \"{}\"\nhttp = \"{}\"\nbatch = 25\nbackoff_min_ms = 50\nbackoff_max_ms = 500\n",
            broker.url(),
            http.url
        ),
    );
    let mut acked = BTreeSet::new();
    for round in 0..3u64 {
        let s = Server::start(&["--workers", "2"], Some(&cfg), &[]);
        let stop = AtomicBool::new(false);
        let l = std::thread::scope(|scope| {
            let h = scope.spawn(|| load(&s, 4, None, &stop));
            std::thread::sleep(Duration::from_millis(1200 + 400 * round));
            // Group commit under 4 clients flat out (printed, not asserted: it depends on
            // the disk's sync time).
            let m = s.metrics();
            println!(
                "round {round}: {} records in {} syncs before the kill",
                metric(&m, "beltbox_spool_written_seq"),
                metric(&m, "beltbox_spool_syncs_total")
            );
            // SIGKILL: no drain, no final sync, the uploader mid-batch.
            sigkill(&s);
            h.join().unwrap()
        });
        assert!(
            l.acked.len() > 50,
            "round {round}: only {} acknowledged",
            l.acked.len()
        );
        assert_eq!(l.unspooled, 0, "round {round}");
        acked.extend(l.acked);
    }
    let s = Server::start(&[], Some(&cfg), &[]);
    wait_until(
        "every acknowledged result at both receivers",
        Duration::from_secs(90),
        || {
            let m: BTreeSet<u64> = mqtt.seqs().into_iter().collect();
            let h: BTreeSet<u64> = http.ids().iter().map(|i| seq_of(i)).collect();
            acked.is_subset(&m) && acked.is_subset(&h)
        },
    );
    let (m_unique, m_dups) = delivered_exactly_once("mqtt", &acked, &mqtt.ids());
    let (h_unique, h_dups) = delivered_exactly_once("http", &acked, &http.ids());
    println!(
        "acknowledged {} over 3 SIGKILLs; MQTT received {m_unique} unique (+{m_dups} duplicates dropped), HTTP received {h_unique} unique (+{h_dups} duplicates dropped)",
        acked.len()
    );
    // The receivers hold only what was written: at most the acknowledged plus the few
    // appended but not yet answered when the kill came.
    assert!(m_unique >= acked.len() && h_unique >= acked.len());
    s.stop();
}

/// SIGKILL (Server's Drop reaps it).
fn sigkill(s: &Server) {
    let _ = Command::new("kill")
        .args(["-KILL", &s.child.id().to_string()])
        .status();
}

/// The broker is down for a long stretch (the uploader backs off to its ceiling, the
/// backlog grows, inference goes on), then comes back: everything arrives, in order.
/// Then it restarts twice in the middle of batches while results keep coming.
#[test]
fn broker_down_for_long_then_up_then_restarting_mid_batch_delivers_everything_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&tmp.path().join("broker"), free_port());
    let mqtt = MqttReceiver::start(broker.port);
    broker.down();
    let state = tmp.path().join("state");
    let cfg = config(
        &state,
        &format!(
            "[upload]\nmqtt = \"{}\"\nbatch = 20\nbackoff_min_ms = 20\nbackoff_max_ms = 300\n",
            broker.url()
        ),
    );
    let s = Server::start(&[], Some(&cfg), &[]);
    let stop = AtomicBool::new(false);
    let first = load(&s, 2, Some(150), &stop);
    assert_eq!(first.acked.len(), 300, "{first:?}");
    // "Long": the backoff has reached its ceiling many times over.
    std::thread::sleep(Duration::from_secs(3));
    let m = s.metrics();
    let l = r#"{stream="results",sink="mqtt"}"#;
    assert_eq!(metric(&m, &format!("beltbox_upload_up{l}")), 0.0);
    assert!(metric(&m, &format!("beltbox_upload_failures_total{l}")) >= 5.0);
    assert_eq!(metric(&m, &format!("beltbox_upload_backlog{l}")), 300.0);
    let health = s.client().get("/v2/health/ready").unwrap().json().unwrap();
    assert_eq!(health["spool"]["upload"][0]["up"], false, "{health}");
    assert!(health["spool"]["upload"][0]["last_error"]
        .as_str()
        .unwrap()
        .contains("127.0.0.1"));

    broker.up();
    wait_until("the backlog delivered", Duration::from_secs(60), || {
        mqtt.seqs().iter().collect::<BTreeSet<_>>().len() >= 300
    });
    // Restarts in the middle of batches, under load.
    let more = std::thread::scope(|scope| {
        let h = scope.spawn(|| load(&s, 2, Some(200), &stop));
        for _ in 0..2 {
            std::thread::sleep(Duration::from_millis(300));
            broker.down();
            std::thread::sleep(Duration::from_millis(500));
            broker.up();
        }
        h.join().unwrap()
    });
    let mut acked = first.acked;
    acked.extend(more.acked);
    assert_eq!(acked.len(), 700);
    wait_until(
        "everything delivered after the restarts",
        Duration::from_secs(60),
        || acked.is_subset(&mqtt.seqs().into_iter().collect()),
    );
    let (unique, dups) = delivered_exactly_once("mqtt", &acked, &mqtt.ids());
    // In order per box: the first arrival of each seq comes in increasing seq order.
    let mut seen = BTreeSet::new();
    let firsts: Vec<u64> = mqtt
        .seqs()
        .into_iter()
        .filter(|q| seen.insert(*q))
        .collect();
    assert!(
        firsts.windows(2).all(|w| w[0] < w[1]),
        "out of order: {firsts:?}"
    );
    println!(
        "acknowledged {}; received {unique} unique in order (+{dups} duplicates)",
        acked.len()
    );
    s.stop();
}

/// A spool damaged while the service was down: a torn tail, a bad CRC in the middle,
/// files that are not the spool's, a cursor that cannot be trusted. Each is reported (a
/// counted, logged skip) and every good record still reaches the receiver.
#[test]
fn a_damaged_spool_is_reported_and_every_good_record_uploaded() {
    type Damage = fn(&Path);
    // (name, damage, records lost, metric that must be non-zero)
    let rows: Vec<(&str, Damage, usize, Option<&str>)> = vec![
        (
            "torn tail",
            |spool| {
                let seg = last(spool);
                let mut f = std::fs::OpenOptions::new().append(true).open(seg).unwrap();
                std::io::Write::write_all(&mut f, b"BBSR\x40\x00\x00\x00cut short by the power")
                    .unwrap();
            },
            0,
            Some("beltbox_spool_recovered_torn_bytes"),
        ),
        (
            "bad CRC in the middle",
            |spool| {
                let seg = last(spool);
                let mut b = std::fs::read(&seg).unwrap();
                let mid = b.len() / 2;
                b[mid] ^= 0x55;
                std::fs::write(&seg, b).unwrap();
            },
            1,
            Some("beltbox_spool_recovered_damaged_bytes"),
        ),
        (
            "foreign files",
            |spool| {
                std::fs::write(spool.join("notes.txt"), b"a technician's note").unwrap();
                std::fs::write(spool.join("00000000000000000001.seg.bak"), b"junk").unwrap();
            },
            0,
            None,
        ),
        (
            "cursor past the end",
            |spool| {
                let c = spool.parent().unwrap().join("cursors/results.http");
                let epoch = std::fs::read_to_string(spool.join("EPOCH")).unwrap();
                std::fs::write(c, format!("beltbox-cursor 1 {} 999999\n", epoch.trim())).unwrap();
            },
            0,
            None,
        ),
        (
            "garbage cursor",
            |spool| {
                std::fs::write(
                    spool.parent().unwrap().join("cursors/results.http"),
                    b"\x00\xffnot a cursor",
                )
                .unwrap();
            },
            0,
            None,
        ),
    ];
    fn last(spool: &Path) -> PathBuf {
        let mut v: Vec<PathBuf> = std::fs::read_dir(spool)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .filter(|p| std::fs::metadata(p).unwrap().len() > 0)
            .collect();
        v.sort();
        v.pop().unwrap()
    }
    let tmp = tempfile::tempdir().unwrap();
    for (i, (name, damage, lost, counter)) in rows.into_iter().enumerate() {
        let http = HttpReceiver::start(&tmp.path().join(format!("http{i}")));
        let state = tmp.path().join(format!("state{i}"));
        // The receiver is down while the records are made: they stay spooled.
        http.set("fail", true);
        let cfg = config(
            &state,
            &format!(
                "[upload]\nhttp = \"{}\"\nbackoff_min_ms = 50\nbackoff_max_ms = 200\n",
                http.url
            ),
        );
        let s = Server::start(&[], Some(&cfg), &[]);
        let stop = AtomicBool::new(false);
        let l = load(&s, 1, Some(40), &stop);
        assert_eq!(l.acked.len(), 40, "{name}");
        s.stop();
        damage(&state.join("spool/results"));
        http.set("fail", false);
        let s = Server::start(&[], Some(&cfg), &[]);
        wait_until(name, Duration::from_secs(30), || {
            http.ids()
                .iter()
                .map(|i| seq_of(i))
                .collect::<BTreeSet<_>>()
                .len()
                >= 40 - lost
        });
        let got: BTreeSet<u64> = http.ids().iter().map(|i| seq_of(i)).collect();
        let missing = l.acked.difference(&got).count();
        assert_eq!(
            missing, lost,
            "{name}: {missing} acknowledged records missing"
        );
        if let Some(c) = counter {
            assert!(metric(&s.metrics(), c) > 0.0, "{name}: {c} is 0");
        }
        // It goes on spooling and uploading after the damage.
        let after = load(&s, 1, Some(5), &stop);
        assert_eq!(after.acked.len(), 5, "{name}");
        wait_until(name, Duration::from_secs(30), || {
            let got: BTreeSet<u64> = http.ids().iter().map(|i| seq_of(i)).collect();
            after.acked.is_subset(&got)
        });
        let log = s.stop().join("\n");
        if name.contains("cursor") {
            assert!(
                log.contains("sending everything spooled again") || log.contains("not a cursor"),
                "{name}: {log}"
            );
        }
    }
}

/// A spool at its size bound drops the oldest records, counts them on /metrics and in
/// health, and keeps accepting (inference never waits for the uploader).
#[test]
fn a_full_spool_drops_the_oldest_and_counts_them() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let cfg = config(
        &state,
        "[spool]\nsegment_size = \"8KiB\"\nmax_size = \"32KiB\"\n",
    );
    let s = Server::start(&[], Some(&cfg), &[]);
    let stop = AtomicBool::new(false);
    let l = load(&s, 2, Some(200), &stop);
    assert_eq!(l.acked.len(), 400);
    let m = s.metrics();
    let dropped = metric(&m, "beltbox_spool_dropped_total");
    assert!(dropped > 0.0);
    assert!(metric(&m, "beltbox_spool_bytes") <= (32 + 8) as f64 * 1024.0);
    let health = s.client().get("/v2/health/ready").unwrap().json().unwrap();
    assert_eq!(health["spool"]["dropped"].as_f64().unwrap(), dropped);
    assert_eq!(health["spool"]["state"], "ok");
    s.stop();
}

/// `state_dir` on a tiny tmpfs that fills up: answers keep coming (inference continues),
/// flagged `"spooled": false`; health, /metrics and the STATUS= line say the spool is
/// failing; once space is freed it recovers on its own.
#[test]
fn disk_full_keeps_inference_going_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("tiny");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        // Mounting needs root (CI runs as root; docs/offline.md).
        eprintln!(
            "SKIPPED disk_full_keeps_inference_going_and_says_so: cannot mount a tmpfs (not root?)"
        );
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let state = mnt.join("state");
    let cfg = config(
        &state,
        "[spool]\nsegment_size = \"64KiB\"\nmax_size = \"64MiB\"\n",
    );
    let mut s = Server::start(&[], Some(&cfg), &[]);
    // Fill what is left but ~48 KiB.
    let filler = mnt.join("filler");
    let free = {
        let out = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&mnt)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    std::fs::write(&filler, vec![0u8; free.saturating_sub(48 << 10) as usize]).unwrap();
    let stop = AtomicBool::new(false);
    let l = load(&s, 1, Some(400), &stop);
    assert_eq!(l.errors, 0, "inference must go on: {l:?}");
    assert!(l.unspooled > 0, "the disk never filled: {l:?}");
    assert!(!l.acked.is_empty());
    let m = s.metrics();
    assert_eq!(metric(&m, "beltbox_spool_ok"), 0.0);
    assert_eq!(
        metric(&m, "beltbox_spool_unspooled_total"),
        l.unspooled as f64
    );
    let health = s.client().get("/v2/health/ready").unwrap().json().unwrap();
    assert_eq!(health["spool"]["state"], "error", "{health}");
    assert!(
        health["spool"]["error"]
            .as_str()
            .unwrap()
            .contains("No space left"),
        "{health}"
    );
    // The STATUS= line (every 10 s) says so too.
    wait_until(
        "STATUS= naming the failing spool",
        Duration::from_secs(15),
        || s.next_notification().contains("spool FAILING"),
    );
    // Space again: the next answers are spooled, and the state clears.
    std::fs::remove_file(&filler).unwrap();
    let again = load(&s, 1, Some(5), &stop);
    assert_eq!(again.acked.len(), 5, "{again:?}");
    assert_eq!(metric(&s.metrics(), "beltbox_spool_ok"), 1.0);
    s.stop();
}

/// Two services on one state_dir would interleave segments: the second cannot take the
/// spool's lock, says so, and serves unspooled rather than not at all.
#[test]
fn a_second_service_on_the_same_state_dir_does_not_share_the_spool() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(&tmp.path().join("state"), "");
    let a = Server::start(&[], Some(&cfg), &[]);
    let b = Server::start(&[], Some(&cfg), &[]);
    let stop = AtomicBool::new(false);
    assert_eq!(load(&a, 1, Some(3), &stop).acked.len(), 3);
    let lb = load(&b, 1, Some(3), &stop);
    assert_eq!((lb.acked.len(), lb.unspooled), (0, 3));
    let health = b.client().get("/v2/health/ready").unwrap().json().unwrap();
    assert!(
        health["spool"]["error"]
            .as_str()
            .unwrap()
            .contains("in use by another process"),
        "{health}"
    );
    b.stop();
    a.stop();
}

/// The low-confidence path: a model whose manifest sets `low_confidence` (1.0 here: every
/// answer under certainty is low) flags such answers, re-runs them on the configured
/// secondary model, and keeps their inputs (bounded by count) for upload and review; the
/// kept input arrives at the receiver with the bytes that were sent, naming its result.
#[test]
fn low_confidence_answers_are_flagged_rerun_and_their_inputs_kept_and_uploaded() {
    use base64::Engine as _;
    let tmp = tempfile::tempdir().unwrap();
    let (_pkg_dir, pkg) = common::copy_package(common::server::MODEL);
    common::edit_manifest(&pkg, |m| {
        m.replacen("accuracy_floor", "low_confidence = 1.0\naccuracy_floor", 1)
    });
    let http = HttpReceiver::start(&tmp.path().join("http"));
    // Both sinks: over MQTT the two streams are two clients, which must not push each
    // other off the broker.
    let broker = Broker::start(&tmp.path().join("broker"), free_port());
    let mqtt = MqttReceiver::start(broker.port);
    let cfg = format!(
        "{}[models]\nload = [\"{}\", \"digits-fp32\"]\n[low_confidence]\nkeep_max_count = 8\nsecondary = {{ \"digits-int8-qdq\" = \"digits-fp32\" }}\n[upload]\nhttp = \"{}\"\nmqtt = \"{}\"\nbackoff_min_ms = 50\nbackoff_max_ms = 200\n",
        config(&tmp.path().join("state"), ""),
        pkg.display(),
        http.url,
        broker.url()
    );
    let s = Server::start(&[], Some(&cfg), &[]);
    let files: Vec<Vec<u8>> = golden()
        .iter()
        .map(|(p, _)| std::fs::read(p).unwrap())
        .collect();
    let mut c = s.client();
    let mut low = Vec::new(); // (result_seq, the bytes sent)
    let n = 20;
    for i in 0..n {
        let f = &files[i % files.len()];
        let (body, len) = bytes_request(f, Value::Null);
        let r = common::server::post_binary(&mut c, INFER, &body, &len);
        assert_eq!(r.status, 200, "{}", r.text());
        let p = r.json().unwrap()["parameters"].clone();
        let is_low = p["top1_score"].as_f64().unwrap() < 1.0;
        assert_eq!(p["low_confidence"], is_low, "{p}");
        if is_low {
            assert_eq!(p["secondary_model"], "digits-fp32", "{p}");
            assert!(p["secondary_top1_label"].is_string(), "{p}");
            low.push((p["result_seq"].as_u64().unwrap(), f.clone()));
        } else {
            assert!(p.get("secondary_model").is_none(), "{p}");
        }
    }
    assert!(
        low.len() > 8,
        "too few low answers to test the bound: {}",
        low.len()
    );
    let m = s.metrics();
    let count = |outcome: &str| {
        metric(
            &m,
            &format!(
                "beltbox_low_confidence_total{{model=\"digits-int8-qdq\",outcome=\"{outcome}\"}}"
            ),
        )
    };
    assert_eq!(count("flagged"), low.len() as f64);
    assert_eq!(count("rerun"), low.len() as f64);
    assert_eq!(count("kept"), low.len() as f64);
    assert_eq!(count("not_kept"), 0.0);
    // The secondary's own answers are its own: never flagged (its manifest sets no threshold).
    assert_eq!(
        metric(
            &m,
            "beltbox_low_confidence_total{model=\"digits-fp32\",outcome=\"flagged\"}"
        ),
        0.0
    );
    // Bounded by count: the oldest kept inputs were dropped once more than 8 were kept.
    wait_until(
        "kept inputs and results uploaded",
        Duration::from_secs(30),
        || {
            let ids = http.ids();
            ids.iter().filter(|i| i.contains("/results/")).count() >= n
                && ids.iter().any(|i| i.contains("/inputs/"))
        },
    );
    let dropped = metric(&s.metrics(), "beltbox_spool_inputs_dropped_total");
    let kept_now = low.len() as f64 - dropped;
    assert!(
        (1.0..=8.0).contains(&kept_now),
        "{kept_now} kept after {dropped} dropped"
    );
    // Every kept input that reached the receiver carries the bytes sent and its result's seq.
    let lines = std::fs::read_to_string(http.out.with_extension("jsonl")).unwrap();
    let mut checked = 0;
    for l in lines.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        if v["stream"] != "inputs" {
            continue;
        }
        let rec = &v["record"];
        let seq = rec["result_seq"].as_u64().unwrap();
        let sent = &low
            .iter()
            .find(|(s, _)| *s == seq)
            .unwrap_or_else(|| panic!("no low answer {seq}"))
            .1;
        let t = &rec["tensors"][0];
        assert_eq!(t["encoding"], "file");
        let got = base64::engine::general_purpose::STANDARD
            .decode(t["data_b64"].as_str().unwrap())
            .unwrap();
        assert_eq!(&got, sent, "input kept for result {seq}");
        assert_eq!(rec["threshold"], 1.0);
        checked += 1;
    }
    assert!(checked >= 1);
    // The same over MQTT, results and inputs both.
    wait_until("both streams over MQTT", Duration::from_secs(30), || {
        mqtt.seqs().iter().collect::<BTreeSet<_>>().len() >= n && !mqtt.stream("inputs").is_empty()
    });
    // The result records say so too.
    let flagged_records = lines
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["stream"] == "results" && v["record"]["low_confidence"] == true)
        .filter(|v| v["record"]["secondary"]["model"] == "digits-fp32")
        .count();
    assert!(
        flagged_records >= low.len(),
        "{flagged_records} flagged result records for {} low answers",
        low.len()
    );
    s.stop();
}

/// A misconfigured upload or spool is refused at start with one line naming the key (exit
/// 2), before anything loads; an unreachable broker is not a config error (it is the
/// normal offline case: the backlog grows, see the broker test).
#[test]
fn a_misconfigured_spool_or_upload_is_refused_with_one_line_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = [
        ("[upload]\nmqtt = \"http://broker:1883\"", "upload.mqtt"),
        ("[upload]\nmqtt = \"mqtts://broker\"", "TLS"),
        ("[upload]\nhttp = \"broker/ingest\"", "upload.http"),
        ("[upload]\nbroker = \"mqtt://b\"", "unknown field `broker`"),
        ("[spool]\nbox_id = \"dock 3\"", "spool.box_id"),
        ("[spool]\nmax_size = \"12XB\"", "spool.max_size"),
        (
            "[low_confidence]\nsecondary = { x = \"\" }",
            "low_confidence.secondary.x",
        ),
    ];
    for (i, (text, says)) in rows.iter().enumerate() {
        let path = tmp.path().join(format!("{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let o = common::beltbox(&["run", "--config", path.to_str().unwrap()]);
        let err = common::stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{text}: {err}");
        assert!(err.contains(says), "{text}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{text}: {err}");
    }
}
