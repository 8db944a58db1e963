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

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A containerd of the test's, in a network namespace.
pub struct Containerd {
    pub dir: tempfile::TempDir,
    pub netns: String,
    child: Child,
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

impl Containerd {
    /// Starts containerd in the named network namespace `netns`; the conflists in `cni_conf`
    /// and the plugins in `cni_bin` are what `ctr run --cni` will use.
    pub fn start(netns: &str, cni_conf: &Path, cni_bin: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in [
            "root", "state", "fifo", "opt", "etc-up", "etc-work", "opt-up", "opt-work", "var-up",
            "var-work",
        ] {
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
        // The mount namespace's view of the CNI directories, shared by every ctr of this test.
        std::fs::write(
            d.join("cni-view.sh"),
            format!(
                "set -e\n\
                 mount -t overlay overlay -o lowerdir=/etc,upperdir={d}/etc-up,workdir={d}/etc-work /etc\n\
                 mkdir -p /etc/cni/net.d\n\
                 mount --bind {conf} /etc/cni/net.d\n\
                 mount -t overlay overlay -o lowerdir=/opt,upperdir={d}/opt-up,workdir={d}/opt-work /opt\n\
                 mkdir -p /opt/cni/bin\n\
                 mount --bind {bin} /opt/cni/bin\n\
                 mount -t overlay overlay -o lowerdir=/var/lib,upperdir={d}/var-up,workdir={d}/var-work /var/lib\n\
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
        let d = self.dir.path();
        Command::new(need("nsenter"))
            .arg(format!("--net=/run/netns/{}", self.netns))
            .args([&need("unshare"), "-m", "--propagation", "private", "sh"])
            .arg(d.join("cni-view.sh"))
            .arg(need("ctr"))
            .arg("--address")
            .arg(self.socket())
            .args(args)
            .output()
            .expect("ctr runs")
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
        let fifo = self.dir.path().join("fifo");
        let cgroup = self.cgroup(id);
        let mut args = vec![
            "run",
            "--rm",
            "--cni",
            "--cgroup",
            &cgroup,
            "--fifo-dir",
            fifo.to_str().unwrap(),
            "--rootfs",
            rootfs.to_str().unwrap(),
            id,
        ];
        args.extend_from_slice(cmd);
        self.ctr(&args)
    }

    /// The same, detached: the container keeps running.
    pub fn run_detached(&self, rootfs: &Path, id: &str, cmd: &[&str]) -> Output {
        let cgroup = self.cgroup(id);
        let mut args = vec![
            "run",
            "-d",
            "--null-io",
            "--cni",
            "--cgroup",
            &cgroup,
            "--rootfs",
            rootfs.to_str().unwrap(),
            id,
        ];
        args.extend_from_slice(cmd);
        self.ctr(&args)
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

    /// Stops and removes a detached container; its CNI DEL runs.
    pub fn remove(&self, id: &str) -> Output {
        let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.ctr(&["task", "delete", id]);
            if out.status.success() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.ctr(&["container", "delete", id])
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
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
