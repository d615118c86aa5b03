//! Model package archives: a package directory as a tar stream, gzip-compressed.
//!
//! [`pack`] is the publisher's side: deterministic (entries sorted, owner 0, mtime 0,
//! mode 0644/0755), so the same package gives the same bytes and the same sha256 in the
//! channel's signed metadata. [`unpack`] is the box's side and treats the archive as
//! hostile even after its sha256 matched signed metadata (a signing key can leak, and
//! `ota install --unsigned` has no metadata at all): only regular files and directories,
//! every path relative and inside the destination, no entry twice, sizes and counts capped
//! before anything is written, permissions from us and not from the archive.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive entry `{0}` leaves the package directory (absolute path or `..`): refused")]
    Traversal(String),
    #[error("archive entry `{path}` is a {kind}: only regular files and directories are accepted")]
    Kind { path: String, kind: &'static str },
    #[error("archive entry `{0}` appears twice")]
    Duplicate(String),
    #[error("archive unpacks to more than {limit} bytes (at `{path}`): refused")]
    TooLarge { path: String, limit: u64 },
    #[error("archive has more than {0} entries: refused")]
    TooManyEntries(usize),
    #[error("archive is truncated or corrupt: {0}")]
    Corrupt(String),
    #[error("archive has no manifest.toml at its top level")]
    NoManifest,
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("package directory {}: `{name}` is a {kind}; a package holds regular files and directories only", dir.display())]
    PackKind {
        dir: PathBuf,
        name: String,
        kind: &'static str,
    },
}

fn io_at<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ArchiveError + 'a {
    move |source| ArchiveError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What unpacking may produce at most.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of file content, all entries together.
    pub max_bytes: u64,
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 1 << 30,
            max_entries: 10_000,
        }
    }
}

/// A package directory (files and subdirectories) as a `.tar.gz`, byte-for-byte
/// reproducible.
pub fn pack(dir: &Path) -> Result<Vec<u8>, ArchiveError> {
    let mut files = Vec::new();
    collect(dir, Path::new(""), &mut files)?;
    files.sort();
    let gz = GzEncoder::new(Vec::new(), flate2::Compression::best());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    for (rel, is_dir) in &files {
        let full = dir.join(rel);
        let mut h = tar::Header::new_ustar();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        if *is_dir {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            tar.append_data(&mut h, rel, io::empty())
                .map_err(io_at("archive", &full))?;
        } else {
            let f = File::open(&full).map_err(io_at("open", &full))?;
            let len = f.metadata().map_err(io_at("stat", &full))?.len();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(len);
            tar.append_data(&mut h, rel, f)
                .map_err(io_at("archive", &full))?;
        }
    }
    let gz = tar.into_inner().map_err(io_at("archive", dir))?;
    gz.finish().map_err(io_at("compress", dir))
}

fn collect(root: &Path, rel: &Path, out: &mut Vec<(PathBuf, bool)>) -> Result<(), ArchiveError> {
    let dir = root.join(rel);
    for entry in fs::read_dir(&dir).map_err(io_at("list", &dir))? {
        let entry = entry.map_err(io_at("list", &dir))?;
        let name = rel.join(entry.file_name());
        let ft = entry.file_type().map_err(io_at("stat", &entry.path()))?;
        if ft.is_dir() {
            out.push((name.clone(), true));
            collect(root, &name, out)?;
        } else if ft.is_file() {
            out.push((name, false));
        } else {
            return Err(ArchiveError::PackKind {
                dir: root.to_path_buf(),
                name: name.display().to_string(),
                kind: if ft.is_symlink() {
                    "symbolic link"
                } else {
                    "special file"
                },
            });
        }
    }
    Ok(())
}

/// Bytes allowed after tar's end-of-archive blocks (tar pads to whole records).
const TRAILER_MAX: u64 = 1 << 20;

/// What [`unpack`] wrote.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Unpacked {
    pub files: usize,
    pub bytes: u64,
}

/// Unpacks a `.tar.gz` (or plain `.tar`) package archive into `dest`, which must exist and
/// be empty. On error `dest` may hold part of the package: the caller owns it (a staging
/// directory) and removes it.
pub fn unpack(archive: impl Read, dest: &Path, limits: Limits) -> Result<Unpacked, ArchiveError> {
    let mut archive = io::BufReader::new(archive);
    let gzip = {
        use io::BufRead;
        let head = archive.fill_buf().map_err(io_at("read", dest))?;
        head.starts_with(&[0x1f, 0x8b])
    };
    let reader: Box<dyn Read> = if gzip {
        Box::new(GzDecoder::new(archive))
    } else {
        Box::new(archive)
    };
    let mut tar = tar::Archive::new(reader);
    let corrupt = |e: io::Error| ArchiveError::Corrupt(e.to_string());
    let mut done = Unpacked::default();
    let mut seen = std::collections::BTreeSet::new();
    let mut entries_n = 0usize;
    for entry in tar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        entries_n += 1;
        if entries_n > limits.max_entries {
            return Err(ArchiveError::TooManyEntries(limits.max_entries));
        }
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let rel = safe_relative(&raw)?;
        if rel.as_os_str().is_empty() {
            // "./" itself.
            continue;
        }
        let kind = entry.header().entry_type();
        let out = dest.join(&rel);
        match kind {
            tar::EntryType::Directory => {
                if !seen.insert(rel.clone()) {
                    return Err(ArchiveError::Duplicate(raw));
                }
                fs::create_dir_all(&out).map_err(io_at("create", &out))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if !seen.insert(rel.clone()) {
                    return Err(ArchiveError::Duplicate(raw));
                }
                let size = entry.header().size().map_err(corrupt)?;
                let left = limits.max_bytes - done.bytes;
                if size > left {
                    return Err(ArchiveError::TooLarge {
                        path: raw,
                        limit: limits.max_bytes,
                    });
                }
                if let Some(parent) = out.parent() {
                    fs::create_dir_all(parent).map_err(io_at("create", parent))?;
                }
                // create_new: an entry can never write through something already there.
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .open(&out)
                    .map_err(io_at("create", &out))?;
                let n = io::copy(&mut (&mut entry).take(size), &mut f).map_err(corrupt)?;
                if n != size {
                    return Err(ArchiveError::Corrupt(format!(
                        "`{raw}` ends after {n} of its {size} bytes"
                    )));
                }
                f.flush().map_err(io_at("write", &out))?;
                done.files += 1;
                done.bytes += size;
            }
            other => {
                return Err(ArchiveError::Kind {
                    path: raw,
                    kind: kind_name(other),
                })
            }
        }
    }
    // Read to the end: tar stops at its end-of-archive blocks, and gzip checks its CRC and
    // length only at the end of the stream, so a cut or corrupted trailer shows only here.
    let mut rest = tar.into_inner().take(TRAILER_MAX + 1);
    let after = io::copy(&mut rest, &mut io::sink()).map_err(corrupt)?;
    if after > TRAILER_MAX {
        return Err(ArchiveError::Corrupt(format!(
            "more than {TRAILER_MAX} bytes after the end of the archive"
        )));
    }
    if !dest.join("manifest.toml").is_file() {
        return Err(ArchiveError::NoManifest);
    }
    Ok(done)
}

/// The entry's path as a relative path of plain components (a leading `./` allowed).
fn safe_relative(raw: &str) -> Result<PathBuf, ArchiveError> {
    let mut out = PathBuf::new();
    for c in Path::new(raw).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(ArchiveError::Traversal(raw.to_string()))
            }
        }
    }
    Ok(out)
}

fn kind_name(t: tar::EntryType) -> &'static str {
    match t {
        tar::EntryType::Symlink => "symbolic link",
        tar::EntryType::Link => "hard link",
        tar::EntryType::Char => "character device",
        tar::EntryType::Block => "block device",
        tar::EntryType::Fifo => "FIFO",
        tar::EntryType::GNUSparse => "sparse file",
        _ => "special entry",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(dir: &Path) {
        fs::write(dir.join("manifest.toml"), b"name = \"x\"\n").unwrap();
        fs::create_dir(dir.join("golden")).unwrap();
        fs::write(dir.join("golden/000.pgm"), vec![7u8; 1000]).unwrap();
    }

    fn raw_tar(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, "manifest.toml", &b"x=1"[..]).unwrap();
        build(&mut b);
        b.into_inner().unwrap()
    }

    #[test]
    fn pack_is_reproducible_and_round_trips() {
        let src = tempfile::tempdir().unwrap();
        package(src.path());
        let a = pack(src.path()).unwrap();
        let b = pack(src.path()).unwrap();
        assert_eq!(a, b);
        let out = tempfile::tempdir().unwrap();
        let got = unpack(&a[..], out.path(), Limits::default()).unwrap();
        assert_eq!(
            got,
            Unpacked {
                files: 2,
                bytes: 1000 + 11
            }
        );
        assert_eq!(
            fs::read(out.path().join("golden/000.pgm")).unwrap(),
            vec![7u8; 1000]
        );
    }

    #[test]
    fn path_traversal_is_refused() {
        // tar::Builder refuses to write `..` itself; write the name into the header raw.
        let bytes = raw_tar(|b| {
            let mut h = tar::Header::new_gnu();
            h.as_gnu_mut().unwrap().name[..12].copy_from_slice(b"../evil.toml");
            h.set_size(1);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            b.append(&h, &b"x"[..]).unwrap();
        });
        let out = tempfile::tempdir().unwrap();
        let e = unpack(&bytes[..], &out.path().join("p"), Limits::default());
        assert!(matches!(e, Err(ArchiveError::Traversal(_))), "{e:?}");
        assert!(!out.path().join("evil.toml").exists());
    }

    #[test]
    fn symlink_hardlink_and_device_are_refused() {
        for (t, kind) in [
            (tar::EntryType::Symlink, "symbolic link"),
            (tar::EntryType::Link, "hard link"),
            (tar::EntryType::Char, "character device"),
            (tar::EntryType::Fifo, "FIFO"),
        ] {
            let bytes = raw_tar(|b| {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(t);
                h.set_size(0);
                if matches!(t, tar::EntryType::Symlink | tar::EntryType::Link) {
                    h.set_link_name("/etc/shadow").unwrap();
                }
                b.append_data(&mut h, "model.onnx", io::empty()).unwrap();
            });
            let out = tempfile::tempdir().unwrap();
            match unpack(&bytes[..], out.path(), Limits::default()) {
                Err(ArchiveError::Kind { kind: k, .. }) => assert_eq!(k, kind),
                other => panic!("{kind}: {other:?}"),
            }
            assert!(fs::symlink_metadata(out.path().join("model.onnx")).is_err());
        }
    }

    #[test]
    fn over_size_and_duplicates_and_truncation_are_refused() {
        let src = tempfile::tempdir().unwrap();
        package(src.path());
        let a = pack(src.path()).unwrap();
        let out = tempfile::tempdir().unwrap();
        let small = Limits {
            max_bytes: 500,
            max_entries: 100,
        };
        assert!(matches!(
            unpack(&a[..], out.path(), small),
            Err(ArchiveError::TooLarge { .. })
        ));
        let dup = raw_tar(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_size(3);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, "manifest.toml", &b"y=2"[..]).unwrap();
        });
        let out = tempfile::tempdir().unwrap();
        assert!(matches!(
            unpack(&dup[..], out.path(), Limits::default()),
            Err(ArchiveError::Duplicate(_))
        ));
        for cut in [a.len() / 2, a.len() - 9] {
            let out = tempfile::tempdir().unwrap();
            let e = unpack(&a[..cut], out.path(), Limits::default());
            assert!(
                matches!(e, Err(ArchiveError::Corrupt(_))),
                "cut {cut}: {e:?}"
            );
        }
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn valid() -> Vec<u8> {
            let src = tempfile::tempdir().unwrap();
            package(src.path());
            pack(src.path()).unwrap()
        }

        /// Nothing is ever written beside `dest`: every file under `root` is in `dest`.
        fn contained(root: &Path, dest: &Path) {
            for e in fs::read_dir(root).unwrap() {
                let p = e.unwrap().path();
                assert!(p.starts_with(dest), "wrote {}", p.display());
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]

            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
                let root = tempfile::tempdir().unwrap();
                let dest = root.path().join("p");
                fs::create_dir(&dest).unwrap();
                let _ = unpack(&bytes[..], &dest, Limits::default());
                contained(root.path(), &dest);
            }

            #[test]
            fn a_damaged_archive_is_refused_or_unpacks_inside(
                flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)
            ) {
                // Damage the uncompressed tar (headers, names, sizes), where a flip lands
                // on structure rather than on a gzip CRC.
                let mut tarball = Vec::new();
                io::copy(&mut GzDecoder::new(&valid()[..]), &mut tarball).unwrap();
                for (i, b) in flips {
                    let at = i.index(tarball.len());
                    tarball[at] = b;
                }
                let root = tempfile::tempdir().unwrap();
                let dest = root.path().join("p");
                fs::create_dir(&dest).unwrap();
                let _ = unpack(&tarball[..], &dest, Limits { max_bytes: 1 << 20, max_entries: 64 });
                contained(root.path(), &dest);
            }
        }
    }
}
