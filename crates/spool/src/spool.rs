//! The spool: records appended to segment files in one directory, made durable by group
//! commit, bounded in size.
//!
//! ```text
//! DIR/00000000000000000001.seg   records with seq 1.. (the name is the first seq it holds)
//! DIR/00000000000000004711.seg   the segment being written
//! ```
//!
//! - **Append** writes the record to the current segment under the lock (a `write(2)`, no
//!   sync) and returns its sequence number. **[`Spool::wait_durable`]** blocks until a
//!   sync covered it. One committer thread syncs: when records are waiting it
//!   `fdatasync`s the segment, and every record appended while that sync runs is covered
//!   by the next one. So N concurrent requests cost about one sync, not N, with no added
//!   wait. `commit_interval` (default 0) can also hold each sync back for company: fewer
//!   syncs, but each request then waits up to that much longer (docs/offline.md measured
//!   +2.3 ms p95 for 2 ms at 200 req/s, one record per sync either way).
//! - A segment is closed (synced) and a new one started when it passes `segment_bytes`.
//! - **Bounded:** when the segments pass `max_bytes`, the oldest whole segments are
//!   deleted and their records counted as dropped ([`Stats::dropped`], logged).
//! - **Waiting without a thread:** the durable sequence number is also published on a
//!   tokio watch channel ([`Spool::progress`], [`durable`]), so an async HTTP task awaits
//!   its record's sync without holding a thread.
//! - **One writer:** the directory is locked (`flock` on `LOCK`) while open; a second
//!   process gets [`SpoolError::Locked`], never interleaved segments.
//! - **A failed write is undone:** when `write(2)` fails part-way (a full disk), the
//!   segment is cut back to its last whole record, so no torn record sits between good
//!   ones and the sequence number is not used.
//! - **Open** scans every segment: a record cut short at the end of the last segment (a
//!   torn write) is truncated away; a damaged record anywhere is skipped, and the scan
//!   resumes at the next intact record (the format's magic), so no good record is lost to
//!   a bad one. Files that are not segments are left alone and reported.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::os::fd::AsRawFd;

use tokio::sync::watch;

use crate::record::{self, RecordError, Records};

/// The lock file every spool directory holds while open.
pub const LOCK: &str = "LOCK";
/// The spool's epoch: a random id written once when the directory is first used. Message
/// ids carry it, so a spool started afresh (a wiped or replaced card: sequence numbers
/// begin at 1 again) never reuses an id a receiver has already seen.
pub const EPOCH: &str = "EPOCH";

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("spool: record {seq} not durable within {} ms", waited.as_millis())]
    Timeout { seq: u64, waited: Duration },
    #[error("spool: the last sync failed ({0}); records are not durable until it succeeds")]
    Sync(String),
    #[error("spool is closed")]
    Closed,
    #[error("spool {} is in use by another process (locked: {LOCK}); one service per state_dir", .0.display())]
    Locked(PathBuf),
}

fn at<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// How the spool behaves.
#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    /// A segment is closed past this size, or past this many records (so that a bound by
    /// count, which drops whole segments, holds closely).
    pub segment_bytes: u64,
    pub segment_records: u64,
    /// All segments together; past it the oldest are dropped.
    pub max_bytes: u64,
    /// Records kept at most (kept low-confidence inputs are bounded by count too); past it
    /// the oldest segments are dropped.
    pub max_records: u64,
    /// How long the committer lets appends gather before one sync (0: none; appends made
    /// while a sync runs share the next one anyway).
    pub commit_interval: Duration,
}

impl Options {
    pub fn new(dir: &Path) -> Options {
        Options {
            dir: dir.to_path_buf(),
            segment_bytes: 4 << 20,
            segment_records: u64::MAX,
            max_bytes: 256 << 20,
            max_records: u64::MAX,
            commit_interval: Duration::ZERO,
        }
    }
}

/// What opening found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub segments: usize,
    pub records: u64,
    /// Bytes of a torn write truncated from the end of the last segment.
    pub torn_bytes: u64,
    /// Bytes of damaged records skipped (left in place; never read).
    pub damaged_bytes: u64,
    /// Names in the directory that are not segments (left alone).
    pub foreign: Vec<String>,
}

/// Counters for `/metrics`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// The last sequence number written, and the last one a sync covered.
    pub written: u64,
    pub durable: u64,
    pub syncs: u64,
    /// Time spent in the committer's `fdatasync` calls, in microseconds.
    pub sync_us: u64,
    /// Records deleted, oldest first, to stay within `max_bytes`.
    pub dropped: u64,
    pub bytes: u64,
    pub segments: u64,
}

#[derive(Debug)]
struct Segment {
    first_seq: u64,
    path: PathBuf,
    bytes: u64,
    records: u64,
}

#[derive(Debug)]
struct Inner {
    /// The segment being written: the last of `segments`.
    file: Arc<File>,
    segments: VecDeque<Segment>,
    stats: Stats,
    /// Set when a sync failed; appends still go on, waits fail until a sync succeeds.
    sync_error: Option<String>,
}

/// Durability, as the watch channel publishes it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Every record up to this sequence number is durable.
    pub durable: u64,
    /// The last sync failed (records after `durable` are not durable until one succeeds).
    pub failing: bool,
}

/// Waits (async) until record `seq` is durable, at most `timeout`: the acknowledgement
/// contract for a task that must not block its thread.
pub async fn durable(
    rx: &mut watch::Receiver<Progress>,
    seq: u64,
    timeout: Duration,
) -> Result<(), SpoolError> {
    let wait = rx.wait_for(|p| p.durable >= seq || p.failing);
    match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(p)) if p.durable >= seq => Ok(()),
        Ok(Ok(_)) => Err(SpoolError::Sync("the last sync failed".into())),
        Ok(Err(_)) => Err(SpoolError::Closed),
        Err(_) => Err(SpoolError::Timeout {
            seq,
            waited: timeout,
        }),
    }
}

/// The spool (module docs). Cheap to share: `Arc<Spool>`.
pub struct Spool {
    opts: Options,
    inner: Mutex<Inner>,
    progress: watch::Sender<Progress>,
    /// Held (flock) while open; closing the file releases it.
    _lock: File,
    epoch: String,
    /// Signalled when records wait for a sync, and when a sync completed.
    work: Condvar,
    done: Condvar,
    stop: AtomicBool,
    committer: Mutex<Option<JoinHandle<()>>>,
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Scans one segment's bytes: (records, the last seq, where the intact part ends, damaged
/// bytes skipped).
fn scan(b: &[u8]) -> (u64, Option<u64>, usize, u64) {
    let mut walk = Records::new(b);
    let (mut records, mut last) = (0, None);
    for (seq, _) in walk.by_ref() {
        records += 1;
        last = Some(seq);
    }
    (records, last, walk.end, walk.damaged)
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(at("sync directory", dir))
}

impl Spool {
    /// Opens (creating) the spool in `opts.dir`, recovers it (module docs) and starts the
    /// committer.
    pub fn open(opts: Options) -> Result<(Arc<Spool>, Recovery), SpoolError> {
        let dir = opts.dir.clone();
        fs::create_dir_all(&dir).map_err(at("create", &dir))?;
        let lock_path = dir.join(LOCK);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(at("open", &lock_path))?;
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            return Err(if e.kind() == io::ErrorKind::WouldBlock {
                SpoolError::Locked(dir)
            } else {
                at("lock", &lock_path)(e)
            });
        }
        let mut found = Recovery::default();
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for entry in fs::read_dir(&dir).map_err(at("list", &dir))? {
            let entry = entry.map_err(at("list", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let first = name
                .strip_suffix(".seg")
                .filter(|n| n.len() == 20)
                .and_then(|n| n.parse::<u64>().ok());
            match first {
                Some(f) if entry.file_type().is_ok_and(|t| t.is_file()) => {
                    names.push((f, entry.path()))
                }
                _ if name == LOCK || name == EPOCH || name == "EPOCH.tmp" => {}
                _ => found.foreign.push(name),
            }
        }
        names.sort();
        found.foreign.sort();
        let mut segments = VecDeque::new();
        let mut last_seq = 0;
        let n = names.len();
        for (i, (first, path)) in names.into_iter().enumerate() {
            let b = fs::read(&path).map_err(at("read", &path))?;
            let (records, last, end, damaged) = scan(&b);
            found.damaged_bytes += damaged;
            let mut bytes = b.len() as u64;
            if end < b.len() && i + 1 == n {
                // A torn write at the very end: cut it, so appends follow intact records.
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(at("open", &path))?;
                f.set_len(end as u64).map_err(at("truncate", &path))?;
                f.sync_all().map_err(at("sync", &path))?;
                found.torn_bytes += (b.len() - end) as u64;
                bytes = end as u64;
            }
            found.records += records;
            last_seq = last_seq.max(last.unwrap_or(0)).max(first.saturating_sub(1));
            segments.push_back(Segment {
                first_seq: first,
                path,
                bytes,
                records,
            });
        }
        found.segments = segments.len();
        let epoch = Self::epoch_of(&dir)?;
        if found.torn_bytes > 0 || found.damaged_bytes > 0 {
            log::warn!(
                "spool {}: {} bytes of a torn write truncated, {} damaged bytes skipped; {} records kept",
                dir.display(),
                found.torn_bytes,
                found.damaged_bytes,
                found.records
            );
        }
        // Appends go to a fresh segment: the last one may end in damage kept in place.
        let first = last_seq + 1;
        let (file, seg) = Self::create_segment(&dir, first)?;
        segments.push_back(seg);
        let stats = Stats {
            written: last_seq,
            durable: last_seq,
            bytes: segments.iter().map(|s| s.bytes).sum(),
            segments: segments.len() as u64,
            ..Stats::default()
        };
        let spool = Arc::new(Spool {
            progress: watch::Sender::new(Progress {
                durable: last_seq,
                failing: false,
            }),
            _lock: lock,
            epoch,
            opts,
            inner: Mutex::new(Inner {
                file: Arc::new(file),
                segments,
                stats,
                sync_error: None,
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            stop: AtomicBool::new(false),
            committer: Mutex::new(None),
        });
        // The committer holds the spool weakly: dropping the last `Arc` ends it.
        let weak = Arc::downgrade(&spool);
        let handle = std::thread::Builder::new()
            .name("beltbox-spool".into())
            .spawn(move || {
                while let Some(s) = weak.upgrade() {
                    if !s.commit_step() {
                        break;
                    }
                }
            })
            .map_err(at("start the committer for", &dir))?;
        *spool.committer.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        Ok((spool, found))
    }

    fn create_segment(dir: &Path, first: u64) -> Result<(File, Segment), SpoolError> {
        let path = dir.join(segment_name(first));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(at("create", &path))?;
        let bytes = file.metadata().map_err(at("stat", &path))?.len();
        sync_dir(dir)?;
        Ok((
            file,
            Segment {
                first_seq: first,
                path,
                bytes,
                records: 0,
            },
        ))
    }

    /// Appends a record; returns its sequence number. Not durable until
    /// [`Spool::wait_durable`] says so.
    pub fn append(&self, payload: &[u8]) -> Result<u64, SpoolError> {
        if self.stop.load(Relaxed) {
            return Err(SpoolError::Closed);
        }
        let mut g = lock(&self.inner);
        let seq = g.stats.written + 1;
        let bytes = record::encode(seq, payload)?;
        if g.segments.back().is_some_and(|s| {
            s.bytes >= self.opts.segment_bytes || s.records >= self.opts.segment_records
        }) {
            self.roll(&mut g, seq)?;
        }
        let path = g
            .segments
            .back()
            .map(|s| s.path.clone())
            .unwrap_or_default();
        if let Err(e) = (&*g.file).write_all(&bytes) {
            // Cut back to the last whole record (a full disk takes part of a write).
            let whole = g.segments.back().map_or(0, |s| s.bytes);
            if let Err(t) = g.file.set_len(whole) {
                log::error!(
                    "spool: cannot cut {} back after a failed write: {t}",
                    path.display()
                );
            }
            return Err(at("write", &path)(e));
        }
        g.stats.written = seq;
        g.stats.bytes += bytes.len() as u64;
        if let Some(s) = g.segments.back_mut() {
            s.bytes += bytes.len() as u64;
            s.records += 1;
        }
        self.bound(&mut g);
        drop(g);
        self.work.notify_one();
        Ok(seq)
    }

    /// Closes the current segment (synced) and starts one whose first record is `seq`.
    fn roll(&self, g: &mut Inner, seq: u64) -> Result<(), SpoolError> {
        let old = g
            .segments
            .back()
            .map(|s| s.path.clone())
            .unwrap_or_default();
        g.file.sync_data().map_err(at("sync", &old))?;
        g.stats.durable = g.stats.written;
        g.stats.syncs += 1;
        self.publish(g);
        let (file, seg) = Self::create_segment(&self.opts.dir, seq)?;
        g.file = Arc::new(file);
        g.segments.push_back(seg);
        g.stats.segments = g.segments.len() as u64;
        self.done.notify_all();
        Ok(())
    }

    /// Deletes the oldest closed segments while the spool is over `max_bytes` or
    /// `max_records`.
    fn bound(&self, g: &mut Inner) {
        let over = |g: &Inner| {
            g.stats.bytes > self.opts.max_bytes
                || g.segments.iter().map(|s| s.records).sum::<u64>() > self.opts.max_records
        };
        while over(g) && g.segments.len() > 1 {
            let Some(old) = g.segments.pop_front() else {
                break;
            };
            match fs::remove_file(&old.path) {
                Ok(()) => {
                    g.stats.bytes = g.stats.bytes.saturating_sub(old.bytes);
                    g.stats.dropped += old.records;
                    log::warn!(
                        "spool {} full ({} bytes, {} records allowed): dropped the oldest {} records (from {})",
                        self.opts.dir.display(),
                        self.opts.max_bytes,
                        self.opts.max_records,
                        old.records,
                        old.first_seq
                    );
                }
                Err(e) => {
                    log::error!("spool: cannot drop {}: {e}", old.path.display());
                    g.segments.push_front(old);
                    break;
                }
            }
        }
        g.stats.segments = g.segments.len() as u64;
    }

    /// Blocks until record `seq` is durable, at most `timeout`.
    pub fn wait_durable(&self, seq: u64, timeout: Duration) -> Result<(), SpoolError> {
        let until = Instant::now() + timeout;
        let mut g = lock(&self.inner);
        loop {
            if g.stats.durable >= seq {
                return Ok(());
            }
            if let Some(e) = &g.sync_error {
                return Err(SpoolError::Sync(e.clone()));
            }
            let now = Instant::now();
            if now >= until || self.stop.load(Relaxed) {
                return Err(SpoolError::Timeout {
                    seq,
                    waited: timeout,
                });
            }
            g = self
                .done
                .wait_timeout(g, until - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Appends and waits until durable: the acknowledgement contract in one call.
    pub fn commit(&self, payload: &[u8], timeout: Duration) -> Result<u64, SpoolError> {
        let seq = self.append(payload)?;
        self.wait_durable(seq, timeout)?;
        Ok(seq)
    }

    pub fn stats(&self) -> Stats {
        lock(&self.inner).stats
    }

    /// The durable records from `seq` on, at most `max` of them, in order (for the
    /// uploader). Records dropped to the bound are simply not there.
    pub fn read_from(&self, seq: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, SpoolError> {
        self.read_from_bounded(seq, max, usize::MAX)
    }

    /// [`Spool::read_from`], also stopping once the payloads pass `max_bytes` (at least
    /// one record is returned when there is one).
    pub fn read_from_bounded(
        &self,
        seq: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, SpoolError> {
        let (paths, durable): (Vec<(u64, PathBuf)>, u64) = {
            let g = lock(&self.inner);
            (
                g.segments
                    .iter()
                    .map(|s| (s.first_seq, s.path.clone()))
                    .collect(),
                g.stats.durable,
            )
        };
        let (mut out, mut bytes) = (Vec::new(), 0usize);
        for (i, (first, path)) in paths.iter().enumerate() {
            // Skip segments wholly before `seq`.
            if let Some((next_first, _)) = paths.get(i + 1) {
                if *next_first <= seq {
                    continue;
                }
            }
            if *first > durable {
                break;
            }
            let b = match fs::read(path) {
                Ok(b) => b,
                // Dropped to the bound since the list was taken.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(at("read", path)(e)),
            };
            for (s, payload) in Records::new(&b).filter(|(s, _)| *s >= seq && *s <= durable) {
                if out.len() >= max || (!out.is_empty() && bytes + payload.len() > max_bytes) {
                    return Ok(out);
                }
                bytes += payload.len();
                out.push((s, payload.to_vec()));
            }
        }
        Ok(out)
    }

    /// One turn of the committer: waits (briefly) for records to sync, lets the interval
    /// gather more, syncs. `false` once stopped with nothing left to sync.
    fn commit_step(&self) -> bool {
        let mut g = lock(&self.inner);
        if g.stats.durable >= g.stats.written {
            if self.stop.load(Relaxed) {
                return false;
            }
            g = self
                .work
                .wait_timeout(g, Duration::from_millis(200))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
            if g.stats.durable >= g.stats.written {
                return !self.stop.load(Relaxed);
            }
        }
        drop(g);
        // Let concurrent appends join this sync (when configured).
        if !self.opts.commit_interval.is_zero() {
            std::thread::sleep(self.opts.commit_interval);
        }
        let (file, target, path) = {
            let g = lock(&self.inner);
            let path = g
                .segments
                .back()
                .map(|s| s.path.clone())
                .unwrap_or_default();
            (Arc::clone(&g.file), g.stats.written, path)
        };
        let t = Instant::now();
        let synced = file.sync_data();
        let took = t.elapsed().as_micros() as u64;
        let mut g = lock(&self.inner);
        match synced {
            Ok(()) => {
                g.stats.durable = g.stats.durable.max(target);
                g.stats.syncs += 1;
                g.stats.sync_us += took;
                g.sync_error = None;
            }
            Err(e) => {
                let msg = format!("{}: {e}", path.display());
                if g.sync_error.is_none() {
                    log::error!("spool sync failed: {msg}");
                }
                g.sync_error = Some(msg);
            }
        }
        self.publish(&g);
        drop(g);
        self.done.notify_all();
        true
    }

    fn publish(&self, g: &Inner) {
        let p = Progress {
            durable: g.stats.durable,
            failing: g.sync_error.is_some(),
        };
        self.progress.send_if_modified(|old| {
            let changed = *old != p;
            *old = p;
            changed
        });
    }

    /// Durability as it changes, for [`durable`].
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Reads the directory's epoch, or makes one (also when the file was damaged: the
    /// sequence numbers go on from the segments, so ids stay unique either way).
    fn epoch_of(dir: &Path) -> Result<String, SpoolError> {
        let path = dir.join(EPOCH);
        if let Ok(t) = fs::read_to_string(&path) {
            let t = t.trim();
            if t.len() == 16 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(t.to_string());
            }
            log::warn!("spool {}: damaged; a new epoch is made", path.display());
        }
        let epoch = format!("{:016x}", fastrand::u64(..));
        let tmp = dir.join("EPOCH.tmp");
        let mut f = File::create(&tmp).map_err(at("create", &tmp))?;
        f.write_all(format!("{epoch}\n").as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(at("write", &tmp))?;
        fs::rename(&tmp, &path).map_err(at("rename", &path))?;
        sync_dir(dir)?;
        Ok(epoch)
    }

    /// The spool's epoch ([`EPOCH`]).
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Syncs what is written and stops the committer.
    pub fn close(&self) {
        self.stop.store(true, Relaxed);
        self.work.notify_all();
        let handle = self
            .committer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        self.work.notify_all();
    }
}
