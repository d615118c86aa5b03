//! A target's download that survives interruption: its bytes go to a partial file named
//! by the target's signed sha256 (`state_dir/ota/downloads/SHA256.part`), which outlives
//! the process, so a pull that a dropped connection, a reboot or a kill cut short resumes
//! where it stopped: by an HTTP `Range` request, or a seek in a directory channel.
//!
//! tough streams a target from its start and resumes a body by `Range` itself only after
//! a timeout; a reset connection ends its stream. What a resume appends is checked the way
//! tough checks a whole target: never more than the signed length, and the file's sha256
//! against the signed one before anything is unpacked. A partial that does not verify is
//! deleted (it is never resumed twice), and partials of other targets are deleted when a
//! download starts, so at most one package's partial is on disk.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use futures::StreamExt;
use sha2::{Digest, Sha256};
use url::Url;

use crate::durable::{self, DurableError};

/// Why the bytes stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Stop {
    /// The source stopped early (a dropped connection, a short file): resumable.
    #[error("{0}")]
    Cut(String),
    /// More bytes than signed, or bytes that do not hash to the signed sha256: never
    /// resumed; the partial is deleted.
    #[error("{0}")]
    Bad(String),
    #[error(transparent)]
    Io(#[from] DurableError),
}

/// The partial download of one target.
pub(crate) struct Part {
    pub path: PathBuf,
    pub length: u64,
    sha256: String,
}

impl Part {
    /// The partial of the target with `sha256` (hex) under `dir`, created empty if there
    /// is none; every other partial there is deleted.
    pub fn open(dir: &Path, sha256: &str, length: u64) -> Result<Part, DurableError> {
        durable::create_dir_durable(dir)?;
        let name = format!("{sha256}.part");
        for entry in fs::read_dir(dir).map_err(durable::at("list", dir))? {
            let entry = entry.map_err(durable::at("list", dir))?;
            if entry.file_name().to_string_lossy() != name {
                let p = entry.path();
                fs::remove_file(&p).map_err(durable::at("remove", &p))?;
            }
        }
        let part = Part {
            path: dir.join(name),
            length,
            sha256: sha256.to_string(),
        };
        // Longer than signed can only be damage: start over.
        if part.have()? > length {
            part.discard();
        }
        Ok(part)
    }

    /// Bytes on disk.
    pub fn have(&self) -> Result<u64, DurableError> {
        match fs::metadata(&self.path) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(durable::at("stat", &self.path)(e)),
        }
    }

    fn append(&self) -> Result<File, DurableError> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(durable::at("open", &self.path))
    }

    /// Appends `chunk`, refusing to go past the signed length.
    fn write(&self, f: &mut File, got: &mut u64, chunk: &[u8]) -> Result<(), Stop> {
        *got += chunk.len() as u64;
        if *got > self.length {
            return Err(Stop::Bad(format!(
                "more than the {} bytes signed (endless data)",
                self.length
            )));
        }
        f.write_all(chunk)
            .map_err(durable::at("write", &self.path))?;
        crate::kill::point("fetch");
        Ok(())
    }

    /// Appends a stream of chunks (tough's, or an HTTP body) from byte `from`.
    pub async fn append_stream<S, B, E>(&self, from: u64, mut stream: S) -> Result<(), Stop>
    where
        S: futures::Stream<Item = Result<B, E>> + Unpin,
        B: AsRef<[u8]>,
        E: std::fmt::Display,
    {
        let mut f = self.append()?;
        let mut got = from;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Stop::Cut(e.to_string()))?;
            self.write(&mut f, &mut got, chunk.as_ref())?;
        }
        f.sync_all().map_err(durable::at("sync", &self.path))?;
        Ok(())
    }

    /// Appends the rest of a directory channel's file from byte `from`.
    pub fn append_file(&self, src: &Path, from: u64) -> Result<(), Stop> {
        let mut input =
            File::open(src).map_err(|e| Stop::Cut(format!("{}: {e}", src.display())))?;
        input
            .seek(SeekFrom::Start(from))
            .map_err(|e| Stop::Cut(format!("{}: {e}", src.display())))?;
        let mut f = self.append()?;
        let mut got = from;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = input
                .read(&mut buf)
                .map_err(|e| Stop::Cut(format!("{}: {e}", src.display())))?;
            if n == 0 {
                break;
            }
            self.write(&mut f, &mut got, &buf[..n])?;
        }
        f.sync_all().map_err(durable::at("sync", &self.path))?;
        Ok(())
    }

    /// The whole target is there and hashes to the signed sha256.
    pub fn verify(&self) -> Result<(), Stop> {
        let have = self.have()?;
        if have < self.length {
            return Err(Stop::Cut(format!(
                "{have} bytes arrived, {} were signed",
                self.length
            )));
        }
        let mut f = File::open(&self.path).map_err(durable::at("open", &self.path))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = f.read(&mut buf).map_err(durable::at("read", &self.path))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let got = hex(&h.finalize());
        if got != self.sha256 {
            return Err(Stop::Bad(format!(
                "hash mismatch: sha256 {got}, signed {}",
                self.sha256
            )));
        }
        Ok(())
    }

    /// Deletes the partial (best effort: the next download's `open` sweeps it).
    pub fn discard(&self) {
        if let Err(e) = fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("could not remove {}: {e}", self.path.display());
            }
        }
    }
}

/// Lowercase hex of a digest.
pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The rest of an HTTP(S) target from byte `from` (`Range: bytes=FROM-`). `Ok(false)`
/// when the server ignored the range and the body is the whole file: the caller starts
/// the partial over.
pub(crate) async fn http_rest(
    client: &reqwest::Client,
    url: &Url,
    from: u64,
) -> Result<(reqwest::Response, bool), Stop> {
    let resp = client
        .get(url.clone())
        .header(reqwest::header::RANGE, format!("bytes={from}-"))
        .send()
        .await
        .map_err(|e| Stop::Cut(e.to_string()))?;
    match resp.status().as_u16() {
        206 => Ok((resp, true)),
        200 => Ok((resp, false)),
        // Nothing left past `from`: the partial is whole (or the file is shorter).
        416 => Err(Stop::Cut(format!("{url}: nothing past byte {from}"))),
        s => Err(Stop::Cut(format!("{url}: HTTP {s}"))),
    }
}
