//! A model package on disk: manifest + files, each verified by sha256 before use.
//!
//! Every read goes through `Package::read`, which hashes the bytes it returns, so what we
//! use is exactly what was verified (no check-then-reopen window).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::manifest::{Manifest, ManifestError};

/// Largest file a package may hold; refuses a runaway file before reading it whole.
const MAX_FILE_BYTES: u64 = 512 * 1024 * 1024;

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

#[derive(Debug, Clone)]
pub struct Package {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Package {
    /// Opens a package directory: parses the manifest strictly and verifies every file hash.
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
        };
        for rel in package.manifest.files.keys() {
            package.read(rel)?;
        }
        Ok(package)
    }

    /// Reads a package file and checks it against its manifest hash.
    pub fn read(&self, rel: &str) -> Result<Vec<u8>, PackageError> {
        let path = self.dir.join(rel);
        let expected = self
            .manifest
            .files
            .get(rel)
            .ok_or_else(|| PackageError::Unlisted { path: path.clone() })?;
        let bytes = read_bounded(&path)?;
        let actual = sha256_hex(&bytes);
        if &actual != expected {
            return Err(PackageError::HashMismatch {
                path,
                expected: expected.clone(),
                actual,
            });
        }
        Ok(bytes)
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
        match self
            .manifest
            .outputs
            .first()
            .and_then(|o| o.labels.as_deref())
        {
            None => Ok(Vec::new()),
            Some(rel) => {
                let bytes = self.read(rel)?;
                Ok(String::from_utf8_lossy(&bytes)
                    .lines()
                    .map(|l| l.trim_end().to_string())
                    .collect())
            }
        }
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, PackageError> {
    let io = |source| PackageError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(PackageError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
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
