//! The sandbox a build runs in: Linux user, mount, pid, network, ipc and uts namespaces.
//!
//! ```text
//! mod.rs     what the builder and the helper agree on: the spec (JSON file), the host
//!            profile, and the helper's status (one JSON line on fd 3)
//! helper.rs  the helper process: namespaces, the new root, the steps
//! seccomp.rs the system calls a step may not make
//! ```
//!
//! The sandbox is a security boundary. A step runs as an unprivileged host uid (one of the
//! build users' range, one per running artifact; a non-root daemon's own uid), mapped to root
//! inside its user namespace; it holds no capability over anything of the host. Every mount of
//! its root is locked (a second user namespace is entered after setting them up, so they cannot
//! be remounted writable or unmounted), `/proc/sys` is read-only and the dangerous files of
//! `/proc` are masked, `no_new_privs` is set, a seccomp filter refuses the mount family,
//! namespaces, ptrace, kernel modules and the like, no descriptor of the daemon is inherited,
//! and processes, `/tmp` and the workspace (a tmpfs the daemon mounts) are bounded.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

mod helper;
mod seccomp;

pub use helper::helper_main;

/// What the default (non-rootfs) sandbox offers from the host, read-only.
pub const HOST_DIRS: [&str; 7] = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];
/// Files of the host's `/etc` offered read-only (the rest of `/etc` is generated).
pub const HOST_ETC: [&str; 4] = ["ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives"];
/// Files of `/etc` written fresh in every sandbox.
const GENERATED_ETC: [&str; 4] = ["passwd", "group", "hosts", "nsswitch.conf"];
/// Devices bound from the host's `/dev`.
pub(crate) const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];
/// The version of the host profile: change the sets above, change this.
const HOST_PROFILE_VERSION: &str = "host-v1";

/// The host profile as recipes record it: its version and exactly what it offers.
pub fn host_profile() -> String {
    let dirs: Vec<&str> = HOST_DIRS.to_vec();
    format!(
        "{HOST_PROFILE_VERSION}:{};/etc:{}+generated {}",
        dirs.join(","),
        HOST_ETC.join(","),
        GENERATED_ETC.join(",")
    )
}

/// `PATH` after the deps' `bin` directories.
pub const BASE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Where the workspace is inside the sandbox.
pub const WORKSPACE: &str = "/vorpal/workspace";

/// Everything the helper needs, written by the builder as JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spec {
    /// An empty host directory the new root's tmpfs is mounted on.
    pub root: PathBuf,
    /// Host directory mounted writable at [`WORKSPACE`].
    pub workspace: PathBuf,
    /// Host directory mounted writable at `output_path`.
    pub output: PathBuf,
    /// The artifact's own store path, `/vorpal/store/<input digest>`.
    pub output_path: String,
    /// `(host path in the mount, path inside)` of each dep, mounted read-only.
    pub deps: Vec<(PathBuf, String)>,
    /// Host path (in the mount) of a rootfs artifact; `None` for the host profile.
    pub rootfs: Option<PathBuf>,
    /// The whole environment of every step, before its own `env`.
    pub env: Vec<(String, String)>,
    pub steps: Vec<StepSpec>,
    #[serde(default)]
    pub limits: Limits,
}

/// What a step may use.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Limits {
    /// Processes of the step's user at once (`RLIMIT_NPROC`; each running artifact has a
    /// user of its own, so this bounds a fork bomb to its own sandbox).
    pub processes: u64,
    /// Bytes of address space per process (`RLIMIT_AS`); `None`: unlimited.
    pub address_space: Option<u64>,
    /// Size of each of `/tmp` and `/dev/shm` (tmpfs, in memory).
    pub tmp_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { processes: 2048, address_space: None, tmp_bytes: 1 << 30 }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// How the helper's steps ended, when not all succeeded: one JSON line on fd 3.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum HelperStatus {
    /// Step `step` (from 1) exited with `code`.
    Exited { step: usize, code: i32 },
    /// Step `step` was killed by a signal.
    Killed { step: usize, signal: String },
    /// The sandbox could not be set up: what was being done, and the system's answer.
    Setup { action: String, cause: String },
}

impl std::fmt::Display for HelperStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HelperStatus::Exited { code, .. } => write!(f, "exited with status {code}"),
            HelperStatus::Killed { signal, .. } => write!(f, "was killed by {signal}"),
            HelperStatus::Setup { action, cause } => write!(f, "{action}: {cause}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The profile string is part of every recipe: it must not change by accident.
    #[test]
    fn host_profile_is_stable() {
        assert_eq!(
            host_profile(),
            "host-v1:/usr,/bin,/sbin,/lib,/lib32,/lib64,/libx32;\
             /etc:ld.so.cache,ld.so.conf,ld.so.conf.d,alternatives+generated passwd,group,hosts,nsswitch.conf"
        );
    }

    #[test]
    fn status_lines_round_trip() {
        for st in [
            HelperStatus::Exited { step: 2, code: 1 },
            HelperStatus::Killed { step: 1, signal: "SIGKILL".into() },
            HelperStatus::Setup { action: "mount".into(), cause: "EPERM".into() },
        ] {
            let line = serde_json::to_string(&st).unwrap();
            assert_eq!(serde_json::from_str::<HelperStatus>(&line).unwrap(), st);
        }
    }
}
