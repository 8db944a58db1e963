//! A real container runtime for the tests: containerd from Debian's package, with its own root,
//! state directory and socket (never the system's), run inside a network namespace of the test
//! (an emulated instance's), and `ctr run --cni --rootfs DIR` starting containers from a
//! directory holding busybox-static — so that containerd's own CNI library calls the plugins of
//! a conflist, as kubelet's runtime would.
//!
//! `ctr` reads its CNI configuration from /etc/cni/net.d and its plugins from /opt/cni/bin, with
//! no flag to change either; each ctr runs in a private mount namespace where overlays put the
//! test's conflist and plugin directory there, and keep libcni's cache (/var/lib/cni) in the
//! test's directory. containerd's own /run/containerd (shim sockets) is a private tmpfs. The
//! machine's files, mounts and containerd are never touched.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A containerd of the test's, in a network namespace.
pub struct Containerd {
    pub dir: tempfile::TempDir,
    pub netns: String,
    child: Child,
    /// The `ctr run` of each running container.
    running: Mutex<HashMap<String, Child>>,
}

fn need(bin: &str) -> String {
    for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin"] {
        let p = Path::new(dir).join(bin);
        if p.exists() {
            return p.display().to_string();
        }
    }
    panic!(
        "{bin} is needed (Debian packages containerd, runc, util-linux; ./scripts/test-all installs them)"
    );
}

/// A rootfs of busybox-static: /bin/busybox and its applets.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let bb = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static is needed (Debian package busybox-static)");
    std::fs::copy(bb, root.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "ping", "ip", "nc", "sleep", "cat", "echo", "wget", "true",
    ] {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
    }
    root
}

/// The arguments of process `pid`.
fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Kills what a dead run of this harness left running — its containerd, the shims and the
/// containers under them — found by the harness directory in their arguments, whose
/// `owner.pid` names a process that is gone (or which was removed).
pub fn remove_leftovers() {
    let pids: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    let mut doomed = Vec::new();
    for &pid in &pids {
        let args = cmdline(pid);
        let dir = args.iter().enumerate().find_map(|(i, a)| {
            let next = args.get(i + 1)?;
            let is_ours = (a == "-address" && next.ends_with("/containerd.sock"))
                || (a == "--config"
                    && next.ends_with("/config.toml")
                    && args[0].ends_with("containerd"));
            is_ours.then(|| Path::new(next).parent().map(Path::to_path_buf))?
        });
        let Some(dir) = dir else { continue };
        if !dir.starts_with(std::env::temp_dir()) {
            continue;
        }
        let owner_alive = std::fs::read_to_string(dir.join("owner.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
        if !owner_alive {
            doomed.push(pid);
        }
    }
    // The containers: children of the doomed shims.
    let children: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|p| parent_of(*p).is_some_and(|pp| doomed.contains(&pp)))
        .collect();
    for pid in doomed.iter().chain(&children) {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    // The cgroups named after containerds that are gone (empty once their containers are).
    std::thread::sleep(Duration::from_millis(if doomed.is_empty() {
        0
    } else {
        200
    }));
    for h in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        for c in std::fs::read_dir(h.path()).into_iter().flatten().flatten() {
            let name = c.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix("prefixd-test-") else {
                continue;
            };
            if Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            for sub in std::fs::read_dir(c.path()).into_iter().flatten().flatten() {
                if sub.path().is_dir() {
                    let _ = std::fs::remove_dir(sub.path());
                }
            }
            let _ = std::fs::remove_dir(c.path());
        }
    }
}

impl Containerd {
    /// Starts containerd in the named network namespace `netns`; the conflists in `cni_conf`
    /// and the plugins in `cni_bin` are what `ctr run --cni` will use. What a dead run left is
    /// removed first.
    pub fn start(netns: &str, cni_conf: &Path, cni_bin: &Path) -> Self {
        remove_leftovers();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("owner.pid"), std::process::id().to_string()).unwrap();
        for sub in ["root", "state", "fifo", "opt", "views"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::fs::write(
            d.join("config.toml"),
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{sock}\"\n\
                 [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n",
                root = d.join("root").display(),
                state = d.join("state").display(),
                sock = d.join("containerd.sock").display(),
                opt = d.join("opt").display(),
            ),
        )
        .unwrap();
        // The mount namespace's view of the CNI directories. Every ctr gets overlays of its own:
        // two live overlays sharing an upper or work directory fail to mount (EBUSY, or a race
        // on the work directory's reset), and a background `ctr run` keeps its mounts for the
        // container's life. libcni's cache needs no sharing: a `ctr run --rm` adds and deletes.
        std::fs::write(
            d.join("cni-view.sh"),
            format!(
                "set -e\n\
                 v=$(mktemp -d {d}/views/ctr.XXXXXXXX)\n\
                 mkdir $v/etc-up $v/etc-work $v/opt-up $v/opt-work $v/var-up $v/var-work\n\
                 mount -t overlay overlay -o lowerdir=/etc,upperdir=$v/etc-up,workdir=$v/etc-work /etc\n\
                 mkdir -p /etc/cni/net.d\n\
                 mount --bind {conf} /etc/cni/net.d\n\
                 mount -t overlay overlay -o lowerdir=/opt,upperdir=$v/opt-up,workdir=$v/opt-work /opt\n\
                 mkdir -p /opt/cni/bin\n\
                 mount --bind {bin} /opt/cni/bin\n\
                 mount -t overlay overlay -o lowerdir=/var/lib,upperdir=$v/var-up,workdir=$v/var-work /var/lib\n\
                 exec \"$@\"\n",
                d = d.display(),
                conf = cni_conf.display(),
                bin = cni_bin.display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let child = Command::new(need("nsenter"))
            .arg(format!("--net=/run/netns/{netns}"))
            .args([&need("unshare"), "-m", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount -t tmpfs tmpfs /run/containerd 2>/dev/null || {{ mkdir -p {d}/run && mount -t tmpfs tmpfs /run; }}; exec {} --config {d}/config.toml",
                need("containerd"),
                d = d.display()
            ))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("containerd starts");
        let c = Self {
            dir,
            netns: netns.to_owned(),
            child,
            running: Mutex::new(HashMap::new()),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c.socket().exists() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start within 20 s: {}",
                std::fs::read_to_string(c.dir.path().join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// `ctr ARGS...` in the namespace, with the test's CNI view.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_command(args).output().expect("ctr runs")
    }

    fn ctr_command(&self, args: &[&str]) -> Command {
        let d = self.dir.path();
        let mut c = Command::new(need("nsenter"));
        c.arg(format!("--net=/run/netns/{}", self.netns))
            .args([&need("unshare"), "-m", "--propagation", "private", "sh"])
            .arg(d.join("cni-view.sh"))
            .arg(need("ctr"))
            .arg("--address")
            .arg(self.socket())
            .args(args);
        c
    }

    /// The cgroup of a container: under a parent of this harness's, removed when it drops.
    fn cgroup(&self, id: &str) -> String {
        format!("/{}/{id}", self.cgroup_parent())
    }

    fn cgroup_parent(&self) -> String {
        format!("prefixd-test-{}", self.child.id())
    }

    /// `ctr run --rm --cni --rootfs ROOTFS ID CMD...`: a container on the CNI network, run to
    /// its end; the runtime's CNI DEL follows.
    pub fn run(&self, rootfs: &Path, id: &str, cmd: &[&str]) -> Output {
        let args = self.run_args(rootfs, id, cmd);
        self.ctr(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// `run --rm --cni --cgroup .. --fifo-dir .. --rootfs ROOTFS ID CMD...`.
    fn run_args(&self, rootfs: &Path, id: &str, cmd: &[&str]) -> Vec<String> {
        let fifo = self.dir.path().join("fifo");
        let mut args: Vec<String> = ["run", "--rm", "--cni", "--cgroup"]
            .map(String::from)
            .into();
        args.extend([
            self.cgroup(id),
            "--fifo-dir".into(),
            fifo.to_str().unwrap().into(),
            "--rootfs".into(),
            rootfs.to_str().unwrap().into(),
            id.into(),
        ]);
        args.extend(cmd.iter().map(|c| c.to_string()));
        args
    }

    /// `ctr run --rm --cni` kept in the background: the container keeps running until
    /// [`Self::remove`], and the same `ctr` that set its network up (CNI ADD) tears it down (CNI
    /// DEL, with the cached result as prevResult) when it ends — as a runtime does; `ctr run -d`
    /// would never run the DEL. Returns once the task runs, or ctr's output if it ended first.
    pub fn run_detached(&self, rootfs: &Path, id: &str, cmd: &[&str]) -> Result<(), Output> {
        let cgroup = self.cgroup(id);
        let mut args = vec![
            "run",
            "--rm",
            "--null-io",
            "--cni",
            "--cgroup",
            &cgroup,
            "--rootfs",
            rootfs.to_str().unwrap(),
            id,
        ];
        args.extend_from_slice(cmd);
        let child = self
            .ctr_command(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ctr runs");
        let mut running = self.running.lock().unwrap();
        running.insert(id.to_owned(), child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ls = self.ctr(&["task", "ls"]);
            let up = String::from_utf8_lossy(&ls.stdout)
                .lines()
                .any(|l| l.split_whitespace().next() == Some(id) && l.contains("RUNNING"));
            if up {
                return Ok(());
            }
            let child = running.get_mut(id).unwrap();
            if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                let _ = child.kill();
                return Err(running.remove(id).unwrap().wait_with_output().unwrap());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `ctr run --rm --cni` in the foreground, its stdout (the container's) piped to the
    /// caller: for measuring when the container first says something.
    pub fn run_piped(&self, rootfs: &Path, id: &str, cmd: &[&str]) -> Child {
        let args = self.run_args(rootfs, id, cmd);
        self.ctr_command(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ctr runs")
    }

    /// Runs `cmd` in a running container.
    pub fn exec(&self, id: &str, exec_id: &str, cmd: &[&str]) -> Output {
        let fifo = self.dir.path().join("fifo");
        let mut args = vec![
            "task",
            "exec",
            "--fifo-dir",
            fifo.to_str().unwrap(),
            "--exec-id",
            exec_id,
            id,
        ];
        args.extend_from_slice(cmd);
        self.ctr(&args)
    }

    /// Kills a container of [`Self::run_detached`] and waits for its `ctr run` to end (the CNI
    /// DEL runs before it does); returns that ctr's output.
    pub fn remove(&self, id: &str) -> Output {
        let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
        let child = self
            .running
            .lock()
            .unwrap()
            .remove(id)
            .unwrap_or_else(|| panic!("{id} was not started by run_detached"));
        child.wait_with_output().unwrap()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let ids: Vec<String> = self.running.lock().unwrap().keys().cloned().collect();
        for id in ids {
            let _ = self.remove(&id);
        }
        let parent = self.cgroup_parent();
        let _ = self.child.kill();
        let _ = self.child.wait();
        // runc removes a container's cgroup, not the parent this harness named.
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in hierarchies.flatten() {
                let _ = std::fs::remove_dir(h.path().join(&parent));
            }
        }
    }
}
