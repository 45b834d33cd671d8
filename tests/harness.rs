//! Shared harness of the end-to-end tests: find the built `vorpalfs` binary, run it against a
//! scratch store, and build test trees.
//!
//! The tests drive the real binary as a user would (exit codes, stdout, stderr) on real
//! directories, a real RocksDB and real pack files.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "harness/s3_server.rs"]
pub mod s3_server;

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
        let tmp = tempfile::Builder::new().prefix("vorpalfs-test").tempdir().expect("tempdir");
        let store = tmp.path().join("store");
        Env { tmp, store, vars: Vec::new() }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
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

impl Default for Env {
    fn default() -> Self {
        Env::new()
    }
}

/// Deterministic pseudo-random bytes (xorshift), incompressible enough to defeat zstd.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

pub fn write(path: &Path, data: &[u8]) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    fs::write(path, data).unwrap();
}

pub fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs a shell command, asserting success; returns stdout.
#[track_caller]
pub fn sh(script: &str) -> String {
    let o = Command::new("bash").arg("-c").arg(script).output().expect("bash");
    assert!(o.status.success(), "`{script}` failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `diff -r --no-dereference A B` is empty, and modes and symlink targets agree too.
#[track_caller]
pub fn assert_same_tree(a: &Path, b: &Path) {
    let o = Command::new("diff").arg("-r").arg("--no-dereference").arg(a).arg(b).output().expect("diff");
    assert!(o.status.success(), "diff -r {} {}:\n{}", a.display(), b.display(), String::from_utf8_lossy(&o.stdout));
    // diff ignores modes and empty directories; compare a listing of type, exec bit and size.
    assert_eq!(listing(a), listing(b), "type/mode listing differs");
}

/// Listing of a tree: relative path, type, exec bit and size (files), target (symlinks).
/// Directory sizes are filesystem-specific and left out.
pub fn listing(root: &Path) -> Vec<String> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<String>) {
        let mut names: Vec<_> = fs::read_dir(root.join(rel)).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        for name in names {
            let rel = rel.join(&name);
            let p = root.join(&rel);
            let meta = fs::symlink_metadata(&p).unwrap();
            let line = if meta.is_dir() {
                walk(root, &rel, out);
                format!("{rel:?} dir")
            } else if meta.is_symlink() {
                format!("{rel:?} symlink -> {:?}", fs::read_link(&p).unwrap())
            } else {
                format!("{rel:?} file size={} exec={}", meta.len(), meta.permissions().mode() & 0o111 != 0)
            };
            out.push(line);
        }
    }
    let mut out = Vec::new();
    walk(root, Path::new(""), &mut out);
    out
}

/// A daemon serving `Env`'s store at a mountpoint, run in the foreground as a child process.
/// Stopped with SIGTERM at drop (and detached if that fails, so a test never leaves a mount).
pub struct Mount {
    pub dir: PathBuf,
    pub log: PathBuf,
    child: Option<std::process::Child>,
}

impl Env {
    /// Mounts this env's store at `<tmp>/mnt` and waits until it serves.
    pub fn mount(&self) -> Mount {
        self.mount_at(&self.path("mnt"))
    }

    pub fn mount_at(&self, dir: &Path) -> Mount {
        let log = self.path("daemon-test.log");
        let logf = fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let child = self
            .cmd([OsStr::new("mount"), OsStr::new("--foreground"), dir.as_os_str()])
            .env("RUST_LOG", "info,fuser=warn")
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("spawn daemon");
        let mut m = Mount { dir: dir.to_path_buf(), log, child: Some(child) };
        let t = std::time::Instant::now();
        loop {
            let st = self.run(["--json", "status"]);
            if st.stdout.contains("\"pid\"") {
                break;
            }
            if let Some(status) = m.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited ({status}):\n{}", fs::read_to_string(&m.log).unwrap_or_default());
            }
            assert!(t.elapsed().as_secs() < 30, "daemon did not start:\n{}", fs::read_to_string(&m.log).unwrap());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        m
    }
}

impl Mount {
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal and waits for the daemon to exit; returns its exit status.
    pub fn stop_with(&mut self, signal: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon still running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, signal) };
        child.wait().unwrap()
    }

    /// Waits for a daemon stopped by other means (`vorpalfs umount`).
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.take().expect("daemon still running").wait().unwrap()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
        let _ = Command::new("umount").arg("-l").arg(&self.dir).stderr(std::process::Stdio::null()).status();
    }
}

/// `sha256sum` of every regular file below `root`, as `path  hash` lines sorted by path.
pub fn sha256_all(root: &Path) -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg("find . -type f -print0 | sort -z | xargs -0 -r sha256sum")
        .current_dir(root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
