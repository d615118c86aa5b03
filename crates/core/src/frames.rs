//! Recent frames: a few of the inputs a model served, kept on disk so that an OTA candidate
//! can be run beside the serving version on what the belt really sends (qualification's
//! shadow run, `beltbox_ota::qualify`).
//!
//! A frame is a directory `NNNNNNNNNNNN/` (a 12-digit sequence number) holding one file per
//! model input in input order: `I.npy` for a tensor (what the client sent, before any
//! preprocessing, so that a candidate with a different preprocessing is judged on the same
//! data) or `I.file` for an encoded file (a JPEG or PNG sent as KServe BYTES). Frames are
//! written under a temporary name and renamed in whole; the ring keeps the newest `keep`.
//! They are samples, not records: they are not synced, and a frame a power cut damaged is
//! skipped by [`read`], never fatal.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::npy;
use crate::preprocess::Elements;
use crate::tensor::{DType, TensorData};

#[derive(Debug, thiserror::Error)]
pub enum FramesError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: {problem}", path.display())]
    Bad { path: PathBuf, problem: String },
}

fn at<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FramesError + 'a {
    move |source| FramesError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// One input of a frame: the client's shape and elements.
pub type Input = (Vec<usize>, Elements);

/// Most inputs a frame may hold (a manifest allows no more).
const MAX_INPUTS: usize = crate::manifest::MAX_INPUTS;

/// Writes input `i` into `dir` as `I.npy` or `I.file`, streaming a tensor's data after its
/// header: at most the input and a 64 KiB buffer are in memory (the service reserves twice
/// a frame's bytes for it).
/// What [`encode`] wrote: a `.npy` tensor, or an encoded file (PNG, JPEG) as the client
/// sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoded {
    Npy,
    File,
}

impl Encoded {
    pub fn extension(self) -> &'static str {
        match self {
            Encoded::Npy => "npy",
            Encoded::File => "file",
        }
    }
}

/// Writes one input as a frame file's bytes: the npy header, then the elements streamed
/// (never built whole beside the input); or the one encoded file of a BYTES input.
pub fn encode(shape: &[usize], data: &Elements, w: &mut impl Write) -> std::io::Result<Encoded> {
    let mut tensor = |dtype: DType| w.write_all(&npy::header(shape, dtype));
    match data {
        Elements::F32(v) => {
            tensor(DType::Float32)?;
            for x in v {
                w.write_all(&x.to_le_bytes())?;
            }
        }
        Elements::I8(v) => {
            tensor(DType::Int8)?;
            for x in v {
                w.write_all(&x.to_le_bytes())?;
            }
        }
        Elements::U8(v) => {
            tensor(DType::Uint8)?;
            w.write_all(v)?;
        }
        Elements::Typed(d) => {
            tensor(d.dtype())?;
            w.write_all(&d.to_le_bytes())?;
        }
        // One encoded file per element; the service takes exactly one.
        Elements::Bytes(files) => {
            w.write_all(files.first().map_or(&[][..], |f| f.as_slice()))?;
            return Ok(Encoded::File);
        }
    }
    Ok(Encoded::Npy)
}

fn write_input(dir: &Path, i: usize, (shape, data): Input) -> Result<(), FramesError> {
    let kind = match data {
        Elements::Bytes(_) => Encoded::File,
        _ => Encoded::Npy,
    };
    let path = dir.join(format!("{i}.{}", kind.extension()));
    let file = File::create(&path).map_err(at("create", &path))?;
    let mut w = BufWriter::with_capacity(64 * 1024, file);
    encode(&shape, &data, &mut w).map_err(at("write", &path))?;
    w.flush().map_err(at("write", &path))
}

/// The frames kept for one model.
#[derive(Debug, Clone)]
pub struct Ring {
    dir: PathBuf,
    keep: usize,
}

impl Ring {
    pub fn new(dir: &Path, keep: usize) -> Ring {
        Ring {
            dir: dir.to_path_buf(),
            keep,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The frames on disk, oldest first.
    pub fn list(&self) -> Result<Vec<PathBuf>, FramesError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(at("list", &self.dir)(e)),
        };
        let mut out: Vec<(u64, PathBuf)> = entries
            .flatten()
            .filter_map(|e| {
                let seq = e.file_name().to_str()?.parse::<u64>().ok()?;
                Some((seq, e.path()))
            })
            .collect();
        out.sort();
        Ok(out.into_iter().map(|(_, p)| p).collect())
    }

    /// Adds a frame, then drops the oldest beyond `keep` (and leftovers of an interrupted
    /// write). Each input is freed once written.
    pub fn push(&self, inputs: Vec<Input>) -> Result<(), FramesError> {
        if self.keep == 0 {
            return Ok(());
        }
        fs::create_dir_all(&self.dir).map_err(at("create", &self.dir))?;
        let have = self.list()?;
        let next = have
            .last()
            .and_then(|p| p.file_name()?.to_str()?.parse::<u64>().ok())
            .map_or(0, |n| n + 1);
        let tmp = self.dir.join(format!(".tmp-{next}"));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir(&tmp).map_err(at("create", &tmp))?;
        for (i, input) in inputs.into_iter().enumerate() {
            write_input(&tmp, i, input)?;
        }
        let dest = self.dir.join(format!("{next:012}"));
        fs::rename(&tmp, &dest).map_err(at("rename", &dest))?;
        let mut all = have;
        all.push(dest);
        let excess = all.len().saturating_sub(self.keep);
        for old in &all[..excess] {
            fs::remove_dir_all(old).map_err(at("remove", old))?;
        }
        Ok(())
    }
}

/// Reads a frame back into the inputs the client sent.
pub fn read(frame: &Path) -> Result<Vec<Input>, FramesError> {
    let mut inputs = Vec::new();
    for i in 0..=MAX_INPUTS {
        let (npy_path, file_path) = (
            frame.join(format!("{i}.npy")),
            frame.join(format!("{i}.file")),
        );
        if npy_path.is_file() {
            let bytes = fs::read(&npy_path).map_err(at("read", &npy_path))?;
            let t = npy::parse(&bytes).map_err(|e| FramesError::Bad {
                path: npy_path.clone(),
                problem: e.to_string(),
            })?;
            let data = match t.data {
                TensorData::F32(v) => Elements::F32(v),
                TensorData::I8(v) => Elements::I8(v),
                TensorData::U8(v) => Elements::U8(v),
                other => Elements::Typed(other),
            };
            inputs.push((t.shape, data));
        } else if file_path.is_file() {
            let bytes = fs::read(&file_path).map_err(at("read", &file_path))?;
            inputs.push((vec![1], Elements::Bytes(vec![bytes])));
        } else {
            break;
        }
    }
    if inputs.is_empty() || inputs.len() > MAX_INPUTS {
        return Err(FramesError::Bad {
            path: frame.to_path_buf(),
            problem: format!("holds {} inputs", inputs.len()),
        });
    }
    Ok(inputs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_the_ring_keeps_the_newest() {
        let d = tempfile::tempdir().unwrap();
        let ring = Ring::new(&d.path().join("m"), 3);
        assert!(ring.list().unwrap().is_empty());
        for k in 0..5u8 {
            ring.push(vec![
                (vec![1, 2], Elements::F32(vec![f32::from(k), 0.5])),
                (vec![1], Elements::Bytes(vec![vec![k, 9, 9]])),
            ])
            .unwrap();
        }
        let frames = ring.list().unwrap();
        assert_eq!(frames.len(), 3);
        let first = read(&frames[0]).unwrap();
        assert_eq!(first[0].0, vec![1, 2]);
        assert!(matches!(&first[0].1, Elements::F32(v) if v == &vec![2.0, 0.5]));
        assert!(matches!(&first[1].1, Elements::Bytes(f) if f == &vec![vec![2, 9, 9]]));
    }

    #[test]
    fn a_damaged_frame_is_an_error_not_a_panic() {
        let d = tempfile::tempdir().unwrap();
        let ring = Ring::new(d.path(), 2);
        ring.push(vec![(vec![3], Elements::U8(vec![1, 2, 3]))])
            .unwrap();
        let f = &ring.list().unwrap()[0];
        fs::write(f.join("0.npy"), b"\x93NUMPY\x01").unwrap();
        assert!(read(f).is_err());
        fs::remove_file(f.join("0.npy")).unwrap();
        assert!(read(f).is_err());
    }
}
