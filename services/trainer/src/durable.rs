//! Durability of a directory written under a temporary name and renamed into place (registry
//! versions, snapshots): its files and the directory are fsynced before the rename, and the parent
//! after it, so a crash or power loss never leaves a renamed directory with empty or partial files.

use std::fs::File;
use std::io;
use std::path::Path;

/// Fsyncs every regular file in `dir` and its subdirectories, then the directories themselves
/// (call before renaming `dir` into place).
pub fn sync_staged_dir(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            sync_staged_dir(&entry.path())?;
        } else if kind.is_file() {
            File::open(entry.path())?.sync_all()?;
        }
    }
    sync_dir(dir)
}

/// Fsyncs a directory; a file system that cannot sync directories (some FUSE, SMB and 9p mounts
/// answer EINVAL or ENOTSUP) is not an error: it offers nothing more to wait for.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    match File::open(dir)?.sync_all() {
        Err(error)
            if error.kind() == io::ErrorKind::Unsupported
                || error.raw_os_error() == Some(libc::EINVAL) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Fsyncs the directory holding `path` (call after renaming into it, before anything refers to it).
pub fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    sync_dir(parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staged_directory_and_its_parent_sync() {
        let root = tempfile::tempdir().unwrap();
        let staged = root.path().join(".tmp-x");
        std::fs::create_dir(&staged).unwrap();
        std::fs::write(staged.join("a.bin"), b"bytes").unwrap();
        std::fs::create_dir(staged.join("nested")).unwrap();
        std::fs::write(staged.join("nested").join("b.png"), b"png").unwrap();
        sync_staged_dir(&staged).unwrap();
        let target = root.path().join("x");
        std::fs::rename(&staged, &target).unwrap();
        sync_parent(&target).unwrap();
        assert_eq!(std::fs::read(target.join("a.bin")).unwrap(), b"bytes");
        let missing = sync_staged_dir(&root.path().join("missing")).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }
}
