//! Running the sandbox helper: spawn it in its own process group as the build user, stream
//! its output line by line into the log and to a callback, wait for it on its own thread, and kill its whole
//! process tree on timeout or cancel. Every run ends in exactly one [`End`].

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::sandbox::HelperStatus;

/// How a run of the helper ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Every step succeeded.
    Succeeded,
    /// A step failed or the sandbox could not be set up (from the helper's status line), or
    /// the helper itself died (`None`: its exit status is in `how`).
    Failed {
        status: Option<HelperStatus>,
        how: String,
    },
    TimedOut,
    Cancelled,
}

/// Why the helper could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot create the log {}: {source}", path.display())]
    Log { path: std::path::PathBuf, source: std::io::Error },
    #[error("cannot create a pipe: {0}")]
    Pipe(std::io::Error),
    #[error("cannot start the sandbox helper {}: {source}", helper.display())]
    Spawn { helper: std::path::PathBuf, source: std::io::Error },
    #[error("waiting for the sandbox: {0}")]
    Wait(std::io::Error),
}

/// Runs `helper __sandbox spec`, its output (stdout and stderr) appended to `log_path` and
/// handed to `on_line` line by line. Stops it on `timeout` or when `cancel` is set.
pub fn run(
    helper: &Path,
    spec: &Path,
    run_as: Option<(u32, u32)>,
    log_path: &Path,
    timeout: Option<Duration>,
    on_line: &(dyn Fn(String) + Sync),
    cancel: &AtomicBool,
) -> Result<End, ProcessError> {
    let mut log = fs::File::create(log_path).map_err(|source| ProcessError::Log { path: log_path.into(), source })?;
    let (out_r, out_w) = std::io::pipe().map_err(ProcessError::Pipe)?;
    let (mut status_r, status_w) = std::io::pipe().map_err(ProcessError::Pipe)?;
    let mut cmd = Command::new(helper);
    cmd.arg("__sandbox").arg(spec);
    cmd.stdin(Stdio::null()).stdout(out_w.try_clone().map_err(ProcessError::Pipe)?).stderr(out_w);
    cmd.env_clear().process_group(0);
    if let Some((uid, gid)) = run_as {
        // No supplementary groups, then this gid and uid, before the helper runs at all.
        cmd.uid(uid).gid(gid);
    }
    let status_fd = std::os::fd::AsRawFd::as_raw_fd(&status_w);
    // SAFETY: between fork and exec we only call async-signal-safe functions (dup2, prctl).
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(status_fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // If this thread goes away (the daemon killed), so does the build. (Set after the
            // change of user, which clears it.)
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| ProcessError::Spawn { helper: helper.into(), source })?;
    drop(cmd);
    drop(status_w);
    let pgid = child.id() as i32;
    let started = Instant::now();
    let (status, killed) = std::thread::scope(|s| {
        let reader = s.spawn(move || {
            let mut r = BufReader::new(out_r);
            let mut line = Vec::new();
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let _ = log.write_all(&line);
                        on_line(String::from_utf8_lossy(&line).trim_end_matches(['\n', '\r']).to_string());
                    }
                }
            }
            let _ = log.flush();
        });
        // The child is waited for on its own thread, so that its end is seen at once; this
        // thread wakes every 50 ms to check the deadline and the cancel flag.
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        let waiter = s.spawn(move || {
            let _ = done_tx.send(child.wait());
        });
        let mut killed = None;
        let status = loop {
            match done_rx.recv_timeout(Duration::from_millis(50)) {
                Ok(st) => break st,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    break Err(std::io::Error::other("the sandbox waiter went away"));
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            }
            if killed.is_none() {
                if cancel.load(Ordering::SeqCst) {
                    killed = Some(End::Cancelled);
                } else if timeout.is_some_and(|t| started.elapsed() > t) {
                    killed = Some(End::TimedOut);
                }
                if killed.is_some() {
                    // SAFETY: kill(2) on the helper's own process group.
                    unsafe { libc::kill(-pgid, libc::SIGKILL) };
                }
            }
        };
        let _ = waiter.join();
        let _ = reader.join();
        (status, killed)
    });
    let status = status.map_err(ProcessError::Wait)?;
    if let Some(k) = killed {
        return Ok(k);
    }
    if status.success() {
        return Ok(End::Succeeded);
    }
    let mut text = String::new();
    let _ = status_r.read_to_string(&mut text);
    let parsed = text.lines().next().and_then(|l| serde_json::from_str::<HelperStatus>(l).ok());
    let how = match &parsed {
        Some(st) => st.to_string(),
        None => format!("the sandbox helper ended: {status}"),
    };
    Ok(End::Failed { status: parsed, how })
}
