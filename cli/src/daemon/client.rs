//! The client side of the daemon: send a typed request and handle the answer's frames in one
//! loop; start a daemon in the background; stop it.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use vorpalfs_builder::Event;

use super::protocol::{self, Envelope, Frame, Reply, Request, Status};
use crate::settings::Settings;

/// Connects to the store's daemon, if one is running.
pub fn connect(settings: &Settings) -> Option<UnixStream> {
    UnixStream::connect(settings.socket()).ok()
}

/// What a caller does with the frames of an answer as they arrive.
pub trait Sink {
    fn stdout(&mut self, data: &[u8]) -> Result<()>;
    fn stderr(&mut self, data: &[u8]) -> Result<()>;
    fn event(&mut self, _event: Event) {}
    fn reply(&mut self, _reply: Reply) {}
}

/// Relays the daemon's output to ours and keeps its reply.
#[derive(Default)]
pub struct Relay {
    pub reply: Option<Reply>,
}

impl Sink for Relay {
    fn stdout(&mut self, data: &[u8]) -> Result<()> {
        Ok(std::io::stdout().lock().write_all(data)?)
    }

    fn stderr(&mut self, data: &[u8]) -> Result<()> {
        Ok(std::io::stderr().lock().write_all(data)?)
    }

    fn reply(&mut self, reply: Reply) {
        self.reply = Some(reply);
    }
}

/// Sends `request` and hands the answer's frames to `sink` until the exit code, returned.
pub fn call(conn: &mut UnixStream, settings: &Settings, request: Request, sink: &mut dyn Sink) -> Result<i32> {
    let env = Envelope { cwd: settings.cwd.clone(), json: settings.json, request };
    protocol::write_frame(conn, &Frame::Request(env)).context("cannot send to the daemon")?;
    loop {
        let frame = protocol::read_frame(conn).context("lost the daemon")?.with_context(|| {
            format!(
                "the daemon closed the connection before the command finished (see {})",
                settings.daemon_log().display()
            )
        })?;
        match frame {
            Frame::Stdout(d) => sink.stdout(&d)?,
            Frame::Stderr(d) => sink.stderr(&d)?,
            Frame::Event(e) => sink.event(e),
            Frame::Reply(r) => sink.reply(r),
            Frame::Exit(code) => {
                std::io::stdout().flush()?;
                return Ok(code);
            }
            Frame::Request(_) => bail!("the daemon sent a request"),
        }
    }
}

/// Runs `request` in the daemon, relaying its output; returns its exit code as ours.
pub fn forward(mut conn: UnixStream, settings: &Settings, request: Request) -> Result<std::process::ExitCode> {
    let code = call(&mut conn, settings, request, &mut Relay::default())?;
    Ok(std::process::ExitCode::from(code.clamp(0, 255) as u8))
}

/// The daemon's status.
pub fn status(mut conn: UnixStream, settings: &Settings) -> Result<Status> {
    let mut relay = Relay::default();
    call(&mut conn, settings, Request::Status, &mut relay)?;
    match relay.reply {
        Some(Reply::Status(s)) => Ok(*s),
        _ => bail!("the daemon did not answer with its status"),
    }
}

/// Starts a daemon in the background (a new session, output to `<store>/daemon.log`) and waits
/// until it answers on its socket.
pub fn spawn_daemon(settings: &Settings, mountpoint: &Path, threads: Option<usize>) -> Result<()> {
    // Open (creating) the store here first: its errors (not a store, in use) are reported to the
    // caller directly, and the log file below then lands in a store directory.
    drop(vorpalfs_store::Store::open(&settings.store_dir)?);
    let log_path = settings.daemon_log();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let start_len = log.metadata().map(|m| m.len()).unwrap_or(0);
    let exe = std::env::current_exe().context("cannot find the vorpalfs executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--store-dir").arg(&settings.store_dir).arg("mount").arg("--foreground").arg(mountpoint);
    if let Some(t) = threads {
        cmd.arg("--threads").arg(t.to_string());
    }
    if let Some(s3) = &settings.s3 {
        cmd.arg("--s3").arg(s3);
    }
    if let Some(e) = &settings.s3_endpoint {
        cmd.arg("--s3-endpoint").arg(e);
    }
    if let Some(c) = settings.cache_size {
        cmd.arg("--cache-size").arg(c.to_string());
    }
    if let Some(p) = settings.prefetch_below {
        cmd.arg("--prefetch-below").arg(p.to_string());
    }
    if let Some(b) = settings.build_space {
        cmd.arg("--build-space").arg(b.to_string());
    }
    if let Some(p) = settings.build_processes {
        cmd.arg("--build-processes").arg(p.to_string());
    }
    if let Some(m) = settings.max_download {
        cmd.arg("--max-download").arg(m.to_string());
    }
    if let Some(g) = &settings.admin_group {
        cmd.arg("--admin-group").arg(g);
    }
    if let Some(k) = &settings.signing_key {
        cmd.arg("--signing-key").arg(k);
    }
    if let Some(k) = &settings.trusted_keys {
        cmd.arg("--trusted-keys").arg(k);
    }
    if settings.xattrs {
        cmd.arg("--xattrs");
    }
    if settings.fill {
        cmd.arg("--fill");
    }
    if settings.push_profiles {
        cmd.arg("--push-profiles");
    }
    if let Some(m) = &settings.metrics {
        cmd.arg("--metrics").arg(m);
    }
    if settings.trust_unsigned {
        cmd.arg("--trust-unsigned");
    }
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info,fuser=warn");
    }
    cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    // SAFETY: setsid is async-signal-safe; it detaches the daemon from our terminal and
    // process group so that it outlives this command.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start the daemon")?;
    let t = Instant::now();
    loop {
        if connect(settings).is_some() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("the daemon exited ({status}) before serving:\n{}", log_tail(&log_path, start_len));
        }
        if t.elapsed() > Duration::from_secs(60) {
            bail!("the daemon did not answer within 60s; see {}", log_path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn log_tail(path: &Path, from: u64) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text[(from as usize).min(text.len())..]).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Asks the daemon to unmount and exit, and waits until it has.
pub fn shutdown(mut conn: UnixStream, settings: &Settings) -> Result<()> {
    if call(&mut conn, settings, Request::Shutdown, &mut Relay::default())? != 0 {
        // The daemon said why (on our stderr).
        bail!("the daemon did not stop");
    }
    let t = Instant::now();
    // The daemon removes its socket before unmounting and exits after; wait for both.
    while connect(settings).is_some() || settings.socket().exists() {
        if t.elapsed() > Duration::from_secs(30) {
            bail!("the daemon did not stop within 30s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let lock = settings.store_dir.join("lock");
    while is_locked(&lock) {
        if t.elapsed() > Duration::from_secs(30) {
            bail!("the daemon did not exit within 30s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Whether another process holds the store lock (the daemon still running).
fn is_locked(path: &Path) -> bool {
    use std::os::unix::io::AsRawFd;
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    // SAFETY: flock on a descriptor we own; released when `f` is closed.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    rc != 0
}
