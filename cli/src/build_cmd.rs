//! `vorpalfs build`, `inspect` and `run`.
//!
//! Builds run inside the daemon, which owns the store and the mount the sandboxes read deps
//! from; `build` starts one in the background when none is running. The daemon sends progress
//! as event frames, rendered here: a live display on a terminal, plain prefixed lines otherwise.
//! Ctrl-C closes our side of the connection; the daemon then kills the running steps and
//! publishes nothing more.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use vorpalfs_builder::{Builder, Event, Options};
use vorpalfs_store::Digest;

use crate::proto::{self, Request};
use crate::settings::Settings;

#[derive(Args, Debug, Clone)]
pub struct BuildArgs {
    /// A manifest file, or a directory holding vorpalfs.toml.
    #[arg(default_value = ".")]
    pub manifest: PathBuf,
    /// Artifacts to build (names or aliases) [default: all].
    pub artifacts: Vec<String>,
    /// Artifacts built at once [default: number of CPUs].
    #[arg(short, long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Go on with independent artifacts after one fails.
    #[arg(short, long)]
    pub keep_going: bool,
    /// Build the requested artifacts even if their result exists.
    #[arg(long)]
    pub rebuild: bool,
    /// Print what would be built and what is cached, and stop.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Keep the workspace of a failed artifact (its path is printed).
    #[arg(long)]
    pub keep_failed: bool,
}

#[derive(Args, Debug, Clone)]
pub struct InspectArgs {
    /// An artifact name or alias, or an input digest.
    pub artifact: String,
    /// Compute the recipe from this manifest (file or directory) instead of the store's record.
    #[arg(short = 'f', long)]
    pub manifest: Option<PathBuf>,
    /// Print the exact bytes that are hashed (compact), not the readable form.
    #[arg(long)]
    pub canonical: bool,
}

/// Runs a build against the daemon's builder; `events` carries progress to the client.
pub fn run_build(
    builder: &Builder,
    settings: &Settings,
    args: BuildArgs,
    out: &mut dyn Write,
    events: &(dyn Fn(Event) + Sync),
    cancel: &AtomicBool,
) -> Result<ExitCode> {
    let opts = Options {
        targets: args.artifacts,
        jobs: args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        keep_going: args.keep_going,
        rebuild: args.rebuild,
        dry_run: args.dry_run,
        keep_failed: args.keep_failed,
    };
    let report = builder.build(&settings.abs(&args.manifest), &opts, events, cancel)?;
    if settings.json {
        serde_json::to_writer(&mut *out, &report)?;
        writeln!(out)?;
    } else if args.dry_run {
        for a in &report.artifacts {
            let what = if a.status == "cached" { "cached" } else { "build " };
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

/// `vorpalfs inspect`: the recipe of a built artifact, or of one in a manifest.
pub fn run_inspect(builder: &Builder, settings: &Settings, args: InspectArgs, out: &mut dyn Write) -> Result<ExitCode> {
    let store = builder.store();
    let (digest, recipe) = if let Some(path) = &args.manifest {
        let path = vorpalfs_builder::manifest::locate(&settings.abs(path))?;
        let m = vorpalfs_builder::manifest::load(&path)?;
        let i =
            m.find(&args.artifact).with_context(|| format!("no artifact `{}` in {}", args.artifact, path.display()))?;
        let r = builder.recipes(&m)?.swap_remove(i);
        (r.digest(), r.canonical())
    } else {
        let digest = match args.artifact.parse::<Digest>() {
            Ok(d) => d,
            Err(_) => store.alias(&args.artifact)?.with_context(|| {
                format!("no build of `{}` in the store (use --manifest to inspect one not built yet)", args.artifact)
            })?,
        };
        (digest, store.recipe_or_err(&digest)?)
    };
    let value: serde_json::Value = serde_json::from_slice(&recipe).context("the stored recipe is not JSON")?;
    let output = store.result(&digest)?;
    if settings.json {
        let v = json!({
            "digest": digest,
            "path": builder.path_of(&digest),
            "output": output,
            "recipe": value,
        });
        writeln!(out, "{v}")?;
    } else if args.canonical {
        out.write_all(&recipe)?;
        writeln!(out)?;
    } else {
        writeln!(out, "# {} {}", digest, if output.is_some() { "(built)" } else { "(not built)" })?;
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
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

/// Sends a build to the daemon, renders its progress, relays its output; returns its exit code.
pub fn call_build(mut conn: UnixStream, settings: &Settings) -> Result<ExitCode> {
    let argv: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    let req = Request::Run { argv, cwd: settings.cwd.to_string_lossy().into_owned() };
    let mut line = serde_json::to_vec(&req)?;
    line.push(b'\n');
    conn.write_all(&line).context("cannot send to the daemon")?;
    CONN_FD.store(std::os::fd::AsRawFd::as_raw_fd(&conn), Ordering::SeqCst);
    // SAFETY: installs a handler that only touches atomics and calls async-signal-safe functions.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };

    let mut view = View::new(settings.json);
    let mut stdout = std::io::stdout().lock();
    let code = loop {
        let Some((tag, data)) = proto::read_frame(&mut conn).context("lost the daemon")? else {
            bail!(
                "the daemon closed the connection before the build finished (see {})",
                settings.daemon_log().display()
            );
        };
        match tag {
            proto::EVENT => match serde_json::from_slice::<Event>(&data) {
                Ok(e) => view.show(e),
                Err(e) => tracing::debug!("unreadable event: {e}"),
            },
            proto::STDOUT => {
                view.suspend(|| stdout.write_all(&data))?;
            }
            proto::STDERR => view.suspend(|| std::io::stderr().write_all(&data))?,
            proto::EXIT => {
                stdout.flush()?;
                break i32::from_le_bytes(data.as_slice().try_into().unwrap_or([1, 0, 0, 0]));
            }
            other => bail!("unexpected frame {other:#x} from the daemon"),
        }
    };
    view.finish();
    CONN_FD.store(-1, Ordering::SeqCst);
    if INTERRUPTS.load(Ordering::SeqCst) > 0 {
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

/// What the user sees of a build on stderr.
struct View {
    /// Live bars on a terminal; `None` for plain lines.
    live: Option<Live>,
    quiet_plan: bool,
}

struct Live {
    mp: MultiProgress,
    total: ProgressBar,
    running: HashMap<String, ProgressBar>,
}

impl View {
    fn new(json: bool) -> View {
        use std::io::IsTerminal;
        let live = std::io::stderr().is_terminal().then(|| {
            let mp = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
            let total = mp.add(ProgressBar::new(0));
            total.set_style(
                ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {pos}/{len} built  {msg}")
                    .expect("template")
                    .progress_chars("=> "),
            );
            Live { mp, total, running: HashMap::new() }
        });
        View { live, quiet_plan: json }
    }

    fn line(&self, s: &str) {
        match &self.live {
            Some(l) => l.mp.println(s).unwrap_or(()),
            None => eprintln!("{s}"),
        }
    }

    fn suspend<R>(&self, f: impl FnOnce() -> std::io::Result<R>) -> std::io::Result<R> {
        match &self.live {
            Some(l) => l.mp.suspend(f),
            None => f(),
        }
    }

    fn show(&mut self, e: Event) {
        match e {
            Event::Plan { artifacts } => {
                let build = artifacts.iter().filter(|a| a.action != "cached").count();
                let cached = artifacts.len() - build;
                if let Some(l) = &self.live {
                    l.total.set_length(build as u64);
                }
                if !self.quiet_plan {
                    self.line(&format!("{build} to build, {cached} cached"));
                }
            }
            Event::Started { name, digest } => match &mut self.live {
                Some(l) => {
                    let pb = l.mp.insert_before(&l.total, ProgressBar::new_spinner());
                    pb.set_style(ProgressStyle::with_template("  {spinner} {elapsed:>4} {msg}").expect("template"));
                    pb.set_message(format!("{name} {}", digest.short()));
                    pb.enable_steady_tick(Duration::from_millis(120));
                    l.running.insert(name, pb);
                }
                None => eprintln!("building {name} ({})", digest.short()),
            },
            Event::Log { name, line } => self.line(&format!("{name}| {line}")),
            Event::Built { name, seconds, .. } => {
                if let Some(l) = &mut self.live {
                    if let Some(pb) = l.running.remove(&name) {
                        pb.finish_and_clear();
                    }
                    l.total.inc(1);
                }
                self.line(&format!("built {name} in {seconds:.2}s"));
            }
            Event::Failed { name, error, .. } => {
                if let Some(l) = &mut self.live
                    && let Some(pb) = l.running.remove(&name)
                {
                    pb.finish_and_clear();
                }
                self.line(&format!("FAILED {name}: {error}"));
            }
            Event::Skipped { name, reason, .. } => self.line(&format!("skipped {name}: {reason}")),
            Event::Pushed { name, bytes, .. } => self.line(&format!("pushed {name} to S3 ({bytes} bytes sent)")),
        }
    }

    fn finish(&mut self) {
        if let Some(l) = self.live.take() {
            for (_, pb) in l.running {
                pb.finish_and_clear();
            }
            l.total.finish_and_clear();
            let _ = l.mp.clear();
        }
    }
}

/// The daemon side's event sink: one `v` frame of JSON per event.
pub fn event_sink(conn: &UnixStream) -> Result<impl Fn(Event) + Sync + use<>> {
    let conn = std::sync::Mutex::new(conn.try_clone()?);
    Ok(move |e: Event| {
        if let Ok(bytes) = serde_json::to_vec(&e) {
            let _ = proto::write_frame(&mut *conn.lock().unwrap(), proto::EVENT, &bytes);
        }
    })
}

/// Watches a client connection: when the client closes its side (Ctrl-C, or gone), sets
/// `cancel`.
pub fn watch_hangup(conn: &UnixStream, cancel: Arc<AtomicBool>) -> Result<()> {
    use std::io::Read;
    let mut c = conn.try_clone()?;
    std::thread::Builder::new().name("vorpalfs-hangup".into()).spawn(move || {
        let mut b = [0u8; 64];
        loop {
            match c.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        cancel.store(true, Ordering::SeqCst);
    })?;
    Ok(())
}
