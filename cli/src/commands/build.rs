//! `vorpalfs build`: runs in the daemon, which owns the store and the mount the sandboxes read
//! deps from; the client starts one in the background when none runs, sends the parsed build,
//! renders its progress events and relays its output. Ctrl-C closes our side of the
//! connection; the daemon then kills the running steps and publishes nothing more.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use anyhow::{Result, bail};
use vorpalfs_builder::{Builder, Event, Options, Status};

use crate::args::BuildArgs;
use crate::daemon::client::{self, Sink};
use crate::daemon::protocol::Request;
use crate::settings::Settings;
use crate::view::View;

/// Runs a build against the daemon's builder; `events` carries progress to the client.
pub fn run(
    builder: &Builder,
    settings: &Settings,
    args: BuildArgs,
    out: &mut dyn Write,
    events: &(dyn Fn(Event) + Sync),
    cancel: &AtomicBool,
) -> Result<ExitCode> {
    // The words are resolved against the caller's directory, with the caller's rights.
    let resolve = || crate::names::resolve(&settings.cwd, args.file.as_deref(), &args.words);
    let targets = match &settings.creds {
        Some(c) => c.with(resolve),
        None => resolve(),
    }?;
    let opts = Options {
        targets: targets.artifacts,
        jobs: args
            .jobs
            .or(settings.jobs)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        keep_going: args.keep_going,
        rebuild: args.rebuild,
        dry_run: args.dry_run,
        keep_failed: args.keep_failed,
        creds: settings.creds.clone(),
        allow_outside_sources: args.allow_outside_sources,
    };
    let report = builder.build(&targets.manifest, &opts, events, cancel)?;
    if settings.json {
        serde_json::to_writer(&mut *out, &report)?;
        writeln!(out)?;
    } else if args.dry_run {
        for a in &report.artifacts {
            let what = if a.status == Status::Cached { "cached" } else { "build " };
            writeln!(out, "{what} {} {}", a.name, a.digest)?;
        }
    } else {
        for a in report.artifacts.iter().filter(|a| a.requested && a.output.is_some()) {
            writeln!(out, "{}", a.path.display())?;
        }
    }
    let failed = report.failed();
    if failed > 0 {
        bail!("{failed} artifact{} failed", if failed == 1 { "" } else { "s" });
    }
    Ok(ExitCode::SUCCESS)
}

// ----- the client side -----

static CONN_FD: AtomicI32 = AtomicI32::new(-1);
static INTERRUPTS: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_sigint(_: libc::c_int) {
    // Only async-signal-safe calls here: shutdown(2) and _exit(2).
    if INTERRUPTS.fetch_add(1, Ordering::SeqCst) == 0 {
        let fd = CONN_FD.load(Ordering::SeqCst);
        if fd >= 0 {
            // SAFETY: shutdown on the connection's fd, which outlives the handler's installation.
            unsafe { libc::shutdown(fd, libc::SHUT_WR) };
        }
    } else {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
}

impl Sink for View {
    fn stdout(&mut self, data: &[u8]) -> Result<()> {
        Ok(self.suspend(|| std::io::stdout().lock().write_all(data))?)
    }

    fn stderr(&mut self, data: &[u8]) -> Result<()> {
        Ok(self.suspend(|| std::io::stderr().lock().write_all(data))?)
    }

    fn event(&mut self, e: Event) {
        self.show(e)
    }
}

/// Sends a build to the daemon, renders its progress, relays its output; returns its exit code.
pub fn call(mut conn: UnixStream, settings: &Settings, args: BuildArgs) -> Result<ExitCode> {
    CONN_FD.store(std::os::fd::AsRawFd::as_raw_fd(&conn), Ordering::SeqCst);
    // SAFETY: installs a handler that only touches atomics and calls async-signal-safe functions.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    let mut view = View::new(settings.json);
    let code = client::call(&mut conn, settings, Request::Build(args), &mut view);
    view.finish();
    CONN_FD.store(-1, Ordering::SeqCst);
    if INTERRUPTS.load(Ordering::SeqCst) > 0 {
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::from(code?.clamp(0, 255) as u8))
}
