//! A model package on disk: manifest + files, each verified by sha256 before use.
//!
//! Every read goes through [`Package::read`], which hashes the bytes as it reads them and
//! returns exactly those bytes, so what is used is what was verified (no check-then-reopen
//! window). Each file is hashed once: [`Package::open`] parses the manifest and checks
//! that the listed files exist; the loader reads (and so verifies) the model, labels and
//! golden files as it uses them, and [`Package::verify_unread`] streams whatever the load
//! did not read, so a package is whole before its model is admitted.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::manifest::{Manifest, ManifestError};

/// Largest file a package may hold in memory (the model, which the backend parses from
/// bytes; labels; golden tensors); refuses a runaway file before reading it whole. Files
/// that are only verified are streamed and have no such limit.
const MAX_FILE_BYTES: u64 = 512 * 1024 * 1024;

/// Read and hash in pieces of this size: one pass over the file, no second buffer.
const CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("model package {0}: not found (expected a directory containing manifest.toml)")]
    NotFound(PathBuf),
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{path}: sha256 mismatch (manifest says {expected}, file has {actual}); the package is corrupt or was tampered with")]
    HashMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{path}: file is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error(
        "{path}: is not listed in [files] of the manifest, refusing to use an unverified file"
    )]
    Unlisted { path: PathBuf },
}

#[derive(Debug)]
pub struct Package {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// Files whose hash has been checked by a read (see [`Package::verify_unread`]).
    verified: Mutex<BTreeSet<String>>,
}

impl Package {
    /// Opens a package directory: parses the manifest strictly and checks that every
    /// listed file exists. Hashes are checked when files are read (see the module docs).
    pub fn open(dir: &Path) -> Result<Package, PackageError> {
        let manifest_path = dir.join("manifest.toml");
        if !manifest_path.is_file() {
            return Err(PackageError::NotFound(dir.to_path_buf()));
        }
        let text = fs::read_to_string(&manifest_path).map_err(|source| PackageError::Io {
            path: manifest_path.clone(),
            source,
        })?;
        let manifest = Manifest::parse(&text, &manifest_path)?;
        let package = Package {
            dir: dir.to_path_buf(),
            manifest,
            verified: Mutex::new(BTreeSet::new()),
        };
        // A missing file is an error now, before any build, not after a slow one.
        for rel in package.manifest.files.keys() {
            let path = package.dir.join(rel);
            fs::metadata(&path).map_err(|source| PackageError::Io { path, source })?;
        }
        Ok(package)
    }

    /// Reads a package file, hashing it in the same pass, and returns its bytes only if
    /// they match the manifest hash.
    pub fn read(&self, rel: &str) -> Result<Vec<u8>, PackageError> {
        let mut bytes = Vec::new();
        self.hash_file(rel, Some(&mut bytes))?;
        Ok(bytes)
    }

    /// Verifies, by streaming, every listed file no read has verified yet. After this,
    /// every file of the package has been hashed exactly once.
    pub fn verify_unread(&self) -> Result<(), PackageError> {
        let unread: Vec<String> = {
            let done = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            self.manifest
                .files
                .keys()
                .filter(|k| !done.contains(*k))
                .cloned()
                .collect()
        };
        for rel in unread {
            self.hash_file(&rel, None)?;
        }
        Ok(())
    }

    /// Hashes `rel` in one pass, keeping its bytes in `keep` when given (bounded by
    /// [`MAX_FILE_BYTES`]), and checks the hash against the manifest.
    fn hash_file(&self, rel: &str, mut keep: Option<&mut Vec<u8>>) -> Result<(), PackageError> {
        let path = self.dir.join(rel);
        let expected = self
            .manifest
            .files
            .get(rel)
            .ok_or_else(|| PackageError::Unlisted { path: path.clone() })?;
        let io = |source| PackageError::Io {
            path: path.clone(),
            source,
        };
        let mut file = fs::File::open(&path).map_err(io)?;
        if let Some(buf) = keep.as_deref_mut() {
            let len = file.metadata().map_err(io)?.len();
            if len > MAX_FILE_BYTES {
                return Err(PackageError::TooLarge { path });
            }
            buf.reserve_exact(len as usize);
        }
        let mut hasher = Sha256::new();
        let mut chunk = vec![0u8; CHUNK];
        let mut total = 0u64;
        loop {
            let n = match file.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io(e)),
            };
            total += n as u64;
            hasher.update(&chunk[..n]);
            if let Some(buf) = keep.as_deref_mut() {
                // The file may grow between metadata and read: the bound is on bytes read.
                if total > MAX_FILE_BYTES {
                    return Err(PackageError::TooLarge { path });
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        }
        let actual = hex(&hasher.finalize());
        if &actual != expected {
            return Err(PackageError::HashMismatch {
                path,
                expected: expected.clone(),
                actual,
            });
        }
        self.verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(rel.to_string());
        Ok(())
    }

    /// The sha256 of the model file, as recorded (and verified) in the manifest.
    pub fn model_sha256(&self) -> &str {
        self.manifest
            .files
            .get(&self.manifest.model.file)
            .map(String::as_str)
            .unwrap_or("")
    }

    /// Labels of output 0, one per line; empty when the manifest names none.
    pub fn labels(&self) -> Result<Vec<String>, PackageError> {
        self.label_file(
            self.manifest
                .outputs
                .first()
                .and_then(|o| o.labels.as_deref()),
        )
    }

    /// The `[detection]` class labels (empty without a labels file).
    pub fn detection_labels(&self) -> Result<Vec<String>, PackageError> {
        self.label_file(
            self.manifest
                .detection
                .as_ref()
                .and_then(|d| d.labels.as_deref()),
        )
    }

    /// One label per line of a package file (verified like every file it reads).
    fn label_file(&self, rel: Option<&str>) -> Result<Vec<String>, PackageError> {
        let Some(rel) = rel else {
            return Ok(Vec::new());
        };
        let bytes = self.read(rel)?;
        Ok(String::from_utf8_lossy(&bytes)
            .lines()
            .map(|l| l.trim_end().to_string())
            .collect())
    }
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where bundled package names are looked up, in order: `extra` (e.g. the service
/// config's `models.dir`), `$BELTBOX_MODELS_DIR`, `./models`, `/usr/share/beltbox/models`.
pub fn search_dirs(extra: Option<&Path>) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = extra.map(Path::to_path_buf).into_iter().collect();
    if let Some(d) = std::env::var_os("BELTBOX_MODELS_DIR") {
        roots.push(d.into());
    }
    roots.push("models".into());
    roots.push("/usr/share/beltbox/models".into());
    roots
}

/// A package argument: an existing package directory (or anything with a `/`, so a
/// mistyped path is reported as that path), else the name of a bundled package.
pub fn resolve(arg: &str, extra: Option<&Path>) -> Option<PathBuf> {
    let direct = PathBuf::from(arg);
    if direct.join("manifest.toml").is_file() || arg.contains('/') {
        return Some(direct);
    }
    search_dirs(extra)
        .into_iter()
        .map(|r| r.join(arg))
        .find(|p| p.join("manifest.toml").is_file())
}
