//! Unpacking a downloaded `.tar` / `.tar.gz` archive: regular files and folders only, never
//! outside the destination.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use tar::EntryType;

use crate::error::FetchError;
use crate::source::ArchiveKind;

/// Unpacks `archive` into `dest` (which must exist). Links, devices and paths that leave `dest`
/// are refused with a message naming the entry.
pub fn unpack(archive: &Path, kind: ArchiveKind, dest: &Path) -> Result<u64, FetchError> {
    let file = File::open(archive).map_err(|e| FetchError::io("cannot open", archive, e))?;
    let reader: Box<dyn Read> = match kind {
        ArchiveKind::Tar => Box::new(file),
        ArchiveKind::TarGz => Box::new(flate2::read::GzDecoder::new(file)),
    };
    let bad = |e: std::io::Error| FetchError::Failed(format!("{}: {e}", archive.display()));
    let mut tar = tar::Archive::new(reader);
    tar.set_preserve_permissions(false);
    tar.set_unpack_xattrs(false);
    let mut files = 0;
    for entry in tar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let kind = entry.header().entry_type();
        let name = entry.path().map_err(bad)?.display().to_string();
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::Directory => {}
            EntryType::XGlobalHeader | EntryType::XHeader => continue,
            other => {
                return Err(FetchError::Failed(format!(
                    "{}: entry {name:?} is a {other:?}; a model archive may hold only files and \
                     folders",
                    archive.display()
                )))
            }
        }
        let inside = entry.unpack_in(dest).map_err(|e| {
            if e.raw_os_error() == Some(28) {
                FetchError::io("cannot unpack into", dest, e)
            } else {
                FetchError::Failed(format!("{}: entry {name:?}: {e}", archive.display()))
            }
        })?;
        if !inside {
            return Err(FetchError::Failed(format!(
                "{}: entry {name:?} points outside the archive's folder",
                archive.display()
            )));
        }
        if kind != EntryType::Directory {
            files += 1;
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn archive_with(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> tempfile::NamedTempFile {
        let mut builder = tar::Builder::new(Vec::new());
        build(&mut builder);
        let bytes = builder.into_inner().unwrap();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, &bytes).unwrap();
        f
    }

    fn header(kind: EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h
    }

    #[test]
    fn unpacks_files_and_folders() {
        let f = archive_with(|b| {
            b.append_data(&mut header(EntryType::Directory, 0), "m/", &[][..])
                .unwrap();
            b.append_data(&mut header(EntryType::Regular, 3), "m/a.txt", &b"abc"[..])
                .unwrap();
        });
        let dest = tempfile::tempdir().unwrap();
        assert_eq!(unpack(f.path(), ArchiveKind::Tar, dest.path()).unwrap(), 1);
        assert_eq!(std::fs::read(dest.path().join("m/a.txt")).unwrap(), b"abc");
    }

    #[test]
    fn refuses_links() {
        let f = archive_with(|b| {
            let mut h = header(EntryType::Symlink, 0);
            b.append_link(&mut h, "evil", "/etc/passwd").unwrap();
        });
        let dest = tempfile::tempdir().unwrap();
        let e = unpack(f.path(), ArchiveKind::Tar, dest.path()).unwrap_err();
        assert!(e.to_string().contains("only files and folders"), "{e}");
    }

    #[test]
    fn refuses_paths_that_leave_the_folder() {
        // `append_data` refuses `..`, so the name is written into the header directly.
        let f = archive_with(|b| {
            let mut h = header(EntryType::Regular, 1);
            h.as_old_mut().name[..9].copy_from_slice(b"../x.txt\0");
            h.set_cksum();
            b.append(&h, &b"x"[..]).unwrap();
        });
        let dest = tempfile::tempdir().unwrap();
        let inner = dest.path().join("inner");
        std::fs::create_dir(&inner).unwrap();
        assert!(unpack(f.path(), ArchiveKind::Tar, &inner).is_err());
        assert!(!dest.path().join("x.txt").exists());
    }
}
