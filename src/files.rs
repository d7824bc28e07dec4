//! Files only the server's own user may read: the data directory (0700), the SQLite databases
//! (0600; SQLite gives their `-wal` and `-shm` files the database's mode) and the token secret.
//! They hold password hashes, webhook secrets and visitors' personal data.

use std::{
    fs::{self, OpenOptions},
    io::Write,
    path::Path,
};

use anyhow::Context;

#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};

/// Creates `dir` (and missing parents) with mode 0700. An existing directory keeps its mode: an
/// operator may have chosen it.
pub fn private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    builder.mode(0o700);
    builder
        .create(dir)
        .with_context(|| format!("creating the data dir {}", dir.display()))
}

/// Makes sure the SQLite database `path` and the files SQLite keeps beside it are readable by
/// the owner only: the database is created empty with mode 0600 before SQLite opens it (SQLite
/// creates its `-wal`, `-shm` and `-journal` files with the database's mode), and files left
/// readable by others by an earlier version are narrowed to 0600.
pub fn private_database(path: &Path) -> anyhow::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    options.mode(0o600);
    options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        narrow(Path::new(&name))?;
    }
    Ok(())
}

/// Sets an existing file's mode to 0600 (a missing one is fine).
fn narrow(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    match fs::metadata(path) {
        Ok(meta) if meta.permissions().mode() & 0o777 != 0o600 => {
            fs::set_permissions(path, fs::Permissions::from_mode(0o600))
                .with_context(|| format!("making {} private (0600)", path.display()))?;
        }
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    }
    Ok(())
}

/// Writes `contents` to a new file `path` so that a crash leaves either no file or the whole
/// one: a temporary file beside it (created exclusively, with a random name and mode 0600, so
/// nothing planted there is followed or reused) is written and flushed to disk, then renamed to
/// `path` unless `path` exists by then (`Ok(false)`: another process wrote it first, and the
/// caller reads that one), and the directory is flushed so the rename itself survives.
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<bool> {
    let dir = path.parent().unwrap_or(Path::new("."));
    private_dir(dir)?;
    let written = (|| -> std::io::Result<bool> {
        let mut file = tempfile::Builder::new()
            .prefix(".jwt-secret-")
            .tempfile_in(dir)?;
        #[cfg(unix)]
        file.as_file()
            .set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(contents)?;
        file.as_file().sync_all()?;
        match file.persist_noclobber(path) {
            Ok(_) => {}
            Err(err) if err.error.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(err) => return Err(err.error),
        }
        fs::File::open(dir)?.sync_all()?;
        Ok(true)
    })();
    written.with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn private_files_and_dirs_are_the_owners_only() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&root.path().join("a")), 0o700);

        let db = dir.join("x.db");
        let wal = dir.join("x.db-wal");
        fs::write(&wal, b"").unwrap();
        fs::set_permissions(&wal, fs::Permissions::from_mode(0o644)).unwrap();
        private_database(&db).unwrap();
        assert_eq!((mode(&db), mode(&wal)), (0o600, 0o600));

        let secret = dir.join("s");
        assert!(write_private(&secret, b"first").unwrap());
        // A second writer (another process starting at once) does not clobber the first.
        assert!(!write_private(&secret, b"second").unwrap());
        assert_eq!(fs::read(&secret).unwrap(), b"first");
        assert_eq!(mode(&secret), 0o600);
        let mut names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["s", "x.db", "x.db-wal"],
            "no temporary file is left"
        );
    }
}
