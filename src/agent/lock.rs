//! One agent per checkpoint and per socket: an exclusive `flock` on `PATH.lock`, held for the
//! process's life (the kernel drops it when the process dies, so a crashed agent never leaves a
//! stale lock behind). A second agent started on the same files stops at once with a message
//! naming the file and the holder's pid, instead of taking the socket over and overwriting the
//! first one's checkpoint.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live process holds it.
    #[error(
        "{what} {path} is in use by another prefixd agent (pid {holder}; lock {lock}): one agent \
         per node and checkpoint; stop it first, or give this one its own CHECKPOINT_PATH and \
         SOCKET_PATH"
    )]
    Held {
        /// What the lock guards ("checkpoint", "socket").
        what: &'static str,
        /// The guarded file.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// The pid the holder wrote, or "unknown".
        holder: String,
    },
    /// The lock file could not be opened or locked.
    #[error("cannot lock {what} {path} ({lock}): {source}")]
    Io {
        /// What the lock guards.
        what: &'static str,
        /// The guarded file.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct Lock {
    _flock: Flock<File>,
    path: PathBuf,
}

impl Lock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `PATH.lock` for `path`.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// Takes the lock that guards `path` (`what` names it in errors), without waiting.
pub fn acquire(what: &'static str, path: &Path) -> Result<Lock, LockError> {
    let lock = lock_path(path);
    let io = |source: std::io::Error| LockError::Io {
        what,
        path: path.to_owned(),
        lock: lock.clone(),
        source,
    };
    if let Some(dir) = lock.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock)
        .map_err(io)?;
    let mut flock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(f) => f,
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut pid = String::new();
            let _ = Read::by_ref(&mut file).take(32).read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(LockError::Held {
                what,
                path: path.to_owned(),
                lock,
                holder: if pid.is_empty() {
                    "unknown".into()
                } else {
                    pid.to_owned()
                },
            });
        }
        Err((_, errno)) => return Err(io(errno.into())),
    };
    // Who holds it, for the next one's message.
    let f: &mut File = &mut flock;
    f.set_len(0)
        .and_then(|()| f.rewind())
        .and_then(|()| writeln!(f, "{}", std::process::id()))
        .map_err(io)?;
    Ok(Lock {
        _flock: flock,
        path: lock,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let cp = dir.path().join("checkpoint.json");
        let first = acquire("checkpoint", &cp).unwrap();
        // flock locks belong to the open file description: a second open in this process
        // conflicts as another process's would.
        let e = acquire("checkpoint", &cp).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&std::process::id().to_string()) && msg.contains("checkpoint.json"),
            "{msg}"
        );
        drop(first);
        acquire("checkpoint", &cp).unwrap();
    }
}
