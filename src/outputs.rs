//! Writing output files so that a failed command never leaves a
//! half-written one: each file goes to a temporary beside it, synced, then
//! renamed over the target; a set of files (a build's) is all written
//! before any is renamed, so a full disk or a blocked path leaves none of
//! them. A target that is not a regular file is not replaced by the
//! rename: a symlink is written through (its target is replaced), and a
//! device or FIFO (`/dev/null`, `/dev/stdout`, a named pipe) is written
//! into directly, as a shell redirection would.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` (see the module's comment).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_all_atomic(&[(path, bytes)]).map_err(|(_, e)| e)
}

/// Writes every `(path, bytes)`: all the regular files' temporaries first,
/// then the renames, then any devices. On an error, the path it concerns.
/// A failure before the renames (a full disk, a directory in the way)
/// leaves no file of the set; a rename failing partway (which the checks
/// before make unlikely) leaves the files renamed before it.
pub fn write_all_atomic(files: &[(&Path, &[u8])]) -> Result<(), (PathBuf, io::Error)> {
    let mut targets = Vec::new();
    for (path, bytes) in files {
        let target = target(path).map_err(|e| (path.to_path_buf(), e))?;
        targets.push((target, *bytes));
    }
    let mut staged = Vec::new();
    for (target, bytes) in &targets {
        if let Target::File(p) = target {
            let tmp = temporary(p, bytes).map_err(|e| (p.clone(), e))?;
            staged.push((tmp, p));
        }
    }
    for (tmp, p) in staged {
        tmp.persist(p).map_err(|e| (p.clone(), e.error))?;
    }
    let stream = |p: &Path, bytes: &[u8]| -> io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).open(p)?;
        f.write_all(bytes)?;
        f.flush()
    };
    for (target, bytes) in &targets {
        let written = match target {
            Target::Stream(p) => stream(p, bytes).map_err(|e| (p.clone(), e)),
            Target::Stdout(p) => {
                let mut out = io::stdout().lock();
                out.write_all(bytes)
                    .and_then(|()| out.flush())
                    .map_err(|e| (p.clone(), e))
            }
            Target::File(_) => Ok(()),
        };
        written?;
    }
    Ok(())
}

/// Where an output goes.
enum Target {
    /// A regular file, or none yet: replaced through a temporary.
    File(PathBuf),
    /// A device, FIFO or socket: written into.
    Stream(PathBuf),
    /// The process's standard output (`/dev/stdout`, `/dev/fd/1`), written
    /// as the process holds it: a pipe, or a file opened for appending,
    /// where reopening the path would start over at its beginning.
    Stdout(PathBuf),
}

/// The file `path` names, symlinks followed; a directory (or a missing
/// parent directory) is an error here, before anything is written.
fn target(path: &Path) -> io::Result<Target> {
    let p = match resolve(path)? {
        Resolved::Descriptor(1) => return Ok(Target::Stdout(path.to_path_buf())),
        Resolved::Descriptor(_) => return Ok(Target::Stream(path.to_path_buf())),
        Resolved::Path(p) => p,
    };
    match std::fs::metadata(&p) {
        Ok(m) if m.is_dir() => Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            "it is a directory",
        )),
        Ok(m) if !m.is_file() => Ok(Target::Stream(p)),
        Ok(_) => Ok(Target::File(p)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let dir = parent(&p);
            if dir.is_dir() {
                Ok(Target::File(p))
            } else {
                Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("the directory `{}` does not exist", dir.display()),
                ))
            }
        }
        Err(e) => Err(e),
    }
}

/// What a path names once its symlinks are followed.
#[derive(Debug, PartialEq)]
enum Resolved {
    /// A file descriptor: `/dev/stdout`, `/dev/fd/N`, `/proc/self/fd/N`
    /// (whose link text, `pipe:[123]`, is no path to follow).
    Descriptor(u32),
    /// Any other path, perhaps not there yet (a dangling link's target is
    /// created).
    Path(PathBuf),
}

/// Follows `path`'s symlinks, stopping at a descriptor.
fn resolve(path: &Path) -> io::Result<Resolved> {
    let mut p = path.to_path_buf();
    // The kernel's own limit on a chain of links (ELOOP).
    for _ in 0..40 {
        if let Some(fd) = descriptor(&p) {
            return Ok(Resolved::Descriptor(fd));
        }
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                // Relative link targets are relative to the link's directory.
                p = parent(&p).join(std::fs::read_link(&p)?);
            }
            _ => return Ok(Resolved::Path(p)),
        }
    }
    Err(io::Error::other("too many levels of symbolic links"))
}

/// The descriptor `p` itself names, if it is one of the descriptor paths.
fn descriptor(p: &Path) -> Option<u32> {
    match p.to_str()? {
        "/dev/stdin" => Some(0),
        "/dev/stdout" => Some(1),
        "/dev/stderr" => Some(2),
        s => s
            .strip_prefix("/dev/fd/")
            .or_else(|| s.strip_prefix("/proc/self/fd/"))
            .and_then(|n| n.parse().ok()),
    }
}

fn parent(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// `bytes` in a synced temporary file beside `path`.
fn temporary(path: &Path, bytes: &[u8]) -> io::Result<tempfile::NamedTempFile> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(".resnetc-tmp-");
    // NamedTempFile defaults to 0600; outputs should get the usual
    // 0666 & !umask like any file the user creates.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut tmp = builder.tempfile_in(parent(path))?;
    tmp.write_all(bytes)?;
    tmp.flush()?;
    tmp.as_file().sync_all()?;
    Ok(tmp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn write_atomic_creates_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.bin");
        write_atomic(&p, b"first").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"first");
        write_atomic(&p, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second, longer");
        // No temporary files left behind.
        assert_eq!(names(dir.path()), ["out.bin"]);
    }

    #[cfg(unix)]
    #[test]
    fn write_atomic_gives_normal_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.bin");
        write_atomic(&p, b"x").unwrap();
        let reference = dir.path().join("reference.bin");
        std::fs::write(&reference, b"x").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode(&p),
            mode(&reference),
            "same mode as a plainly created file"
        );
    }

    #[test]
    fn a_missing_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("no/such/dir/out.bin");
        let e = write_atomic(&p, b"x").unwrap_err();
        assert!(e.to_string().contains("no/such/dir` does not exist"), "{e}");
        assert!(!e.to_string().contains(".resnetc-tmp"), "{e}");
    }

    /// A symlink is written through: its target gets the bytes and the
    /// link stays a link (also a relative one, and a dangling one).
    #[cfg(unix)]
    #[test]
    fn symlinks_are_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.bin");
        std::fs::write(&real, b"old").unwrap();
        let link = dir.path().join("link.bin");
        std::os::unix::fs::symlink("real.bin", &link).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&real).unwrap(), b"new");
        let dangling = dir.path().join("dangling.bin");
        std::os::unix::fs::symlink(dir.path().join("later.bin"), &dangling).unwrap();
        write_atomic(&dangling, b"made").unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("later.bin")).unwrap(),
            b"made"
        );
        assert_eq!(
            names(dir.path()),
            ["dangling.bin", "later.bin", "link.bin", "real.bin"]
        );
    }

    /// A device is written into, not replaced by a regular file.
    #[cfg(unix)]
    #[test]
    fn devices_are_written_into() {
        write_atomic(Path::new("/dev/null"), b"discarded").unwrap();
        let m = std::fs::metadata("/dev/null").unwrap();
        assert!(!m.is_file(), "/dev/null is still a device");
    }

    #[test]
    fn descriptors_are_recognised_through_links() {
        let fd = |p: &Path| match resolve(p).unwrap() {
            Resolved::Descriptor(fd) => Some(fd),
            Resolved::Path(_) => None,
        };
        assert_eq!(fd(Path::new("/dev/stdout")), Some(1));
        assert_eq!(fd(Path::new("/dev/fd/1")), Some(1));
        assert_eq!(fd(Path::new("/proc/self/fd/3")), Some(3));
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(fd(&dir.path().join("out.npy")), None);
        #[cfg(unix)]
        {
            let link = dir.path().join("to_stdout");
            std::os::unix::fs::symlink("/dev/stdout", &link).unwrap();
            assert_eq!(fd(&link), Some(1));
        }
    }

    /// A set whose last file cannot be written leaves none of them: the
    /// directory in the way is found before anything is written.
    #[test]
    fn a_set_is_written_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.ptx"), dir.path().join("b.bin"));
        std::fs::create_dir(&b).unwrap();
        let (path, e) = write_all_atomic(&[(&a, b"a"), (&b, b"b")]).unwrap_err();
        assert_eq!(path, b);
        assert_eq!(e.kind(), io::ErrorKind::IsADirectory, "{e}");
        assert_eq!(names(dir.path()), ["b.bin"], "nothing written");
    }
}
