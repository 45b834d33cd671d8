//! A scratch store and the `vorpalfs` binary run against it.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Path of the `vorpalfs` binary built in the same target directory as this test.
pub fn vorpalfs_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VORPALFS_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test-binary> → target/<profile>/vorpalfs
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe.parent().and_then(Path::parent).map(|p| p.join("vorpalfs")).expect("target dir");
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build --release --workspace`, as scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// A scratch directory with a store in it, removed at drop.
pub struct Env {
    pub tmp: tempfile::TempDir,
    pub store: PathBuf,
    /// Extra environment for every command (e.g. `VORPALFS_S3`).
    pub vars: Vec<(String, String)>,
}

/// The result of one run of the binary.
#[derive(Debug)]
pub struct Run {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub raw_stdout: Vec<u8>,
}

impl Run {
    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert!(self.status.success(), "vorpalfs failed: {}\nstderr:\n{}", self.status, self.stderr);
        &self.stdout
    }

    /// Asserts failure with a message on stderr containing every one of `needles`.
    #[track_caller]
    pub fn fails_with(&self, needles: &[&str]) {
        assert!(!self.status.success(), "expected failure, got success\nstdout:\n{}", self.stdout);
        for n in needles {
            assert!(self.stderr.contains(n), "stderr lacks {n:?}:\n{}", self.stderr);
        }
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            status: o.status,
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            raw_stdout: o.stdout,
        }
    }
}

impl Env {
    pub fn new() -> Env {
        require_tools();
        let tmp = tempfile::Builder::new().prefix("vorpalfs-test").tempdir().expect("tempdir");
        let store = tmp.path().join("store");
        Env { tmp, store, vars: Vec::new() }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    /// Where a root daemon of this store keeps running builds' workspaces (the builder's rule:
    /// below /run/vorpalfs, one directory per store).
    pub fn builds_dir(&self) -> PathBuf {
        let id = blake3::hash(self.store.as_os_str().as_encoded_bytes()).to_hex();
        PathBuf::from("/run/vorpalfs").join(format!("builds-{}", &id[..16]))
    }

    /// The running (or leftover) builds' workspaces: the builds directory less the builders'
    /// view of the mount.
    pub fn workspaces(&self) -> Vec<std::ffi::OsString> {
        let dir = std::fs::read_dir(self.builds_dir()).expect("the builds directory");
        dir.map(|e| e.unwrap().file_name()).filter(|n| n != "store").collect()
    }

    /// A `vorpalfs` command bound to this env's store.
    pub fn cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = Command::new(vorpalfs_bin());
        c.env("VORPALFS_STORE_DIR", &self.store).env_remove("RUST_LOG").args(args);
        c.envs(self.vars.iter().map(|(k, v)| (k, v)));
        c
    }

    pub fn run<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd(args).output().expect("spawn vorpalfs").into()
    }

    /// `store add DIR` and return the printed digest.
    #[track_caller]
    pub fn add(&self, dir: &Path) -> String {
        let r = self.run([OsStr::new("store"), OsStr::new("add"), dir.as_os_str()]);
        let d = r.ok().trim().to_string();
        assert_eq!(d.len(), 64, "not a digest: {d:?}");
        d
    }

    /// `store add --json DIR`, parsed.
    #[track_caller]
    pub fn add_json(&self, dir: &Path) -> serde_json::Value {
        let r = self.run([OsStr::new("--json"), OsStr::new("store"), OsStr::new("add"), dir.as_os_str()]);
        serde_json::from_str(r.ok()).expect("--json output is JSON")
    }
}

/// An unprivileged uid for the tests (no login has it).
pub const USER: u32 = 1001;

impl Env {
    /// A `vorpalfs` command run as the unprivileged user [`USER`], against this env's store.
    /// The scratch directory is opened to the user and the binary copied where it can reach it
    /// (the target directory may be below /root).
    pub fn as_user<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        use std::os::unix::fs::PermissionsExt;
        let bin = self.path("vorpalfs-user");
        if !bin.exists() {
            // Copied by another process: a file this one held open for writing could be
            // inherited by a child another test thread forks meanwhile, and executing it would
            // then fail with ETXTBSY ("Text file busy").
            let ok = Command::new("install").args(["-m", "0755"]).arg(vorpalfs_bin()).arg(&bin).status();
            assert!(ok.expect("run install").success(), "cannot copy the binary to {}", bin.display());
        }
        std::fs::set_permissions(self.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut c = Command::new("setpriv");
        c.args(["--reuid", &USER.to_string(), "--regid", &USER.to_string(), "--clear-groups"])
            .arg(&bin)
            .args(args)
            .env("VORPALFS_STORE_DIR", &self.store)
            .env("HOME", self.tmp.path())
            .env_remove("RUST_LOG")
            .envs(self.vars.iter().map(|(k, v)| (k, v)));
        c
    }

    pub fn run_as_user<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.as_user(args).output().expect("spawn vorpalfs as the user").into()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // A root daemon's (empty by now) directory of workspaces, and its view of the mount if
        // a test killed the daemon before it could detach it.
        let view = self.builds_dir().join("store");
        if let Ok(c) = std::ffi::CString::new(view.as_os_str().as_encoded_bytes()) {
            // SAFETY: a valid C string; a failure (nothing mounted there) is harmless.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir(&view);
        let _ = std::fs::remove_dir(self.builds_dir());
    }
}

impl Default for Env {
    fn default() -> Self {
        Env::new()
    }
}

/// The external programs the tests run, and the Debian package of each (installed by
/// `scripts/setup.sh`).
const TOOLS: &[(&str, &str)] = &[
    ("bash", "bash"),
    ("cc", "build-essential"),
    ("diff", "diffutils"),
    ("find", "findutils"),
    ("xargs", "findutils"),
    ("sha256sum", "coreutils"),
    ("stat", "coreutils"),
    ("mkfifo", "coreutils"),
    ("mknod", "coreutils"),
    ("chown", "coreutils"),
    ("awk", "gawk"),
    ("tar", "tar"),
    ("getfattr", "attr"),
    ("mount", "mount"),
    ("umount", "mount"),
    ("unshare", "util-linux"),
    ("flock", "util-linux"),
    ("ps", "procps"),
    ("setpriv", "util-linux"),
    ("pgrep", "procps"),
    ("pkill", "procps"),
    ("python3", "python3"),
    ("fusermount3", "fuse3"),
];

/// Checks, once per test binary, that every external program the tests run is installed;
/// panics naming each missing one and its package.
pub fn require_tools() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let r = CHECKED.get_or_init(|| {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let missing: Vec<String> = TOOLS
            .iter()
            .filter(|(tool, _)| !std::env::split_paths(&path).any(|d| d.join(tool).is_file()))
            .map(|(tool, pkg)| format!("{tool} (Debian package {pkg})"))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("the tests need programs that are not installed: {}; run scripts/setup.sh", missing.join(", ")))
        }
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}
