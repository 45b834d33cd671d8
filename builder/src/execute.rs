//! Running one artifact: a fresh workspace with its sources, the sandbox spec (mounts and
//! environment), the helper process, then the atomic publish of its output (and the push, with
//! S3). A failure leaves nothing published; the workspace is removed unless asked to keep it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use vorpalfs_store::{Digest, Store};

use crate::error::{Error, IoContext, Result};
use crate::plan::Job;
use crate::process::{self, End};
use crate::report::Event;
use crate::sandbox::{self, BASE_PATH, HelperStatus, Limits, StepSpec, WORKSPACE};
use crate::users::{BuildUser, Pool};

/// Where a builder keeps its files and finds its helper.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the store is mounted on the host.
    pub mountpoint: PathBuf,
    /// Where running artifacts' workspaces are (each a tmpfs for a root daemon).
    pub work_dir: PathBuf,
    /// One log per artifact, `<input digest>.log`, kept after the build.
    pub log_dir: PathBuf,
    /// The executable that runs `__sandbox <spec>` (the `vorpalfs` binary).
    pub helper: PathBuf,
    /// What a step may use.
    pub limits: Limits,
    /// Size of a running artifact's workspace and output together (a tmpfs, for a root
    /// daemon: a step cannot fill the store's disk).
    pub build_space: u64,
    /// The most bytes a `url` source may have (downloads stop past it).
    pub download_limit: u64,
    /// Bind the mount again below the builds directory for the sandboxes (a root daemon that
    /// serves the mount: see `Builder`'s `view`).
    pub bind_view: bool,
}

/// The default size limit of a `url` source.
pub const DEFAULT_DOWNLOAD_LIMIT: u64 = 4 << 30;

impl Config {
    /// The builder's places for a store in `store_dir` served at `mountpoint`.
    pub fn new(store_dir: &Path, mountpoint: &Path) -> Config {
        // Half the memory: the workspace is a tmpfs, and a build needs memory besides.
        // SAFETY: sysconf has no preconditions.
        let memory = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) as u64 * libc::sysconf(libc::_SC_PAGESIZE) as u64 };
        // SAFETY: geteuid has no preconditions.
        let work_dir = if unsafe { libc::geteuid() } == 0 {
            // Build users must reach their workspaces: not below the store directory, whose
            // parents may be closed to them, but below /run/vorpalfs (traversable, not
            // listable), one directory per store.
            let id = blake3::hash(store_dir.as_os_str().as_encoded_bytes()).to_hex();
            PathBuf::from("/run/vorpalfs").join(format!("builds-{}", &id[..16]))
        } else {
            store_dir.join("builds")
        };
        Config {
            mountpoint: mountpoint.to_path_buf(),
            work_dir,
            log_dir: store_dir.join("logs"),
            // Not current_exe(): that path is gone if the binary was replaced while we run.
            helper: PathBuf::from("/proc/self/exe"),
            limits: Limits::default(),
            build_space: (memory / 2).max(1 << 30),
            download_limit: DEFAULT_DOWNLOAD_LIMIT,
            bind_view: false,
        }
    }

    /// Where a root daemon binds its view of the mount for the sandboxes (a daemon killed
    /// before detaching it leaves it behind, on a dead connection).
    pub fn view_dir(&self) -> PathBuf {
        self.work_dir.join(crate::builder::STORE_VIEW)
    }
}

/// What running an artifact needs from the builder.
pub(crate) struct Executor<'a> {
    pub store: &'a Store,
    pub cfg: &'a Config,
    /// Where the store's mount is seen from (dependencies are bound from here).
    pub view: &'a Path,
    /// Told each input digest as its result is committed.
    pub published: &'a (dyn Fn(&Digest) + Send + Sync),
    /// The build users (`None` for a daemon run by an ordinary user: its own uid).
    pub users: Option<&'a Pool>,
}

/// A running artifact's workspace: for a root daemon a tmpfs of `build_space` bytes owned by
/// the build user, unmounted and removed when dropped (unless kept).
struct Workspace {
    dir: PathBuf,
    mounted: bool,
    keep: bool,
}

impl Workspace {
    fn create(dir: PathBuf, user: &BuildUser, cfg: &Config, tmpfs: bool) -> Result<Workspace> {
        fs::create_dir(&dir).at(&dir)?;
        let mut ws = Workspace { dir, mounted: false, keep: false };
        if tmpfs {
            let opts = format!("size={},mode=0700,uid={},gid={}", cfg.build_space, user.uid, user.gid);
            let flags = nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV;
            nix::mount::mount(Some("vorpalfs-build"), &ws.dir, Some("tmpfs"), flags, Some(opts.as_str()))
                .map_err(|e| Error::Io { path: ws.dir.clone(), source: std::io::Error::from(e) })?;
            ws.mounted = true;
        }
        Ok(ws)
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if self.mounted
            && let Err(e) = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH)
        {
            tracing::warn!(workspace = %self.dir.display(), "cannot unmount: {e}");
        }
        remove_workspace(&self.dir);
    }
}

fn store_path(d: &Digest) -> String {
    format!("/vorpal/store/{d}")
}

/// `my-lib.2` → `MY_LIB_2`.
pub fn env_name(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect()
}

impl Executor<'_> {
    /// Builds `job` and publishes its output; returns the output tree.
    pub fn execute(
        &self,
        job: &Job<'_>,
        keep_failed: bool,
        events: &(dyn Fn(Event) + Sync),
        cancel: &AtomicBool,
    ) -> Result<Digest> {
        let (name, digest) = (&job.artifact.name, job.digest);
        let _span = tracing::info_span!("artifact", name = %name, digest = %digest.short()).entered();
        let t = Instant::now();
        events(Event::Started { name: name.clone(), digest });
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let user = match self.users {
            Some(pool) => pool.take(),
            None => BuildUser::myself(),
        };
        let result = Workspace::create(
            self.cfg.work_dir.join(format!("{}-{nanos}", digest.short())),
            &user,
            self.cfg,
            self.users.is_some(),
        )
        .and_then(|mut ws| {
            let r = self.run_in(job, &ws.dir, &user, events, cancel).and_then(|()| {
                if cancel.load(Ordering::SeqCst) {
                    return Err(Error::Cancelled);
                }
                tracing::info_span!("publish").in_scope(|| self.publish(job, &ws.dir.join("output"), events))
            });
            if r.is_err() && keep_failed {
                ws.keep = true;
                tracing::warn!(artifact = %name, workspace = %ws.dir.display(), "kept the failed workspace");
                events(Event::Log { name: name.clone(), line: format!("(workspace kept at {})", ws.dir.display()) });
            }
            r
        });
        if result.is_ok() {
            events(Event::Built { name: name.clone(), digest, seconds: t.elapsed().as_secs_f64() });
        }
        result
    }

    /// Commits the output with its result, recipe and names; pushes it when S3 is configured.
    fn publish(&self, job: &Job<'_>, output: &Path, events: &(dyn Fn(Event) + Sync)) -> Result<Digest> {
        let a = job.artifact;
        let mut names = vec![a.name.clone()];
        names.extend(a.aliases.iter().cloned());
        let report = self
            .store
            .publish_result(output, &job.digest, &job.recipe.canonical(), &names)
            .map_err(|source| Error::Publish { name: a.name.clone(), source })?;
        (self.published)(&job.digest);
        tracing::info!(artifact = %a.name, digest = %job.digest, output = %report.root, files = report.files, bytes = report.bytes, "published");
        if self.store.has_remote() {
            let _span = tracing::info_span!("push").entered();
            match self.store.push(&job.digest.to_hex(), &|_, _| {}) {
                Ok(p) => {
                    events(Event::Pushed { name: a.name.clone(), digest: job.digest, bytes: p.uploaded_bytes });
                    // What the steps read of their dependencies through the mount, for the
                    // hosts that use them next (failures are logged: a profile is a hint).
                    for r in self.store.push_new_profiles() {
                        tracing::debug!(tree = %r.tree, chunks = r.written, "profile pushed");
                    }
                }
                // S3 holds another build of this recipe that this host may not replace (signed by
                // a trusted builder): this one serves here and is not shared.
                Err(e @ vorpalfs_store::Error::Kept { .. }) => {
                    tracing::warn!(artifact = %a.name, "not pushed: {e}");
                    events(Event::Log { name: a.name.clone(), line: format!("(not pushed: {e})") });
                }
                Err(source) => return Err(Error::Push { name: a.name.clone(), source }),
            }
        }
        Ok(report.root)
    }

    /// Prepares the workspace (owned by the build user) and runs the steps in the sandbox.
    fn run_in(
        &self,
        job: &Job<'_>,
        ws: &Path,
        user: &BuildUser,
        events: &(dyn Fn(Event) + Sync),
        cancel: &AtomicBool,
    ) -> Result<()> {
        let a = job.artifact;
        let (root, work, out) = (ws.join("root"), ws.join("workspace"), ws.join("output"));
        let workspace = tracing::info_span!("workspace").entered();
        let owner = (Some(nix::unistd::Uid::from_raw(user.uid)), Some(nix::unistd::Gid::from_raw(user.gid)));
        for d in [&root, &work, &out, &work.join(".vorpal")] {
            fs::create_dir_all(d).at(d)?;
            fs::set_permissions(d, fs::Permissions::from_mode(0o755)).at(d)?;
            nix::unistd::chown(d, owner.0, owner.1).map_err(|e| Error::Io { path: d.clone(), source: e.into() })?;
        }
        // Written as the build user: its files, for its steps to change.
        let creds = vorpalfs_store::Creds { uid: user.uid, gid: user.gid, groups: Vec::new() };
        for s in &job.recipe.sources {
            self.store.export_as(&s.tree, &work.join("source").join(&s.name), Some(&creds))?;
        }
        let mut env: Vec<(String, String)> = vec![
            ("VORPAL_OUTPUT".into(), store_path(&job.digest)),
            ("VORPAL_WORKSPACE".into(), WORKSPACE.into()),
            ("HOME".into(), WORKSPACE.into()),
            ("SOURCE_DATE_EPOCH".into(), "0".into()),
            ("TZ".into(), "UTC".into()),
        ];
        let mut path_dirs = Vec::new();
        let mut all = Vec::new();
        for (dep, d) in &job.deps {
            let p = store_path(d);
            env.push((format!("VORPAL_ARTIFACT_{d}"), p.clone()));
            env.push((format!("VORPAL_ARTIFACT_{}", env_name(dep)), p.clone()));
            path_dirs.push(format!("{p}/bin"));
            all.push(p);
        }
        env.push(("VORPAL_ARTIFACTS".into(), all.join(" ")));
        path_dirs.push(BASE_PATH.into());
        env.push(("PATH".into(), path_dirs.join(":")));

        let mut steps = Vec::new();
        for (n, s) in job.recipe.steps.iter().enumerate() {
            let mut argv = vec![s.entrypoint.clone()];
            argv.extend(s.args.iter().cloned());
            if let Some(script) = &s.script {
                let file = work.join(".vorpal").join(format!("step-{}", n + 1));
                fs::write(&file, script).at(&file)?;
                fs::set_permissions(&file, fs::Permissions::from_mode(0o755)).at(&file)?;
                nix::unistd::chown(&file, owner.0, owner.1)
                    .map_err(|e| Error::Io { path: file.clone(), source: e.into() })?;
                argv.push(format!("{WORKSPACE}/.vorpal/step-{}", n + 1));
            }
            steps.push(StepSpec { argv, env: s.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect() });
        }
        let mounted = |d: &Digest| self.view.join(d.to_hex());
        let spec = sandbox::Spec {
            root,
            workspace: work,
            output: out,
            output_path: store_path(&job.digest),
            deps: job.visible.iter().map(|d| (mounted(d), store_path(d))).collect(),
            rootfs: job.rootfs.as_ref().map(mounted),
            env,
            steps,
            limits: self.cfg.limits.clone(),
        };
        let spec_path = ws.join("sandbox.json");
        fs::write(&spec_path, serde_json::to_vec(&spec).expect("spec serializes")).at(&spec_path)?;
        fs::set_permissions(&spec_path, fs::Permissions::from_mode(0o644)).at(&spec_path)?;
        drop(workspace);
        let log = self.cfg.log_dir.join(format!("{}.log", job.digest));
        let on_line = |line: String| events(Event::Log { name: a.name.clone(), line });
        let run_as = self.users.is_some().then_some((user.uid, user.gid));
        let end = tracing::info_span!("sandbox")
            .in_scope(|| process::run(&self.cfg.helper, &spec_path, run_as, &log, a.timeout, &on_line, cancel))
            .map_err(|source| Error::Process { name: a.name.clone(), source })?;
        match end {
            End::Succeeded => Ok(()),
            End::Cancelled => Err(Error::Cancelled),
            End::TimedOut => {
                Err(Error::Timeout { name: a.name.clone(), secs: a.timeout.unwrap_or_default().as_secs(), log })
            }
            End::Failed {
                status: Some(HelperStatus::Exited { step, .. } | HelperStatus::Killed { step, .. }),
                how,
            } => Err(Error::StepFailed {
                name: a.name.clone(),
                step,
                steps: job.recipe.steps.len(),
                how,
                tail: tail(&log, 20),
                log,
            }),
            End::Failed { how, .. } => Err(Error::SandboxSetup { name: a.name.clone(), how, log }),
        }
    }
}

/// The last `n` lines of a log, indented, for error messages.
fn tail(path: &Path, n: usize) -> String {
    let text = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| format!("  | {l}")).collect::<Vec<_>>().join("\n")
}

fn remove_workspace(ws: &Path) {
    if let Err(e) = fs::remove_dir_all(ws)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(workspace = %ws.display(), "cannot remove: {e}");
    }
}
