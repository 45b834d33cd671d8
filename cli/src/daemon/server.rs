//! The daemon process: owns the store, serves the mount, and runs other commands on clients'
//! behalf over a Unix socket in the store directory.
//!
//! Threads: the fuser session's worker threads; one tokio runtime (two workers) shared by the
//! mount's deferred reads and lookups and by the store's S3 requests, whose main task waits for
//! signals; one thread accepting socket connections and one per connection; with a cache
//! budget, one eviction thread.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use vorpalfs_builder::Event;
use vorpalfs_fs::{MountHandle, MountOptions};
use vorpalfs_store::Store;

use super::protocol::{self, Frame, FrameWriter, FromS3, FsCounters, Reply, Request, S3Status, Status};
use crate::commands::{self, Ctx};
use crate::settings::Settings;

/// How often a daemon with `--push-profiles` publishes what was read since its last push.
const PROFILE_PUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

struct Daemon {
    store: Arc<Store>,
    builder: vorpalfs_builder::Builder,
    mounted: MountHandle,
    settings: Settings,
    started: Instant,
    shutdown: tokio::sync::Notify,
}

/// Chunks in the memory cache are up to 4 MiB each and are freed in whatever order eviction
/// picks. glibc's default raises its mmap threshold each time a large block is freed, so after
/// the first evictions every chunk lands in the per-thread heaps, which fragment: measured with
/// the 256 MiB chunk cache full, 440–456 MiB of anonymous memory, and a slow climb under the
/// load test. A fixed threshold gives each chunk of 256 KiB or more its own mapping, returned to
/// the system when the chunk is evicted (321–325 MiB), while 128 KiB read replies still reuse
/// heap memory. Other allocators (musl's) do not need it.
fn bound_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a parameter of the allocator, under the allocator's own locks.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}

/// Runs the daemon in this process until SIGINT, SIGTERM or `vorpalfs umount`.
pub fn run(settings: Settings, mountpoint: &Path, threads: Option<usize>) -> Result<()> {
    // Descriptors inherited from whatever started the daemon (a shell's, say) must not reach
    // anything the daemon starts: close-on-exec from here on.
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on descriptors.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    bound_heap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("vorpalfs-io")
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let mut opts = settings.store_options()?;
    opts.runtime = Some(rt.handle().clone());
    let store = Arc::new(Store::open_with(&settings.store_dir, opts)?);
    let mut mopts = MountOptions { xattrs: settings.xattrs, ..MountOptions::default() };
    if let Some(t) = threads {
        mopts.threads = t.max(1);
    }
    let mounted = vorpalfs_fs::mount(store.clone(), mountpoint, rt.handle().clone(), &mopts)?;

    // We hold the store lock, so a socket file left here belongs to a daemon that died. Made
    // under umask 077 (main sets it); a root daemon then opens it to every user, who may build
    // and read with their own rights (each request is checked against SO_PEERCRED), while a
    // user's own daemon keeps it to that user.
    let sock = settings.socket();
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).with_context(|| format!("cannot listen on {}", sock.display()))?;
    // SAFETY: geteuid has no preconditions.
    let mode = if unsafe { libc::geteuid() } == 0 { 0o666 } else { 0o600 };
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", sock.display()))?;

    let handle = mounted.handle();
    let builder = vorpalfs_builder::Builder::new(
        store.clone(),
        vorpalfs_builder::Config { bind_view: true, ..settings.builder_config(mountpoint) },
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
    if let Some(at) = &daemon.settings.metrics {
        let at = super::metrics::Endpoint::parse(at)?;
        let d = daemon.clone();
        super::metrics::serve(&at, move || super::metrics::render(&d.status(), &d.mounted.stats))?;
        tracing::info!(at = ?at, "serving metrics");
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
    if daemon.settings.push_profiles && daemon.store.has_remote() {
        let d = daemon.clone();
        std::thread::Builder::new().name("vorpalfs-profiles".into()).spawn(move || {
            loop {
                std::thread::sleep(PROFILE_PUSH_EVERY);
                d.store.push_new_profiles();
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
    daemon.builder.close();
    mounted.unmount().context("unmount failed")?;
    if daemon.settings.push_profiles && daemon.store.has_remote() {
        // What was read since the last push (failures are logged: a profile is a hint).
        for r in daemon.store.push_new_profiles() {
            tracing::info!(tree = %r.tree, chunks = r.written, "profile pushed at unmount");
        }
    }
    // Prefetch still in line is dropped; what is in the air lands.
    daemon.store.stop_background();
    // Fetches already sent land (or fail) before the store closes; a slow link cannot hold
    // the exit longer than this.
    if !daemon.store.settle(std::time::Duration::from_secs(10)) {
        tracing::warn!("background fetches still in flight at exit; their chunks are fetched again next time");
    }
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    tracing::info!("unmounted");
    Ok(())
}

impl Daemon {
    fn serve(&self, conn: UnixStream) -> Result<()> {
        let peer = Peer::of(&conn)?;
        let Some(Frame::Request(env)) = protocol::read_frame(&mut &conn)? else {
            bail!("the client sent no request");
        };
        let mut settings = self.settings.clone();
        settings.json = env.json;
        settings.cwd = env.cwd;
        // The client's files are read and written with the client's rights.
        settings.creds = peer.creds();
        let mut out = FrameWriter { out: &conn, stderr: false };
        let mut err = FrameWriter { out: &conn, stderr: true };
        if let Some(what) = admin_only(&env.request)
            && !peer.is_admin(self.settings.admin_group.as_deref())
        {
            let group = match &self.settings.admin_group {
                Some(g) => format!("root or a member of group `{g}`"),
                None => "root (or a member of the group given by --admin-group to the daemon)".to_string(),
            };
            writeln!(
                err,
                "error: permission denied: {what} changes the store for every user, and only {group} may run it"
            )?;
            protocol::write_frame(&mut &conn, &Frame::Exit(1))?;
            return Ok(());
        }
        let code: i32 = match env.request {
            Request::Status => {
                protocol::write_frame(&mut &conn, &Frame::Reply(Reply::Status(Box::new(self.status()))))?;
                0
            }
            Request::Shutdown => {
                self.shutdown.notify_one();
                0
            }
            Request::Artifact(name) => match commands::inspect::artifact(&self.builder, &name, Some(&settings)) {
                Ok(info) => {
                    protocol::write_frame(&mut &conn, &Frame::Reply(Reply::Artifact(info)))?;
                    0
                }
                Err(e) => finish(Err(e), Ok(()), &mut err),
            },
            Request::Build(args) => {
                let cancel = Arc::new(AtomicBool::new(false));
                watch_hangup(&conn, cancel.clone())?;
                let events = event_sink(&conn)?;
                let mut buffered = std::io::BufWriter::with_capacity(1 << 20, &mut out);
                let result = commands::build::run(&self.builder, &settings, args, &mut buffered, &events, &cancel);
                let flushed = buffered.flush();
                finish(result, flushed, &mut err)
            }
            Request::Inspect(args) => {
                let mut buffered = std::io::BufWriter::with_capacity(1 << 20, &mut out);
                let result = commands::inspect::run(&self.builder, &settings, args, &mut buffered);
                let flushed = buffered.flush();
                finish(result, flushed, &mut err)
            }
            Request::Store(cmd) => self.with_ctx(&settings, &mut out, &mut err, |ctx| commands::store::run(ctx, cmd)),
            Request::Push(n) => self.with_ctx(&settings, &mut out, &mut err, |ctx| {
                commands::sync::run(ctx, commands::sync::SyncCommand::Push(n))
            }),
            Request::Pull(n) => self.with_ctx(&settings, &mut out, &mut err, |ctx| {
                commands::sync::run(ctx, commands::sync::SyncCommand::Pull(n))
            }),
            Request::Profile(c) => self.with_ctx(&settings, &mut out, &mut err, |ctx| {
                commands::sync::run(ctx, commands::sync::SyncCommand::Profile(c))
            }),
            Request::Gc => self.with_ctx(&settings, &mut out, &mut err, |ctx| {
                commands::sync::run(ctx, commands::sync::SyncCommand::Gc)
            }),
        };
        protocol::write_frame(&mut &conn, &Frame::Exit(code))?;
        Ok(())
    }

    /// Runs a store command against the daemon's store, output buffered into frames.
    fn with_ctx(
        &self,
        settings: &Settings,
        out: &mut FrameWriter<&UnixStream>,
        err: &mut FrameWriter<&UnixStream>,
        f: impl FnOnce(&mut Ctx<'_>) -> Result<ExitCode>,
    ) -> i32 {
        let root_changed = |d: &vorpalfs_store::Digest| self.mounted.published(d);
        let mut buffered = std::io::BufWriter::with_capacity(1 << 20, out);
        let mut ctx = Ctx {
            store: &self.store,
            settings,
            out: &mut buffered,
            err: &mut *err,
            root_changed: &root_changed,
            local: false,
        };
        let result = f(&mut ctx);
        let flushed = buffered.flush();
        finish(result, flushed, err)
    }

    fn status(&self) -> Status {
        let f = &self.mounted.stats;
        let roots = self.store.root_stats();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Status {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            mountpoint: self.mounted.mountpoint().to_path_buf(),
            store: self.settings.store_dir.clone(),
            uptime_seconds: self.started.elapsed().as_secs(),
            s3: self.store.remote().map(|r| S3Status {
                url: r.url(),
                traffic: r.traffic(),
                cache_bytes: self.store.cache_bytes().unwrap_or(0),
                cache_budget: self.settings.cache_size,
                signing_key: self.store.trust().signer.as_ref().map(|k| k.name.clone()),
                trusted_keys: self.store.trust().keys().into_iter().map(|k| k.to_string()).collect(),
                signatures_required: self.store.trust().required(),
            }),
            from_s3: self
                .store
                .roots_from_s3()
                .unwrap_or_default()
                .into_iter()
                .map(|(name, tree, sig)| FromS3 {
                    name,
                    tree,
                    signed_by: sig.map(|s| s.key),
                    stats: roots.get(&tree).copied().unwrap_or_default(),
                })
                .collect(),
            chunk_cache: self.store.cache_stats().into(),
            index_memory: self.store.index_memory(),
            profiles: self.store.profile_stats(),
            fs: FsCounters {
                lookups: load(&f.lookups),
                reads: load(&f.reads),
                read_bytes: load(&f.read_bytes),
                reads_deferred: load(&f.reads_deferred),
                read_errors: load(&f.read_errors),
                inodes: load(&f.inodes),
            },
        }
    }
}

/// Who is on the other end of a connection (`SO_PEERCRED`), and its groups.
struct Peer {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
}

impl Peer {
    fn of(conn: &UnixStream) -> Result<Peer> {
        let cred = nix::sys::socket::getsockopt(conn, nix::sys::socket::sockopt::PeerCredentials)
            .context("cannot tell who the client is (SO_PEERCRED)")?;
        // The supplementary groups of the client process, as it connected.
        let groups = std::fs::read_to_string(format!("/proc/{}/status", cred.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Groups:"))
                    .map(|g| g.split_whitespace().filter_map(|x| x.parse().ok()).collect())
            })
            .unwrap_or_default();
        Ok(Peer { uid: cred.uid(), gid: cred.gid(), groups })
    }

    /// The rights the daemon acts with for this client: its own (`None`) for root, the
    /// client's for anyone else.
    fn creds(&self) -> Option<vorpalfs_store::Creds> {
        (self.uid != 0).then(|| vorpalfs_store::Creds { uid: self.uid, gid: self.gid, groups: self.groups.clone() })
    }

    fn is_admin(&self, group: Option<&str>) -> bool {
        // SAFETY: geteuid has no preconditions.
        if self.uid == 0 || self.uid == unsafe { libc::geteuid() } {
            return true;
        }
        let Some(gid) = group.and_then(|g| nix::unistd::Group::from_name(g).ok().flatten()).map(|g| g.gid.as_raw())
        else {
            return false;
        };
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// The requests only an administrator may make, named for the error.
fn admin_only(r: &Request) -> Option<&'static str> {
    match r {
        Request::Push(_) => Some("`vorpalfs push`"),
        Request::Profile(crate::args::ProfileCommand::Push { .. }) => Some("`vorpalfs profile push`"),
        Request::Profile(crate::args::ProfileCommand::Repack { .. }) => Some("`vorpalfs profile repack`"),
        Request::Gc => Some("`vorpalfs gc`"),
        Request::Store(crate::args::StoreCommand::Rm { .. }) => Some("`vorpalfs store rm`"),
        Request::Store(crate::args::StoreCommand::Repair) => Some("`vorpalfs store repair`"),
        Request::Shutdown => Some("`vorpalfs umount`"),
        _ => None,
    }
}

/// A command's exit code, reporting its error (or a failed final flush) on the client's stderr.
fn finish(result: Result<ExitCode>, flushed: std::io::Result<()>, err: &mut dyn Write) -> i32 {
    match result.and_then(|c| flushed.map(|_| c).map_err(Into::into)) {
        Ok(code) => i32::from(code != ExitCode::SUCCESS),
        Err(e) => {
            crate::report_error(&e, err);
            1
        }
    }
}

/// The build's event sink: one event frame per event.
fn event_sink(conn: &UnixStream) -> Result<impl Fn(Event) + Sync + use<>> {
    let conn = std::sync::Mutex::new(conn.try_clone()?);
    Ok(move |e: Event| {
        let _ = protocol::write_frame(&mut *conn.lock().unwrap(), &Frame::Event(e));
    })
}

/// Watches a client connection: when the client closes its side (Ctrl-C, or gone), sets
/// `cancel`.
fn watch_hangup(conn: &UnixStream, cancel: Arc<AtomicBool>) -> Result<()> {
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
