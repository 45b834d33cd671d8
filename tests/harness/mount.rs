//! A daemon serving an `Env`'s store, run in the foreground as a child process.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Env;

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
        self.mount_with(dir, &[])
    }

    /// [`Env::mount_at`] with `flags` before the subcommand (global options).
    pub fn mount_with(&self, dir: &Path, flags: &[&str]) -> Mount {
        let log = self.path("daemon-test.log");
        let logf = fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let child = self
            .cmd(flags.iter().map(OsStr::new).chain([OsStr::new("mount"), OsStr::new("--foreground"), dir.as_os_str()]))
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
