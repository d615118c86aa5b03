//! Crash-safe file updates. A file is replaced by writing a temporary beside it, syncing
//! it, renaming it over the old one and syncing the directory: `rename(2)` is atomic, so a
//! reader — or the process after a crash or a power cut — sees the old file or the new
//! one, never a mix; without the first sync the new name could point at blocks not yet
//! written, and without the directory sync the rename itself could be lost.
//!
//! Temporaries are named `.NAME.tmp-PID`; [`remove_leftovers`] deletes those a crash left.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {source}", path.display())]
pub struct DurableError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Wraps an I/O error with what was being done to which path.
pub(crate) fn at<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> DurableError + 'a {
    move |source| DurableError {
        op,
        path: path.to_path_buf(),
        source,
    }
}

const TMP_MARK: &str = ".tmp-";

/// Replaces `path` with `bytes`, atomically and durably (module docs).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DurableError> {
    let dir = parent(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}{TMP_MARK}{}", std::process::id()));
    // A temporary of this pid can only be a leftover of a crashed process that had it.
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(at("create", &tmp))?;
    f.write_all(bytes).map_err(at("write", &tmp))?;
    f.sync_all().map_err(at("sync", &tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(at("rename into place", path))?;
    sync_dir(&dir)
}

/// The backup kept beside `path` by [`write_kept`]: `state.json` -> `state.prev.json`.
pub fn backup_of(path: &Path) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}.prev.{}", ext.to_string_lossy()),
        None => format!("{stem}.prev"),
    };
    parent(path).join(name)
}

/// Replaces `path` like [`write_atomic`], first keeping the file it replaces as its backup
/// ([`backup_of`]) when `valid` accepts it; with neither file there (a fresh box), `fresh`
/// (what a missing file means) becomes the backup.
///
/// Why: `write_atomic` is enough where storage honours `fsync`. SD cards and eMMC that
/// acknowledge a flush before the data is safe can lose a synced file's tail in a power cut;
/// [`read_kept`] then falls back to the backup, losing at most the last replacement.
pub fn write_kept(
    path: &Path,
    bytes: &[u8],
    valid: impl Fn(&[u8]) -> bool,
    fresh: &[u8],
) -> Result<(), DurableError> {
    let backup = backup_of(path);
    match fs::read(path) {
        Ok(old) if valid(&old) => write_atomic(&backup, &old)?,
        // A damaged file is never kept over a good backup.
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if !backup.exists() {
                write_atomic(&backup, fresh)?;
            }
        }
        Err(e) => return Err(at("read", path)(e)),
    }
    write_atomic(path, bytes)
}

/// Reads what [`write_kept`] wrote: `parse` of `path`, else (missing or not parsing) of its
/// backup, with a warning naming both; else `path`'s own result. `Ok(None)`: neither exists.
pub fn read_kept<T, E: std::fmt::Display>(
    path: &Path,
    parse: impl Fn(&Path) -> Result<Option<T>, E>,
) -> Result<Option<T>, E> {
    let first = parse(path);
    if let Ok(Some(v)) = first {
        return Ok(Some(v));
    }
    let backup = backup_of(path);
    match parse(&backup) {
        Ok(Some(prev)) => {
            let why = match &first {
                Err(e) => e.to_string(),
                Ok(_) => format!("{} is missing", path.display()),
            };
            log::warn!(
                "{why}; reading {} (as it was before its last update) instead",
                backup.display()
            );
            Ok(Some(prev))
        }
        _ => first,
    }
}

/// Renames `from` to `to` (files or directories, same file system) and syncs both parent
/// directories, so the move survives a power cut.
pub fn rename_durable(from: &Path, to: &Path) -> Result<(), DurableError> {
    fs::rename(from, to).map_err(at("rename", from))?;
    sync_dir(&parent(to))?;
    let from_dir = parent(from);
    if from_dir != parent(to) {
        sync_dir(&from_dir)?;
    }
    Ok(())
}

/// Syncs every file below `dir`, then the directories bottom-up: what was written into a
/// tree (an unpacked package) is on disk before the tree is renamed into place.
pub fn sync_tree(dir: &Path) -> Result<(), DurableError> {
    for entry in fs::read_dir(dir).map_err(at("list", dir))? {
        let entry = entry.map_err(at("list", dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(at("stat", &path))?;
        if kind.is_dir() {
            sync_tree(&path)?;
        } else if kind.is_file() {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(at("sync", &path))?;
        }
    }
    sync_dir(dir)
}

/// Syncs a directory's entries (names, renames) to disk.
pub fn sync_dir(dir: &Path) -> Result<(), DurableError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(at("sync directory", dir))
}

/// Creates `dir` and its parents, syncing each parent whose entries changed.
pub fn create_dir_durable(dir: &Path) -> Result<(), DurableError> {
    if dir.is_dir() {
        return Ok(());
    }
    let up = parent(dir);
    if up != dir {
        create_dir_durable(&up)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => sync_dir(&up),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(at("create directory", dir)(e)),
    }
}

/// Whether the process that names a temporary (`.NAME.tmp-PID`) still runs: then it is
/// being written (the service saving its state while `beltbox ota status` opens the
/// store), not left by a crash, and deleting it would fail that write.
fn writer_alive(name: &str) -> bool {
    name.rsplit(TMP_MARK)
        .next()
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// Deletes the temporaries a crash left in `dir` (not recursive): those whose writer no
/// longer runs. Returns their names.
pub fn remove_leftovers(dir: &Path) -> Result<Vec<String>, DurableError> {
    let mut removed = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(at("list", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(at("list", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(TMP_MARK) && !writer_alive(&name) {
            let path = entry.path();
            fs::remove_file(&path).map_err(at("remove leftover", &path))?;
            removed.push(name);
        }
    }
    if !removed.is_empty() {
        sync_dir(dir)?;
    }
    Ok(removed)
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(p: &Path) -> Result<Option<u32>, String> {
        match fs::read_to_string(p) {
            Ok(t) => t
                .trim()
                .parse()
                .map(Some)
                .map_err(|e| format!("{}: {e}", p.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    fn valid(b: &[u8]) -> bool {
        std::str::from_utf8(b).is_ok_and(|t| t.trim().parse::<u32>().is_ok())
    }

    #[test]
    fn a_file_cut_by_a_power_cut_reads_as_its_backup() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("n.json");
        assert_eq!(backup_of(&p), d.path().join("n.prev.json"));
        assert_eq!(read_kept(&p, parse).unwrap(), None);
        write_kept(&p, b"1", valid, b"0").unwrap();
        // The fresh state is the first backup: a first write cut reads as a fresh box.
        fs::write(&p, b"").unwrap();
        assert_eq!(read_kept(&p, parse).unwrap(), Some(0));
        write_kept(&p, b"2", valid, b"0").unwrap();
        write_kept(&p, b"3", valid, b"0").unwrap();
        assert_eq!(read_kept(&p, parse).unwrap(), Some(3));
        fs::write(&p, b"3x").unwrap();
        assert_eq!(read_kept(&p, parse).unwrap(), Some(2));
        // A damaged file is not kept over the good backup.
        write_kept(&p, b"4", valid, b"0").unwrap();
        fs::write(&p, b"").unwrap();
        assert_eq!(read_kept(&p, parse).unwrap(), Some(2));
        fs::remove_file(&p).unwrap();
        assert_eq!(read_kept(&p, parse).unwrap(), Some(2));
        // Both damaged: the newest file's own error.
        fs::write(backup_of(&p), b"?").unwrap();
        fs::write(&p, b"!").unwrap();
        assert!(read_kept(&p, parse).unwrap_err().contains("n.json"));
    }

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn a_crash_before_the_rename_leaves_the_old_file_and_a_leftover_that_is_swept() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        write_atomic(&p, b"old").unwrap();
        // What a process killed between write and rename leaves behind (a pid above
        // Linux's largest pid_max: never a running process).
        fs::write(d.path().join(".state.json.tmp-4194305"), b"half").unwrap();
        // A write in progress in a live process (this one) is not a leftover.
        let live = format!(".state.json.tmp-{}", std::process::id());
        fs::write(d.path().join(&live), b"being written").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert_eq!(
            remove_leftovers(d.path()).unwrap(),
            vec![".state.json.tmp-4194305".to_string()]
        );
        assert!(remove_leftovers(d.path()).unwrap().is_empty());
        assert!(d.path().join(&live).exists());
    }

    #[test]
    fn errors_name_the_path_and_the_operation() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("missing-dir").join("state.json");
        let e = write_atomic(&p, b"x").unwrap_err().to_string();
        assert!(e.starts_with("create ") && e.contains("missing-dir"), "{e}");
    }

    #[test]
    fn trees_and_directories_are_created_and_moved() {
        let d = tempfile::tempdir().unwrap();
        let staged = d.path().join("staging/abc");
        create_dir_durable(&staged.join("golden")).unwrap();
        fs::write(staged.join("golden/1.npy"), b"x").unwrap();
        sync_tree(&staged).unwrap();
        let dest = d.path().join("versions");
        create_dir_durable(&dest).unwrap();
        rename_durable(&staged, &dest.join("digits@2")).unwrap();
        assert_eq!(fs::read(dest.join("digits@2/golden/1.npy")).unwrap(), b"x");
    }
}
