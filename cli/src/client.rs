//! The client side of the daemon: run a command through it, start it in the background, stop
//! it, ask its status.

use std::io::{BufRead, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::proto::{self, Request};
use crate::settings::Settings;

/// Connects to the store's daemon, if one is running.
pub fn connect(settings: &Settings) -> Option<UnixStream> {
    UnixStream::connect(settings.socket()).ok()
}

/// Sends a request and relays the answer to our stdout/stderr; returns the daemon's exit code.
pub fn call(mut conn: UnixStream, req: &Request) -> Result<ExitCode> {
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    conn.write_all(&line).context("cannot send to the daemon")?;
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    while let Some((tag, data)) = proto::read_frame(&mut conn).context("lost the daemon")? {
        match tag {
            proto::STDOUT => stdout.write_all(&data)?,
            proto::STDERR => stderr.write_all(&data)?,
            proto::EXIT => {
                stdout.flush()?;
                let code = i32::from_le_bytes(data.as_slice().try_into().unwrap_or([1, 0, 0, 0]));
                return Ok(ExitCode::from(code.clamp(0, 255) as u8));
            }
            other => bail!("unexpected frame {other:#x} from the daemon"),
        }
    }
    bail!("the daemon closed the connection before the command finished (see daemon.log in the store directory)")
}

/// Runs this very command line inside the daemon.
pub fn forward(conn: UnixStream, settings: &Settings) -> Result<ExitCode> {
    let argv: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    call(conn, &Request::Run { argv, cwd: settings.cwd.to_string_lossy().into_owned() })
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
pub fn shutdown(conn: UnixStream, settings: &Settings) -> Result<()> {
    call(conn, &Request::Shutdown)?;
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

/// Reads the daemon's status JSON.
pub fn status(conn: UnixStream) -> Result<serde_json::Value> {
    let mut c = conn;
    let mut line = serde_json::to_vec(&Request::Status)?;
    line.push(b'\n');
    c.write_all(&line)?;
    let mut out = Vec::new();
    while let Some((tag, data)) = proto::read_frame(&mut c)? {
        match tag {
            proto::STDOUT => out.extend_from_slice(&data),
            proto::EXIT => break,
            _ => {}
        }
    }
    let first = out.lines().next().transpose()?.unwrap_or_default();
    Ok(serde_json::from_str(&first)?)
}

/// Runs `argv` in the daemon and collects its exit code, stdout and stderr.
pub fn capture(mut conn: UnixStream, argv: &[String], settings: &Settings) -> Result<(i32, Vec<u8>, Vec<u8>)> {
    let req = Request::Run { argv: argv.to_vec(), cwd: settings.cwd.to_string_lossy().into_owned() };
    let mut line = serde_json::to_vec(&req)?;
    line.push(b'\n');
    conn.write_all(&line).context("cannot send to the daemon")?;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while let Some((tag, data)) = proto::read_frame(&mut conn).context("lost the daemon")? {
        match tag {
            proto::STDOUT => out.extend_from_slice(&data),
            proto::STDERR => err.extend_from_slice(&data),
            proto::EXIT => {
                return Ok((i32::from_le_bytes(data.as_slice().try_into().unwrap_or([1, 0, 0, 0])), out, err));
            }
            _ => {}
        }
    }
    bail!("the daemon closed the connection before answering")
}
