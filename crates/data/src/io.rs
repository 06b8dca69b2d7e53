//! Output that is never half-written: write to a temporary sibling, then rename.

use std::fs;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The temporary name used while `path` is being written.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// Writes a file atomically: `write` fills the temporary file, which is
/// renamed onto `path` only if it succeeds; on error it is removed.
///
/// # Errors
/// Whatever `write` returns, or the I/O error of creating/renaming.
pub fn write_atomic<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut fs::File) -> Result<()>,
{
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        write(&mut f)?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        Ok(())
    })();
    match result {
        Ok(()) => fs::rename(&tmp, path).map_err(|e| Error::io(path, e)),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Writes `text` to `path` atomically ([`write_atomic`]).
///
/// # Errors
/// The I/O error, naming `path`.
pub fn write_text_atomic(path: &Path, text: &str) -> Result<()> {
    write_atomic(path, |f| {
        use std::io::Write;
        f.write_all(text.as_bytes()).map_err(|e| Error::io(path, e))
    })
}

/// Builds a directory atomically: `build` fills a temporary sibling
/// directory, which replaces `dir` only if it succeeds.
///
/// # Errors
/// Whatever `build` returns, or the I/O error of creating/renaming.
pub fn write_dir_atomic<F>(dir: &Path, build: F) -> Result<()>
where
    F: FnOnce(&Path) -> Result<()>,
{
    let tmp = temp_path(dir);
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    match build(&tmp) {
        Ok(()) => {
            if dir.exists() {
                fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            }
            fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// A fresh empty directory under the system temp dir, for tests and benches.
pub fn scratch_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let d =
        std::env::temp_dir().join(format!("seqrec-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).expect("create scratch dir");
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn failed_write_leaves_nothing() {
        let d = scratch_dir("io");
        let p = d.join("out.txt");
        let r = write_atomic(&p, |f| {
            f.write_all(b"half").unwrap();
            Err(Error::Invalid("boom".into()))
        });
        assert!(r.is_err());
        assert!(!p.exists());
        assert_eq!(fs::read_dir(&d).unwrap().count(), 0);
        write_atomic(&p, |f| f.write_all(b"whole").map_err(|e| Error::io("x", e))).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "whole");
    }
}
