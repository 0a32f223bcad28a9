//! Atomic file writes for both parties: a uniquely named temporary file in the same folder, fsync, rename, then the
//! folder synced. A reader sees the old file or the new one, never a torn one, even if the writer is killed; two
//! writers of one path (two threads or two processes) never share a temporary file. The client crate's
//! `cryptotl::atomic` and this crate's model directory and key store write through it.
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! let p = dir.path().join("sub/out.json");
//! cryptotl_server::atomic::write(&p, b"{}", false).unwrap();
//! assert_eq!(std::fs::read(&p).unwrap(), b"{}");
//! ```

use std::io::Write as _;
use std::path::Path;

/// Write `bytes` to `path` atomically, creating parent folders. `private`: the file is readable by its owner only
/// (0600 on Unix); otherwise it gets the usual 0666 less the umask.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let p = dir.path().join("a.json");
/// cryptotl_server::atomic::write(&p, b"1", true).unwrap();
/// cryptotl_server::atomic::write(&p, b"22", true).unwrap();
/// assert_eq!(std::fs::read(&p).unwrap(), b"22");
/// ```
pub fn write(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut builder = tempfile::Builder::new();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let prefix = format!(".{name}.");
    builder.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        builder.permissions(std::fs::Permissions::from_mode(if private { 0o600 } else { 0o666 }));
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut tmp = builder.tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    // The rename is atomic; syncing the folder makes it durable too (a crash of the machine right after could
    // otherwise forget it, leaving the old file under a name a later step relies on). Best effort: a folder that
    // cannot be opened for reading, or a file system that cannot sync one, still has the file written whole.
    #[cfg(unix)]
    let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_whole_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        super::write(&p, b"first version", false).unwrap();
        super::write(&p, b"2", true).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"2");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }

    #[test]
    fn a_file_where_the_folder_should_be_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x"), b"").unwrap();
        assert!(super::write(&dir.path().join("x/y"), b"", false).is_err());
    }
}
