//! An uploader's persisted cursor: the last sequence number a sink confirmed. One small
//! file per (stream, sink), replaced atomically (write, fsync, rename, fsync the
//! directory), so after a crash or a power cut the uploader resumes where the receiver
//! last confirmed: at-least-once, never a gap.
//!
//! ```text
//! beltbox-cursor 1 <spool epoch> <seq>\n
//! ```
//!
//! A cursor that cannot be read or parsed (a technician's edit, storage that lied about
//! a sync), that belongs to another spool (its epoch differs: the spool was started
//! afresh), or that points past the spool's end is reported and read as 0: everything
//! still spooled is sent again, and the receiver drops the duplicates by message id.
//! Never a lost record.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    #[error("cursor {}: {op}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

const TAG: &str = "beltbox-cursor 1 ";

/// A persisted cursor.
#[derive(Debug)]
pub struct Cursor {
    path: PathBuf,
    epoch: String,
    seq: u64,
}

/// What reading a cursor found, when it was not simply a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Unreadable or not in the format: read as 0 (everything is sent again).
    Damaged(String),
}

impl Cursor {
    /// Reads the cursor at `path` for the spool of `epoch` (absent: 0). A damaged file,
    /// or one of another epoch, is reported in the second value and read as 0.
    pub fn open(path: &Path, epoch: &str) -> Result<(Cursor, Option<Fault>), CursorError> {
        let (seq, fault) = match fs::read(path) {
            Ok(b) => match parse(&b) {
                Some((e, seq)) if e == epoch => (seq, None),
                Some((e, seq)) => (
                    0,
                    Some(Fault::Damaged(format!(
                        "{}: confirmed {seq} of spool epoch {e}, but the spool is epoch {epoch} (started afresh); sending everything spooled",
                        path.display()
                    ))),
                ),
                None => (
                    0,
                    Some(Fault::Damaged(format!(
                        "{}: not a cursor ({} bytes); sending everything spooled again",
                        path.display(),
                        b.len()
                    ))),
                ),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => (0, None),
            Err(e) => (
                0,
                Some(Fault::Damaged(format!(
                    "{}: {e}; sending everything spooled again",
                    path.display()
                ))),
            ),
        };
        Ok((
            Cursor {
                path: path.to_path_buf(),
                epoch: epoch.to_string(),
                seq,
            },
            fault,
        ))
    }

    /// The last confirmed sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Moves the cursor back to 0 (in memory) when it points past the spool's end, `end`:
    /// it cannot be trusted, so everything spooled is sent again. The next
    /// [`Cursor::advance`] persists the new position.
    pub fn reset_if_past(&mut self, end: u64) -> bool {
        if self.seq > end {
            self.seq = 0;
            true
        } else {
            false
        }
    }

    /// Persists `seq` as confirmed (atomic replace, synced).
    pub fn advance(&mut self, seq: u64) -> Result<(), CursorError> {
        let tmp = self.path.with_extension("tmp");
        let io_at = |op: &'static str, p: &Path| {
            let path = p.to_path_buf();
            move |source| CursorError::Io { op, path, source }
        };
        let mut f = File::create(&tmp).map_err(io_at("create", &tmp))?;
        f.write_all(format!("{TAG}{} {seq}\n", self.epoch).as_bytes())
            .map_err(io_at("write", &tmp))?;
        f.sync_data().map_err(io_at("sync", &tmp))?;
        drop(f);
        fs::rename(&tmp, &self.path).map_err(io_at("rename", &self.path))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_at("sync", dir))?;
        }
        self.seq = seq;
        Ok(())
    }
}

fn parse(b: &[u8]) -> Option<(&str, u64)> {
    let (epoch, seq) = std::str::from_utf8(b)
        .ok()?
        .strip_prefix(TAG)?
        .strip_suffix('\n')?
        .split_once(' ')?;
    Some((epoch, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_survives_a_reopen_and_damage_reads_as_zero() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("results.mqtt");
        let (mut c, fault) = Cursor::open(&p, "e1").unwrap();
        assert_eq!((c.seq(), fault), (0, None));
        c.advance(41).unwrap();
        c.advance(42).unwrap();
        assert_eq!(Cursor::open(&p, "e1").unwrap().0.seq(), 42);
        // Another spool's cursor (the spool was started afresh): everything again.
        let (c, fault) = Cursor::open(&p, "e2").unwrap();
        assert_eq!(c.seq(), 0);
        assert!(matches!(fault, Some(Fault::Damaged(m)) if m.contains("started afresh")));
        for bad in [
            &b""[..],
            b"beltbox-cursor 1 e1 4",
            b"42\n",
            b"\xff\xfe",
            b"beltbox-cursor 1 e1 -3\n",
        ] {
            fs::write(&p, bad).unwrap();
            let (c, fault) = Cursor::open(&p, "e1").unwrap();
            assert_eq!(c.seq(), 0, "{bad:?}");
            assert!(matches!(fault, Some(Fault::Damaged(_))), "{bad:?}");
        }
    }

    #[test]
    fn a_cursor_past_the_end_starts_over() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c");
        fs::write(&p, "beltbox-cursor 1 e 900\n").unwrap();
        let (mut c, fault) = Cursor::open(&p, "e").unwrap();
        assert_eq!((c.seq(), fault), (900, None));
        assert!(c.reset_if_past(12));
        assert_eq!(c.seq(), 0);
        assert!(!c.reset_if_past(12));
    }
}
