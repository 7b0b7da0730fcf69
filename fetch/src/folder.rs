//! The model folder: one fetcher at a time (a file lock), a staging area that survives an
//! interrupted fetch, and the swap of a finished download into place.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::FetchError;
use crate::marker::{LocalFile, MARKER};

/// Lock file inside the model folder.
pub const LOCK: &str = ".lynx-fetch.lock";
/// Staging folder inside the model folder: partial downloads and the unpacked tree.
pub const STAGING: &str = ".lynx-partial";

/// Holds the folder's lock until dropped (the lock is released when the file closes, also when
/// the process dies).
#[derive(Debug)]
pub struct FolderLock {
    _file: File,
}

impl FolderLock {
    /// Takes the lock of `folder` (created if absent), waiting for another fetcher that holds it.
    pub async fn acquire(folder: &Path) -> Result<Self, FetchError> {
        std::fs::create_dir_all(folder).map_err(|e| FetchError::io("cannot create", folder, e))?;
        let path = folder.join(LOCK);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| FetchError::io("cannot open", &path, e))?;
        match file.try_lock() {
            Ok(()) => return Ok(Self { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(FetchError::io("cannot lock", &path, e))
            }
        }
        tracing::info!(
            target: "lynx_fetch",
            "another fetch into {} is running; waiting for it",
            folder.display()
        );
        tokio::task::spawn_blocking(move || {
            file.lock()
                .map(|()| Self { _file: file })
                .map_err(|e| FetchError::io("cannot lock", &path, e))
        })
        .await
        .map_err(|e| FetchError::Failed(format!("lock task: {e}")))?
    }
}

/// The staging folder of `folder`.
pub fn staging(folder: &Path) -> PathBuf {
    folder.join(STAGING)
}

/// Replaces the content of `folder` by the content of `result` (a folder inside the staging
/// area): the old marker goes first (so a crash in between leaves no valid marker), then every
/// old entry, then `result`'s entries are renamed in. Returns the files now in the folder.
pub fn swap_in(folder: &Path, result: &Path) -> Result<Vec<LocalFile>, FetchError> {
    let marker = folder.join(MARKER);
    match std::fs::remove_file(&marker) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(FetchError::io("cannot remove", &marker, e))
        }
        _ => {}
    }
    for entry in read_dir(folder)? {
        let name = entry.file_name();
        if name == LOCK || name == STAGING {
            continue;
        }
        remove_all(&entry.path())?;
    }
    for entry in read_dir(result)? {
        let to = folder.join(entry.file_name());
        std::fs::rename(entry.path(), &to).map_err(|e| FetchError::io("cannot move", &to, e))?;
    }
    let mut files = Vec::new();
    list_files(folder, folder, &mut files)?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// Every regular file under `dir` (skipping the lock, marker and staging), relative to `root`.
pub fn list_files(root: &Path, dir: &Path, out: &mut Vec<LocalFile>) -> Result<(), FetchError> {
    for entry in read_dir(dir)? {
        let path = entry.path();
        let name = entry.file_name();
        if dir == root && (name == LOCK || name == STAGING || name == MARKER) {
            continue;
        }
        let meta = entry
            .metadata()
            .map_err(|e| FetchError::io("cannot stat", &path, e))?;
        if meta.is_dir() {
            list_files(root, &path, out)?;
        } else if meta.is_file() {
            let relative = path.strip_prefix(root).unwrap_or(&path);
            out.push(LocalFile {
                path: relative.to_string_lossy().replace('\\', "/"),
                size: meta.len(),
            });
        }
    }
    Ok(())
}

fn read_dir(dir: &Path) -> Result<Vec<std::fs::DirEntry>, FetchError> {
    std::fs::read_dir(dir)
        .and_then(Iterator::collect)
        .map_err(|e| FetchError::io("cannot read", dir, e))
}

/// Removes a file or a whole folder.
pub fn remove_all(path: &Path) -> Result<(), FetchError> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    result.map_err(|e| FetchError::io("cannot remove", path, e))
}

/// Polls `ready` every `every` until it holds or `timeout` (if any) passes; logs while waiting.
pub async fn poll_until(
    mut ready: impl FnMut() -> bool,
    every: Duration,
    timeout: Option<Duration>,
    waiting_for: &str,
) -> bool {
    let start = std::time::Instant::now();
    let mut last_log = start;
    loop {
        if ready() {
            return true;
        }
        if timeout.is_some_and(|t| start.elapsed() >= t) {
            return false;
        }
        if last_log.elapsed() >= Duration::from_secs(30) || last_log == start {
            tracing::info!(target: "lynx_fetch", "waiting for {waiting_for}");
            last_log = std::time::Instant::now();
        }
        tokio::time::sleep(every).await;
    }
}
