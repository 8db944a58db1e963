//! Network namespaces: named ones as iproute2 keeps them (a file under `/run/netns` with the
//! namespace bind-mounted on it, so that `ip netns exec NAME` finds them), and running code in
//! one. A thread enters a namespace with `setns`, which moves only that thread: the plugin enters
//! the pod's namespace on its one thread and comes back; a multi-threaded process (the mock, the
//! agent) runs the work on a thread of its own ([`NetNs::run`]), so that no runtime worker ever
//! changes namespace.
//!
//! Sockets, netlink sockets and child processes belong to the namespace of the thread that made
//! them, so a listener bound in [`NetNs::run`] serves that namespace from anywhere.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

/// Where iproute2 keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// A namespace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The namespace file could not be opened.
    #[error("network namespace {path}: {source}")]
    Open {
        /// Its path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A namespace of that name exists already.
    #[error(
        "network namespace {0} exists already; remove it (ip netns del {0}) or choose another name"
    )]
    Taken(String),
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// The thread that was to run in the namespace panicked.
    #[error("the thread working in network namespace {0} panicked")]
    Panicked(String),
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> NetnsError {
    let what = what.into();
    move |source| NetnsError::Sys { what, source }
}

/// An open network namespace.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    label: String,
}

impl NetNs {
    /// The namespace at `path` (`/run/netns/NAME`, `/proc/PID/ns/net`, a CNI_NETNS).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, NetnsError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|source| NetnsError::Open {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            file,
            label: path.display().to_string(),
        })
    }

    /// The named namespace `name` (under `/run/netns`).
    pub fn named(name: &str) -> Result<Self, NetnsError> {
        Self::open(Path::new(NETNS_DIR).join(name))
    }

    /// The calling thread's namespace.
    pub fn current() -> Result<Self, NetnsError> {
        Self::open("/proc/thread-self/ns/net")
    }

    /// A raw descriptor (for netlink's `IFLA_NET_NS_FD`), valid while `self` lives.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// What it is called in messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Moves the calling thread into this namespace until the guard is dropped.
    pub fn enter(&self) -> Result<Guard, NetnsError> {
        let back = Self::current()?;
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(sys(format!("enter network namespace {}", self.label)))?;
        Ok(Guard { back })
    }

    /// Runs `f` on a thread of its own inside this namespace and returns what it returns.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        std::thread::scope(|s| {
            s.spawn(|| -> Result<T, NetnsError> {
                setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(sys(format!("enter network namespace {}", self.label)))?;
                Ok(f())
            })
            .join()
            .map_err(|_| NetnsError::Panicked(self.label.clone()))?
        })
    }

    /// Creates the named namespace `name`, as `ip netns add` does.
    pub fn create(name: &str) -> Result<Self, NetnsError> {
        let dir = Path::new(NETNS_DIR);
        std::fs::create_dir_all(dir).map_err(|source| NetnsError::Open {
            path: dir.to_owned(),
            source,
        })?;
        share_netns_dir()?;
        let path = dir.join(name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(NetnsError::Taken(name.to_owned()));
            }
            Err(source) => return Err(NetnsError::Open { path, source }),
        }
        let made = std::thread::scope(|s| {
            s.spawn(|| -> Result<(), NetnsError> {
                unshare(CloneFlags::CLONE_NEWNET).map_err(sys("unshare a network namespace"))?;
                mount(
                    Some("/proc/thread-self/ns/net"),
                    &path,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(sys(format!("bind the new namespace to {}", path.display())))
            })
            .join()
            .map_err(|_| NetnsError::Panicked(name.to_owned()))?
        });
        if let Err(e) = made {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Self::named(name)
    }

    /// Deletes the named namespace `name` (its links and tables go with it once nothing holds
    /// it). A missing one is no error.
    pub fn delete(name: &str) -> Result<(), NetnsError> {
        let path = Path::new(NETNS_DIR).join(name);
        if !path.exists() {
            return Ok(());
        }
        match umount2(&path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) => {}
            Err(e) => return Err(sys(format!("unmount {}", path.display()))(e)),
        }
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(NetnsError::Open { path, source }),
        }
    }

    /// The names under `/run/netns`.
    pub fn list() -> Vec<String> {
        std::fs::read_dir(NETNS_DIR)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Brings the thread back to where it was when dropped.
#[derive(Debug)]
pub struct Guard {
    back: NetNs,
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Best effort: a thread that cannot go back is left where it is; the plugin exits soon.
        let _ = setns(self.back.file.as_fd(), CloneFlags::CLONE_NEWNET);
    }
}

/// Makes `/run/netns` a shared mount point, as iproute2 does, so that the namespaces bound
/// under it show in every mount namespace that shares it.
fn share_netns_dir() -> Result<(), NetnsError> {
    let dir = Path::new(NETNS_DIR);
    let shared = |flags| mount(None::<&str>, dir, None::<&str>, flags, None::<&str>);
    if shared(MsFlags::MS_SHARED | MsFlags::MS_REC).is_ok() {
        return Ok(());
    }
    mount(
        Some(dir),
        dir,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys(format!("bind-mount {NETNS_DIR} on itself")))?;
    shared(MsFlags::MS_SHARED | MsFlags::MS_REC).map_err(sys(format!("make {NETNS_DIR} shared")))
}
