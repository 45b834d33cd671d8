//! The builder: one per store, shared by every build the daemon runs. A build loads the
//! manifest, plans (sources, recipes, input digests), walks the cache, and hands what must run
//! to the scheduler; running one artifact first makes sure it is built once, by this daemon and
//! (with S3) by the hosts sharing the bucket.
//!
//! Threads: the caller's thread schedules; each running artifact has one thread that claims,
//! prepares its workspace, runs the sandbox helper (see `process.rs` for its own threads) and
//! publishes.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use vorpalfs_store::{Creds, Digest, Store};

use crate::error::{Error, IoContext, Result};
use crate::execute::{Config, Executor};
use crate::manifest::{self, Manifest};
use crate::plan::Plan;
use crate::recipe::Recipe;
use crate::report::{Action, Event, Outcome, Planned, Report, Status};
use crate::schedule::{self, NotRun, Ran, Runner};
use crate::users::{NoBuildUsers, Pool};

/// What one `build` asks for.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Artifact names or aliases; empty means every artifact of the manifest.
    pub targets: Vec<String>,
    /// Artifacts run at once (at least 1).
    pub jobs: usize,
    pub keep_going: bool,
    /// Build the requested artifacts even if a result exists (their deps may still be cached).
    pub rebuild: bool,
    pub dry_run: bool,
    /// Keep the workspace of a failed artifact.
    pub keep_failed: bool,
    /// Whose rights the manifest and its local sources are read with (`None`: the daemon's own,
    /// for a daemon run by that user).
    pub creds: Option<Creds>,
    /// Accept local sources outside the manifest's directory that are not readable by
    /// everyone (they become readable by everyone through the mount).
    pub allow_outside_sources: bool,
}

/// Runs `f` with `creds`' rights if any.
pub(crate) fn as_client<T>(creds: Option<&Creds>, f: impl FnOnce() -> T) -> T {
    match creds {
        Some(c) => c.with(f),
        None => f(),
    }
}

/// The builders' view of the mount, below the builds directory.
pub(crate) const STORE_VIEW: &str = "store";

/// One builder per store, shared by every build the daemon runs.
pub struct Builder {
    store: Arc<Store>,
    cfg: Config,
    /// Input digests being built right now, so that two builds wanting one result build it once.
    flights: Mutex<HashSet<Digest>>,
    landed: Condvar,
    published: Box<dyn Fn(&Digest) + Send + Sync>,
    /// A root daemon's build users (an error when the host has none); `None` for a daemon run
    /// by an ordinary user, which builds as itself.
    users: Option<std::result::Result<Pool, NoBuildUsers>>,
    /// Where sandboxes bind their dependencies from: for a root daemon the mount bound again
    /// below the builds directory (build users may not be able to reach the mountpoint, which
    /// can sit below a private directory); otherwise the mountpoint itself.
    view: PathBuf,
    /// Whether `view` is a mount of ours, detached by [`Builder::close`].
    view_mounted: bool,
}

impl Builder {
    /// `published` is called with each input digest as its result is committed (the mount uses
    /// it to drop a cached "no such entry").
    pub fn new(store: Arc<Store>, cfg: Config, published: Box<dyn Fn(&Digest) + Send + Sync>) -> Result<Builder> {
        // Workspaces left by a builder that died with the store (we own it now) are garbage
        // (a root daemon's are tmpfs mounts: detached first).
        if cfg.work_dir.exists() {
            for ent in fs::read_dir(&cfg.work_dir).at(&cfg.work_dir)?.flatten() {
                let _ = nix::mount::umount2(&ent.path(), nix::mount::MntFlags::MNT_DETACH);
                if ent.file_name() == STORE_VIEW {
                    // A view of a mount: never walked, even if it could not be detached.
                    let _ = fs::remove_dir(ent.path());
                } else {
                    let _ = fs::remove_dir_all(ent.path());
                }
            }
        }
        // Builds run as other users below the builds directory: it is traversable, not listable;
        // each workspace is its build user's alone. Logs are private.
        if let Some(parent) = cfg.work_dir.parent()
            && !parent.exists()
        {
            fs::create_dir_all(parent).at(parent)?;
            fs::set_permissions(parent, std::os::unix::fs::PermissionsExt::from_mode(0o711)).at(parent)?;
        }
        for (dir, mode) in [(&cfg.work_dir, 0o711), (&cfg.log_dir, 0o700)] {
            fs::create_dir_all(dir).at(dir)?;
            fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(mode)).at(dir)?;
        }
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let users = root.then(Pool::system);
        if let Some(Err(e)) = &users {
            tracing::warn!("{e}");
        }
        // Not a stat of the mountpoint: the daemon would answer its own request (and the kernel
        // would keep the answer).
        let (view, view_mounted) = if root && cfg.bind_view {
            let view = cfg.view_dir();
            fs::create_dir(&view).at(&view)?;
            let flags = nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REC;
            nix::mount::mount(Some(&cfg.mountpoint), &view, None::<&str>, flags, None::<&str>)
                .map_err(|e| Error::Io { path: view.clone(), source: e.into() })?;
            (view, true)
        } else {
            (cfg.mountpoint.clone(), false)
        };
        Ok(Builder {
            store,
            cfg,
            flights: Mutex::new(HashSet::new()),
            landed: Condvar::new(),
            published,
            users,
            view,
            view_mounted,
        })
    }

    /// Detaches the builder's view of the mount (call before unmounting the store: a view left
    /// behind keeps the FUSE connection alive).
    pub fn close(&self) {
        if self.view_mounted
            && let Err(e) = nix::mount::umount2(&self.view, nix::mount::MntFlags::MNT_DETACH)
        {
            tracing::warn!(view = %self.view.display(), "cannot detach the builders' view of the store: {e}");
        } else if self.view_mounted {
            let _ = fs::remove_dir(&self.view);
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The store path of an input digest on this host.
    pub fn path_of(&self, digest: &Digest) -> PathBuf {
        self.cfg.mountpoint.join(digest.to_hex())
    }

    /// The recipes of every artifact of a manifest (sources are hashed into the store, read
    /// with `creds`' rights).
    pub fn recipes(&self, m: &Manifest, creds: Option<&Creds>) -> Result<Vec<Recipe>> {
        let access = crate::sources::Access { creds, allow_outside: false, download_limit: self.cfg.download_limit };
        let plan = Plan::new(&self.store, &self.cfg.work_dir, m, &vec![true; m.artifacts.len()], access)?;
        Ok(plan.into_recipes().into_iter().flatten().collect())
    }

    /// The output of `input` if it was built, here or (with S3) by another host. An unreachable
    /// S3 means "not there" (and is logged): the build goes on locally.
    fn find_result(&self, input: &Digest) -> Result<Option<Digest>> {
        Ok(self.lookup_result(input)?.0)
    }

    /// [`Builder::find_result`], and why a result S3 has was not taken (not signed by a trusted
    /// key, damaged, S3 unreachable).
    fn lookup_result(&self, input: &Digest) -> Result<(Option<Digest>, Option<String>)> {
        if let Some(t) = self.store.result(input)? {
            return Ok((Some(t), None));
        }
        if self.store.has_remote() {
            match self.store.resolve_remote(&input.to_hex()) {
                Ok(r) => return Ok((r.map(|r| r.tree), None)),
                Err(e) => {
                    tracing::warn!(%input, "cannot take the result from S3: {e}");
                    return Ok((None, Some(e.to_string())));
                }
            }
        }
        Ok((None, None))
    }

    /// Builds what `opts` asks for from the manifest at `path`, reporting progress to `events`.
    /// Stops starting work, kills running steps and publishes nothing more once `cancel` is set.
    pub fn build(
        &self,
        path: &Path,
        opts: &Options,
        events: &(dyn Fn(Event) + Sync),
        cancel: &AtomicBool,
    ) -> Result<Report> {
        let t0 = Instant::now();
        // Read with the client's rights: a manifest is the client's file, never root's.
        let m = as_client(opts.creds.as_ref(), || manifest::load(&manifest::locate(path)?))?;
        let n = m.artifacts.len();
        let mut requested = vec![opts.targets.is_empty(); n];
        for t in &opts.targets {
            requested[m.find(t).ok_or_else(|| Error::UnknownArtifact(t.clone()))?] = true;
        }
        let access = crate::sources::Access {
            creds: opts.creds.as_ref(),
            allow_outside: opts.allow_outside_sources,
            download_limit: self.cfg.download_limit,
        };
        let plan = Plan::new(&self.store, &self.cfg.work_dir, &m, &m.graph.closure(&requested), access)?;
        // Why S3's result of an artifact was not taken, by input digest (shown and reported).
        let refused = std::cell::RefCell::new(std::collections::HashMap::new());
        let actions = plan.actions(&requested, opts.rebuild, |d| {
            let (found, why) = self.lookup_result(d)?;
            if let Some(why) = why {
                refused.borrow_mut().insert(*d, why);
            }
            Ok(found.is_some())
        })?;
        let refused = refused.into_inner();
        let in_plan: Vec<usize> = m.graph.order().iter().copied().filter(|&i| actions[i].is_some()).collect();
        events(Event::Plan {
            artifacts: in_plan
                .iter()
                .map(|&i| Planned {
                    name: m.artifacts[i].name.clone(),
                    digest: plan.digest(i),
                    action: actions[i].expect("in the plan"),
                    s3_refused: refused.get(&plan.digest(i)).cloned(),
                })
                .collect(),
        });
        for &i in &in_plan {
            if let Some(why) = refused.get(&plan.digest(i)) {
                events(Event::Log {
                    name: m.artifacts[i].name.clone(),
                    line: format!("(the result in S3 is not used, so it is built here: {why})"),
                });
            }
        }
        let outcome = |i: usize, status: Status| Outcome {
            name: m.artifacts[i].name.clone(),
            digest: plan.digest(i),
            path: self.path_of(&plan.digest(i)),
            output: None,
            requested: requested[i],
            status,
            started: None,
            finished: None,
            error: None,
            s3_refused: refused.get(&plan.digest(i)).cloned(),
        };
        let cached = |i: usize| actions[i] == Some(Action::Cached);
        if opts.dry_run {
            let artifacts =
                in_plan.iter().map(|&i| outcome(i, if cached(i) { Status::Cached } else { Status::Planned })).collect();
            return Ok(Report { artifacts, seconds: t0.elapsed().as_secs_f64() });
        }

        // Names for cached results, so that `vorpalfs run <name>` finds this build's.
        let mut outcomes: Vec<Option<Outcome>> = (0..n).map(|_| None).collect();
        let mut names = Vec::new();
        for &i in in_plan.iter().filter(|&&i| cached(i)) {
            let a = &m.artifacts[i];
            names.push((plan.digest(i), a.name.clone()));
            names.extend(a.aliases.iter().map(|al| (plan.digest(i), al.clone())));
            let mut o = outcome(i, Status::Cached);
            o.output = self.store.result(&plan.digest(i))?;
            outcomes[i] = Some(o);
        }
        self.store.set_aliases(&names)?;

        let to_run: Vec<bool> = (0..n).map(|i| matches!(actions[i], Some(Action::Build | Action::Rebuild))).collect();
        let runner = ArtifactRunner { builder: self, plan: &plan, actions: &actions, opts, events, cancel };
        let mut on_end = |i: usize, r: &Result<Digest>| {
            if let Err(e) = r
                && !schedule::is_cancel(e)
            {
                events(Event::Failed {
                    name: m.artifacts[i].name.clone(),
                    digest: plan.digest(i),
                    error: e.to_string(),
                });
            }
        };
        let ends = schedule::run(&m.graph, &to_run, opts.jobs, opts.keep_going, cancel, &runner, &mut on_end);
        for (i, end) in ends.into_iter().enumerate() {
            let Some(end) = end else { continue };
            outcomes[i] = Some(match end {
                Ran::Ran { started, finished, result } => {
                    let mut o = outcome(i, Status::Built);
                    (o.started, o.finished) = (Some(started), Some(finished));
                    match result {
                        Ok(tree) => o.output = Some(tree),
                        Err(e) => (o.status, o.error) = (Status::Failed, Some(e.to_string())),
                    }
                    o
                }
                Ran::NotRun(why) => {
                    let reason = match why {
                        NotRun::Dep(d) => format!("dependency `{}` failed", m.artifacts[d].name),
                        NotRun::Cancelled => "the build was cancelled".into(),
                        NotRun::Stopped => "the build stopped after a failure (use --keep-going to go on)".into(),
                    };
                    let name = m.artifacts[i].name.clone();
                    events(Event::Skipped { name, digest: plan.digest(i), reason: reason.clone() });
                    let mut o = outcome(i, Status::Skipped);
                    o.error = Some(reason);
                    o
                }
            });
        }
        if cancel.load(Ordering::SeqCst) {
            return Err(Error::Cancelled);
        }
        let artifacts = in_plan.iter().filter_map(|&i| outcomes[i].take()).collect();
        Ok(Report { artifacts, seconds: t0.elapsed().as_secs_f64() })
    }

    /// With S3, claims the digest for this host (a conditional put), or waits while another
    /// host builds it and takes its result. A claim older than the artifact's timeout plus ten
    /// minutes (an hour without a timeout) is taken as abandoned; where signatures are required,
    /// so is a claim no accepted key signed.
    fn claim(
        &self,
        name: &str,
        timeout: Option<Duration>,
        digest: &Digest,
        events: &(dyn Fn(Event) + Sync),
        cancel: &AtomicBool,
    ) -> Result<Claim> {
        if !self.store.has_remote() {
            return Ok(Claim::Ours);
        }
        let key = digest.to_hex();
        let owner = format!(
            "{}:{}",
            nix::unistd::gethostname().map_or("?".into(), |h| h.to_string_lossy().into_owned()),
            std::process::id()
        );
        let stale = timeout.map_or(3600, |t| t.as_secs() + 600);
        let mut said = false;
        loop {
            match self.store.claim(&key, &owner, false) {
                Ok(true) => return Ok(Claim::Ours),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(%digest, "cannot claim the build in S3 (building anyway): {e}");
                    return Ok(Claim::Ours);
                }
            }
            loop {
                if cancel.load(Ordering::SeqCst) {
                    return Err(Error::Cancelled);
                }
                if let Some(tree) = self.find_result(digest)? {
                    return Ok(Claim::Theirs(tree));
                }
                match self.store.claim_info(&key)? {
                    None => break,
                    // Abandoned, or held by a host no accepted key vouches for: taken over.
                    Some(c) if c.age_seconds > stale || !c.trusted => {
                        if !c.trusted {
                            events(Event::Log {
                                name: name.into(),
                                line: format!("(taking over the claim of {}: not signed by a trusted key)", c.owner),
                            });
                        }
                        if self.store.claim(&key, &owner, true)? {
                            return Ok(Claim::Ours);
                        }
                    }
                    Some(c) if !said => {
                        said = true;
                        events(Event::Log {
                            name: name.into(),
                            line: format!("(waiting: {} is building it)", c.owner),
                        });
                    }
                    Some(_) => {}
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

enum Claim {
    Ours,
    Theirs(Digest),
}

/// Runs one artifact of a build for the scheduler.
struct ArtifactRunner<'a> {
    builder: &'a Builder,
    plan: &'a Plan<'a>,
    actions: &'a [Option<Action>],
    opts: &'a Options,
    events: &'a (dyn Fn(Event) + Sync),
    cancel: &'a AtomicBool,
}

impl Runner for ArtifactRunner<'_> {
    /// Builds one artifact, or waits for another build of the same digest and uses its result.
    fn run(&self, i: usize) -> Result<Digest> {
        let b = self.builder;
        let job = self.plan.job(i);
        let force = self.actions[i] == Some(Action::Rebuild);
        {
            let mut flights = b.flights.lock().unwrap();
            while flights.contains(&job.digest) {
                flights = b.landed.wait_timeout(flights, Duration::from_millis(200)).unwrap().0;
                if self.cancel.load(Ordering::SeqCst) {
                    return Err(Error::Cancelled);
                }
            }
            // Another build may have just published it.
            if !force && let Some(tree) = b.store.result(&job.digest)? {
                return Ok(tree);
            }
            flights.insert(job.digest);
        }
        let a = job.artifact;
        let r = match b.claim(&a.name, a.timeout, &job.digest, self.events, self.cancel) {
            Ok(Claim::Theirs(tree)) => Ok(tree),
            Ok(Claim::Ours) => {
                let users = match &b.users {
                    Some(Ok(pool)) => Some(pool),
                    Some(Err(e)) => return Err(Error::NoBuildUsers(crate::users::NoBuildUsers { file: e.file })),
                    None => None,
                };
                let ex =
                    Executor { store: &b.store, cfg: &b.cfg, view: &b.view, published: b.published.as_ref(), users };
                let r = ex.execute(&job, self.opts.keep_failed, self.events, self.cancel);
                if b.store.has_remote()
                    && let Err(e) = b.store.release(&job.digest.to_hex())
                {
                    tracing::warn!(digest = %job.digest, "cannot release the build claim in S3: {e}");
                }
                r
            }
            Err(e) => Err(e),
        };
        b.flights.lock().unwrap().remove(&job.digest);
        b.landed.notify_all();
        r
    }
}
