//! The daemon: owns the store, serves the mount, and runs other commands on clients' behalf
//! over a Unix socket in the store directory.
//!
//! Threads: the fuser session's worker threads; a small tokio runtime for slow reads and for
//! waiting on signals; one thread accepting socket connections and one per connection.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::json;
use vorpalfs_fs::{MountHandle, MountOptions};
use vorpalfs_store::Store;

use crate::proto::{self, FrameWriter, Request};
use crate::settings::Settings;
use crate::{Cli, Command, build_cmd, report_error, store_cmd};

struct Daemon {
    store: Arc<Store>,
    builder: vorpalfs_builder::Builder,
    mounted: MountHandle,
    settings: Settings,
    started: Instant,
    shutdown: tokio::sync::Notify,
}

/// Runs the daemon in this process until SIGINT, SIGTERM or `vorpalfs umount`.
pub fn run(settings: Settings, mountpoint: &Path, threads: Option<usize>) -> Result<()> {
    let store = Arc::new(Store::open_with(&settings.store_dir, settings.store_options()?)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("vorpalfs-io")
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let mut opts = MountOptions::default();
    if let Some(t) = threads {
        opts.threads = t.max(1);
    }
    let mounted = vorpalfs_fs::mount(store.clone(), mountpoint, rt.handle().clone(), &opts)?;

    // We hold the store lock, so a socket file left here belongs to a daemon that died.
    let sock = settings.socket();
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).with_context(|| format!("cannot listen on {}", sock.display()))?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", sock.display()))?;

    let handle = mounted.handle();
    let builder = vorpalfs_builder::Builder::new(
        store.clone(),
        crate::builder_config(&settings.store_dir, mountpoint),
        Box::new(move |d| handle.published(d)),
    )?;
    let daemon = Arc::new(Daemon {
        store,
        builder,
        mounted: mounted.handle(),
        settings,
        started: Instant::now(),
        shutdown: tokio::sync::Notify::new(),
    });
    {
        let daemon = daemon.clone();
        std::thread::Builder::new().name("vorpalfs-accept".into()).spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let daemon = daemon.clone();
                let _ = std::thread::Builder::new().name("vorpalfs-client".into()).spawn(move || {
                    if let Err(e) = daemon.serve(conn) {
                        tracing::debug!("client connection: {e:#}");
                    }
                });
            }
        })?;
    }
    if daemon.settings.cache_size.is_some() && daemon.store.has_remote() {
        // Fetches evict as they go; this catches what reads alone brought past the budget.
        let d = daemon.clone();
        std::thread::Builder::new().name("vorpalfs-evict".into()).spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(5));
                if let Err(e) = d.store.evict() {
                    tracing::warn!("eviction failed: {e}");
                }
            }
        })?;
    }
    // Readiness line for whoever started us (and for logs).
    tracing::info!(pid = std::process::id(), mountpoint = %mountpoint.display(), store = %daemon.settings.store_dir.display(), "serving");

    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: unmounting"),
            _ = int.recv() => tracing::info!("SIGINT: unmounting"),
            _ = daemon.shutdown.notified() => tracing::info!("unmount requested"),
        }
    });
    let _ = std::fs::remove_file(&sock);
    mounted.unmount().context("unmount failed")?;
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    tracing::info!("unmounted");
    Ok(())
}

impl Daemon {
    fn serve(&self, conn: UnixStream) -> Result<()> {
        let mut line = String::new();
        BufReader::new(conn.try_clone()?).read_line(&mut line)?;
        let req: Request = serde_json::from_str(&line).context("malformed request")?;
        let mut out = FrameWriter { stream: conn.try_clone()?, tag: proto::STDOUT };
        let mut err = FrameWriter { stream: conn.try_clone()?, tag: proto::STDERR };
        let code: i32 = match req {
            Request::Status => {
                writeln!(out, "{}", self.status())?;
                0
            }
            Request::Shutdown => {
                self.shutdown.notify_one();
                0
            }
            Request::Run { argv, cwd } => self.run_command(argv, cwd, &conn, &mut out, &mut err),
        };
        proto::write_frame(&mut &conn, proto::EXIT, &code.to_le_bytes())?;
        Ok(())
    }

    fn run_command(
        &self,
        argv: Vec<String>,
        cwd: String,
        conn: &UnixStream,
        out: &mut FrameWriter,
        err: &mut FrameWriter,
    ) -> i32 {
        let cli = match Cli::try_parse_from(argv) {
            Ok(c) => c,
            Err(e) => {
                let _ = write!(err, "{e}");
                return 2;
            }
        };
        let mut settings = self.settings.clone();
        settings.json = cli.json;
        settings.cwd = cwd.into();
        let mut buffered = std::io::BufWriter::with_capacity(1 << 20, &mut *out);
        let cmd = match cli.command {
            Command::Store(cmd) => Either::Store(cmd),
            Command::Push { names } => Either::Sync(store_cmd::SyncCommand::Push(names)),
            Command::Pull { names } => Either::Sync(store_cmd::SyncCommand::Pull(names)),
            Command::Gc => Either::Sync(store_cmd::SyncCommand::Gc),
            Command::Build(args) => {
                let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let result =
                    build_cmd::watch_hangup(conn, cancel.clone()).and_then(|()| build_cmd::event_sink(conn)).and_then(
                        |events| build_cmd::run_build(&self.builder, &settings, args, &mut buffered, &events, &cancel),
                    );
                return finish(result, buffered.flush(), err);
            }
            Command::Inspect(args) => {
                let result = build_cmd::run_inspect(&self.builder, &settings, args, &mut buffered);
                return finish(result, buffered.flush(), err);
            }
            _ => {
                let _ = writeln!(err, "error: the daemon runs only store, push, pull, gc, build and inspect commands");
                return 2;
            }
        };
        drop(buffered);
        let root_changed = |d: &vorpalfs_store::Digest| self.mounted.published(d);
        let mut buffered = std::io::BufWriter::with_capacity(1 << 20, &mut *out);
        let mut ctx = store_cmd::Ctx {
            store: &self.store,
            settings: &settings,
            out: &mut buffered,
            err,
            root_changed: &root_changed,
            local: false,
        };
        let result = match cmd {
            Either::Store(cmd) => store_cmd::run(&mut ctx, cmd),
            Either::Sync(cmd) => store_cmd::run_sync(&mut ctx, cmd),
        };
        let flushed = buffered.flush();
        finish(result, flushed, err)
    }

    fn status(&self) -> serde_json::Value {
        let c = self.store.cache_stats();
        let f = &self.mounted.stats;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        json!({
            "pid": std::process::id(),
            "mountpoint": self.mounted.mountpoint(),
            "store": self.settings.store_dir,
            "uptime_seconds": self.started.elapsed().as_secs(),
            "s3": self.store.remote().map(|r| {
                let [gets, get_bytes, puts, put_bytes, errors] = self.store.remote_counters().unwrap_or_default();
                json!({"url": r.config().url(), "gets": gets, "get_bytes": get_bytes, "puts": puts,
                       "put_bytes": put_bytes, "errors": errors,
                       "cache_bytes": self.store.cache_bytes().unwrap_or(0), "cache_budget": self.settings.cache_size})
            }),
            "chunk_cache": {"bytes": c.chunk_cache_bytes, "budget": c.chunk_cache_budget, "hits": c.chunk_hits, "misses": c.chunk_misses},
            "fs": {"lookups": load(&f.lookups), "reads": load(&f.reads), "read_bytes": load(&f.read_bytes),
                   "reads_deferred": load(&f.reads_deferred), "read_errors": load(&f.read_errors), "inodes": load(&f.inodes)},
        })
    }
}

/// A command's exit code, reporting its error (or a failed final flush) on the client's stderr.
fn finish(result: Result<ExitCode>, flushed: std::io::Result<()>, err: &mut FrameWriter) -> i32 {
    match result.and_then(|c| flushed.map(|_| c).map_err(Into::into)) {
        Ok(code) => i32::from(code != ExitCode::SUCCESS),
        Err(e) => {
            report_error(&e, err);
            1
        }
    }
}

enum Either {
    Store(store_cmd::StoreCommand),
    Sync(store_cmd::SyncCommand),
}
