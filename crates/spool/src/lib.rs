//! beltbox's durable result spool (issue #16): every inference result is appended here
//! before its response is sent, and uploaded later, so a result the box acknowledged
//! survives a crash, a power cut and a network that is down for hours.
//!
//! | module | concern | I/O? |
//! |---|---|---|
//! | [`record`] | one record's framing: magic, length, sequence number, CRC; finding the next intact record after damage | no |
//! | [`spool`] | segment files, group commit, the size bound, recovery on open, reading for upload | files |
//! | [`cursor`] | an uploader's persisted position, replaced atomically | files |
//! | [`envelope`] | the message a record travels in (id, box, stream, seq, record) | no |
//! | [`mqtt`] | the MQTT sink: QoS 1 batches, confirmed by PUBACK | network |
//! | [`http_sink`] | the HTTP sink: JSON-lines batches with an idempotency key | network |
//! | [`upload`] | the uploader thread: one task per stream and sink, cursors, backoff with jitter | thread |
//!
//! Below the service and beside the core: it knows files, bytes and brokers, not models.

pub mod cursor;
pub mod envelope;
pub mod http_sink;
pub mod mqtt;
pub mod record;
pub mod spool;
pub mod upload;

pub use spool::{durable, Options, Progress, Recovery, Spool, SpoolError, Stats};
pub use upload::{SinkStats, UploadConfig, Uploader};

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const WAIT: Duration = Duration::from_secs(10);

    fn opts(dir: &std::path::Path) -> Options {
        Options {
            segment_bytes: 1024,
            max_bytes: 1 << 20,
            ..Options::new(dir)
        }
    }

    #[test]
    fn committed_records_survive_a_reopen_in_order() {
        let d = tempfile::tempdir().unwrap();
        let (s, rec) = Spool::open(opts(d.path())).unwrap();
        assert_eq!(
            rec,
            Recovery {
                segments: 0,
                ..Recovery::default()
            }
        );
        for i in 0..100u32 {
            let seq = s.commit(format!("result {i}").as_bytes(), WAIT).unwrap();
            assert_eq!(seq, u64::from(i) + 1);
        }
        assert!(s.stats().segments > 1, "{:?}", s.stats());
        s.close();
        drop(s);
        let (s, rec) = Spool::open(opts(d.path())).unwrap();
        assert_eq!(rec.records, 100);
        assert_eq!(rec.torn_bytes + rec.damaged_bytes, 0);
        let all = s.read_from(1, 1000).unwrap();
        assert_eq!(all.len(), 100);
        assert_eq!(all[41], (42, b"result 41".to_vec()));
        assert_eq!(
            s.read_from(95, 3)
                .unwrap()
                .iter()
                .map(|r| r.0)
                .collect::<Vec<_>>(),
            vec![95, 96, 97]
        );
        // Sequence numbers go on after a reopen.
        assert_eq!(s.commit(b"next", WAIT).unwrap(), 101);
        s.close();
    }

    #[test]
    fn concurrent_commits_share_syncs() {
        let d = tempfile::tempdir().unwrap();
        let (s, _) = Spool::open(Options {
            commit_interval: Duration::from_millis(5),
            ..opts(d.path())
        })
        .unwrap();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let s = std::sync::Arc::clone(&s);
                std::thread::spawn(move || {
                    for i in 0..20 {
                        s.commit(format!("{t}/{i}").as_bytes(), WAIT).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let st = s.stats();
        assert_eq!((st.written, st.durable), (160, 160));
        // 160 commits; with eight writers waiting together, far fewer syncs.
        assert!(st.syncs < 100, "{st:?}");
        s.close();
    }

    #[test]
    fn a_torn_tail_is_truncated_and_everything_before_it_kept() {
        let d = tempfile::tempdir().unwrap();
        let (s, _) = Spool::open(opts(d.path())).unwrap();
        for i in 0..10u32 {
            s.commit(&i.to_le_bytes(), WAIT).unwrap();
        }
        s.close();
        drop(s);
        let seg = last_segment(d.path());
        let len = std::fs::metadata(&seg).unwrap().len();
        // Half of a record written when the power went.
        let half = record::encode(11, b"cut short").unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        std::io::Write::write_all(&mut f, &half[..half.len() / 2]).unwrap();
        drop(f);
        let (s, rec) = Spool::open(opts(d.path())).unwrap();
        assert_eq!(rec.records, 10);
        assert_eq!(rec.torn_bytes, (half.len() / 2) as u64);
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), len);
        assert_eq!(s.read_from(1, 100).unwrap().len(), 10);
        s.close();
    }

    #[test]
    fn a_damaged_record_in_the_middle_loses_only_itself() {
        let d = tempfile::tempdir().unwrap();
        let (s, _) = Spool::open(Options {
            segment_bytes: 1 << 20,
            ..opts(d.path())
        })
        .unwrap();
        for i in 0..10u32 {
            s.commit(format!("record {i}").as_bytes(), WAIT).unwrap();
        }
        s.close();
        drop(s);
        let seg = first_segment(d.path());
        let mut b = std::fs::read(&seg).unwrap();
        let one = record::encode(1, b"record 0").unwrap().len();
        b[4 * one + 22] ^= 0xff; // a payload byte of the fifth record
        std::fs::write(&seg, &b).unwrap();
        std::fs::write(d.path().join("notes.txt"), b"a technician's file").unwrap();
        let (s, rec) = Spool::open(opts(d.path())).unwrap();
        assert_eq!(rec.records, 9);
        assert_eq!(rec.damaged_bytes, one as u64);
        assert_eq!(rec.foreign, vec!["notes.txt".to_string()]);
        let seqs: Vec<u64> = s.read_from(1, 100).unwrap().iter().map(|r| r.0).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 6, 7, 8, 9, 10]);
        s.close();
    }

    #[test]
    fn a_full_spool_drops_the_oldest_and_counts_them() {
        let d = tempfile::tempdir().unwrap();
        let (s, _) = Spool::open(Options {
            segment_bytes: 1000,
            max_bytes: 4000,
            ..opts(d.path())
        })
        .unwrap();
        for i in 0..200u32 {
            s.commit(format!("{i:080}").as_bytes(), WAIT).unwrap();
        }
        let st = s.stats();
        assert!(st.bytes <= 4000 + 1000, "{st:?}");
        assert!(st.dropped > 0, "{st:?}");
        let kept = s.read_from(1, 1000).unwrap();
        assert_eq!(kept.len() as u64 + st.dropped, 200);
        // What is kept is the newest, contiguous to the end.
        assert_eq!(kept.last().unwrap().0, 200);
        assert_eq!(kept[0].0, st.dropped + 1);
        s.close();
    }

    #[test]
    fn a_spool_bounded_by_count_drops_the_oldest_segments() {
        let d = tempfile::tempdir().unwrap();
        let (s, _) = Spool::open(Options {
            segment_bytes: 200,
            max_records: 20,
            ..opts(d.path())
        })
        .unwrap();
        for i in 0..100u32 {
            s.commit(format!("{i:040}").as_bytes(), WAIT).unwrap();
        }
        let kept = s.read_from(1, 1000).unwrap();
        // Whole segments (4 records each here) go until the count is within the bound.
        assert!((17..=20).contains(&kept.len()), "{}", kept.len());
        assert_eq!(kept.len() as u64 + s.stats().dropped, 100);
        assert_eq!(kept.last().unwrap().0, 100);
        s.close();
    }

    fn segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .filter(|p| std::fs::metadata(p).unwrap().len() > 0)
            .collect();
        v.sort();
        v
    }

    fn first_segment(dir: &std::path::Path) -> std::path::PathBuf {
        segments(dir).remove(0)
    }

    fn last_segment(dir: &std::path::Path) -> std::path::PathBuf {
        segments(dir).pop().unwrap()
    }
}
