//! `prefixd install-cni`: the DaemonSet's init container copies the plugin and the node conflist
//! onto the host, each to a temp name and renamed, the conflist checked first; with
//! `--node-sysctls` (the init container is privileged) it also sets the sysctls the agent's
//! unprivileged container cannot.

use std::path::{Path, PathBuf};

use clap::Args;

use super::CliError;

/// `prefixd install-cni`.
#[derive(Debug, Args)]
pub struct InstallCniArgs {
    /// Where CNI plugins live on the host.
    #[arg(long, default_value = "/opt/cni/bin")]
    pub bin_dir: PathBuf,
    /// Where CNI configs live on the host.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub conf_dir: PathBuf,
    /// The plugin binary to install.
    #[arg(long, default_value = "/usr/local/bin/prefixd-cni")]
    pub plugin: PathBuf,
    /// The conflist to install.
    #[arg(long, default_value = "/etc/prefixd/10-prefixd.conflist")]
    pub conflist: PathBuf,
    /// Also set the node's sysctls the agent needs and cannot set from an unprivileged
    /// container: net.ipv4.ip_forward=1, rp_filter=2 on the primary ENI's link; with
    /// ENABLE_IPv6=true in the environment, net.ipv6.conf.all.forwarding=1 and accept_ra=2 on
    /// that link.
    #[arg(long)]
    pub node_sysctls: bool,
}

fn install_file(src: &Path, dir: &Path, mode: u32) -> Result<PathBuf, CliError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |path: &Path, source| CliError::File {
        path: path.to_owned(),
        source,
    };
    let name = src
        .file_name()
        .ok_or_else(|| io(src, std::io::Error::other("no file name")))?;
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let dest = dir.join(name);
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::copy(src, &tmp).map_err(|e| io(src, e))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, &dest).map_err(|e| io(&dest, e))?;
    Ok(dest)
}

/// Runs `prefixd install-cni`.
pub fn run(args: &InstallCniArgs) -> Result<(), CliError> {
    let conf = std::fs::read(&args.conflist).map_err(|source| CliError::File {
        path: args.conflist.clone(),
        source,
    })?;
    crate::cni::check_conflist(&conf).map_err(|e| {
        CliError::Input(format!(
            "{} is not a usable conflist: {} ({})",
            args.conflist.display(),
            e.msg,
            e.details
        ))
    })?;
    if args.node_sysctls {
        let v = crate::core::settings::Values::from_env(&[&[
            crate::core::config::ENABLE_IPV4,
            crate::core::config::ENABLE_IPV6,
        ]]);
        let families = crate::core::config::Families::from_lookup(&v)
            .map_err(|e| CliError::Input(e.to_string()))?;
        let done = crate::hostnet::node::node_sysctls(families.ipv6)
            .map_err(|e| CliError::Input(format!("cannot set the node's sysctls: {e}")))?;
        for (key, wrote) in done {
            println!("{key}: {}", if wrote { "set" } else { "already set" });
        }
    }
    let bin = install_file(&args.plugin, &args.bin_dir, 0o755)?;
    let conf = install_file(&args.conflist, &args.conf_dir, 0o644)?;
    println!("installed {} and {}", bin.display(), conf.display());
    Ok(())
}
