//! One record on disk, little-endian:
//!
//! ```text
//! magic u32 "BBSR" | len u32 | seq u64 | crc u32 = crc32(len, seq, payload) | payload (len bytes)
//! ```
//!
//! The magic lets a scan find the next record after a damaged one (a bit flipped in a
//! length would otherwise lose the rest of the segment); the CRC covers the length and the
//! sequence number too, so a record whose header was damaged is never taken for another.
//! Parsing faces files a power cut or a disk fault damaged: it never panics and never
//! allocates more than the bytes it was given (`fuzz` tests below).

/// "BBSR" read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"BBSR");
/// Bytes before the payload.
pub const HEADER: usize = 20;
/// The largest payload a record may carry (an inference result is a few hundred bytes; a
/// kept low-confidence input, a frame, is bounded by the caller).
pub const MAX_PAYLOAD: usize = 16 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("record of {0} bytes is over the {MAX_PAYLOAD}-byte limit")]
    TooLarge(usize),
}

fn crc(len: u32, seq: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&seq.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// The record's bytes.
pub fn encode(seq: u64, payload: &[u8]) -> Result<Vec<u8>, RecordError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(RecordError::TooLarge(payload.len()));
    }
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&crc(len, seq, payload).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// What [`decode`] found at an offset.
#[derive(Debug, PartialEq, Eq)]
pub enum Found<'a> {
    /// A whole, intact record and the bytes it took.
    Record {
        seq: u64,
        payload: &'a [u8],
        size: usize,
    },
    /// The bytes end inside what looks like a record (a write cut short): the tail.
    Short,
    /// Not a record here.
    Bad,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at + 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

/// The record at the start of `b`.
pub fn decode(b: &[u8]) -> Found<'_> {
    if b.len() < HEADER {
        // A header cut short, if what there is could start one.
        let magic = MAGIC.to_le_bytes();
        let n = b.len().min(4);
        return if b[..n] == magic[..n] {
            Found::Short
        } else {
            Found::Bad
        };
    }
    let (Some(magic), Some(len), Some(seq), Some(sum)) =
        (u32_at(b, 0), u32_at(b, 4), u64_at(b, 8), u32_at(b, 16))
    else {
        return Found::Bad;
    };
    if magic != MAGIC || len as usize > MAX_PAYLOAD {
        return Found::Bad;
    }
    let size = HEADER + len as usize;
    let Some(payload) = b.get(HEADER..size) else {
        return Found::Short;
    };
    if crc(len, seq, payload) != sum {
        return Found::Bad;
    }
    Found::Record { seq, payload, size }
}

/// Where the next intact record starts at or after `from`, if any.
pub fn resync(b: &[u8], from: usize) -> Option<usize> {
    let magic = MAGIC.to_le_bytes();
    let mut at = from;
    while let Some(i) = b.get(at..)?.windows(4).position(|w| w == magic) {
        let start = at + i;
        if let Found::Record { .. } = decode(&b[start..]) {
            return Some(start);
        }
        at = start + 1;
    }
    None
}

/// The intact records of a segment's bytes, in order, skipping damage (the scan resumes at
/// the next intact record). After the walk, [`Records::end`] is where the last intact
/// record ends (anything after it is a torn tail) and [`Records::damaged`] the bytes
/// skipped before it.
pub struct Records<'a> {
    b: &'a [u8],
    at: usize,
    pub end: usize,
    pub damaged: u64,
}

impl<'a> Records<'a> {
    pub fn new(b: &'a [u8]) -> Records<'a> {
        Records {
            b,
            at: 0,
            end: 0,
            damaged: 0,
        }
    }
}

impl<'a> Iterator for Records<'a> {
    /// (seq, payload)
    type Item = (u64, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.b;
        while self.at < b.len() {
            match decode(&b[self.at..]) {
                Found::Record { seq, payload, size } => {
                    self.at += size;
                    self.end = self.at;
                    return Some((seq, payload));
                }
                Found::Short | Found::Bad => {
                    // Nothing intact after it: the tail.
                    let next = resync(b, self.at + 1)?;
                    self.damaged += (next - self.at) as u64;
                    self.at = next;
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_any_damage_is_seen() {
        let r = encode(7, b"{\"top1\":3}").unwrap();
        assert_eq!(
            decode(&r),
            Found::Record {
                seq: 7,
                payload: b"{\"top1\":3}",
                size: r.len()
            }
        );
        for i in 0..r.len() {
            let mut d = r.clone();
            d[i] ^= 0x40;
            assert!(!matches!(decode(&d), Found::Record { .. }), "byte {i}");
        }
        assert_eq!(decode(&r[..r.len() - 1]), Found::Short);
        assert_eq!(decode(&r[..3]), Found::Short);
        assert_eq!(decode(b"xy"), Found::Bad);
        assert_eq!(
            encode(0, &vec![0; MAX_PAYLOAD + 1]),
            Err(RecordError::TooLarge(MAX_PAYLOAD + 1))
        );
    }

    #[test]
    fn a_scan_finds_the_next_record_after_a_damaged_one() {
        let mut b = encode(1, b"one").unwrap();
        let second = b.len();
        b.extend(encode(2, b"two").unwrap());
        let third = b.len();
        b.extend(encode(3, b"three").unwrap());
        b[second + 5] ^= 1; // the second record's length: now past the end
        assert_eq!(decode(&b[second..]), Found::Short);
        assert_eq!(resync(&b, second + 1), Some(third));
        assert_eq!(resync(&b, third + 1), None);
    }

    mod fuzz {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]

            #[test]
            fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..256)) {
                let _ = decode(&b);
                let _ = resync(&b, 0);
            }

            #[test]
            fn damaged_records_are_never_taken_for_good_ones(
                payload in proptest::collection::vec(any::<u8>(), 0..64),
                seq in any::<u64>(),
                flip in any::<usize>(),
            ) {
                let mut r = encode(seq, &payload).unwrap();
                let i = flip % r.len();
                r[i] ^= 0x01;
                let taken = matches!(decode(&r), Found::Record { .. });
                prop_assert!(!taken, "byte {} flipped and still read as a record", i);
            }
        }
    }
}
