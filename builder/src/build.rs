//! Planning and running a build: sources into the store, recipes and input digests, the cache
//! check, the scheduler, one sandbox per artifact, and the atomic publish.
//!
//! Threads: the caller's thread schedules; each running artifact has one thread that prepares
//! its workspace, starts the sandbox helper, waits for it (watching the timeout and the cancel
//! flag) and publishes; one more thread per running artifact reads its log pipe. Publishing
//! uses the store's own ingest pipeline.

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vorpalfs_store::{Digest, Store};

use crate::error::{Error, IoContext, Result};
use crate::graph;
use crate::manifest::{self, Manifest, SourceKind};
use crate::recipe::{DepRef, FORMAT, Recipe, Sandbox, SourceRef, StepRecipe, this_system};
use crate::sandbox::{self, BASE_PATH, StepSpec, WORKSPACE};

/// Where a builder keeps its files and finds its helper.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the store is mounted on the host (deps are bound from here).
    pub mountpoint: PathBuf,
    /// Scratch space for workspaces (on the store's filesystem).
    pub work_dir: PathBuf,
    /// One log per artifact, `<input digest>.log`, kept after the build.
    pub log_dir: PathBuf,
    /// The executable that runs `__sandbox <spec>` (the `vorpalfs` binary).
    pub helper: PathBuf,
}

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
}

/// Progress of a build, in the order things happen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// What will run and what is cached.
    Plan {
        artifacts: Vec<Planned>,
    },
    Started {
        name: String,
        digest: Digest,
    },
    /// One line a step wrote (stdout and stderr together).
    Log {
        name: String,
        line: String,
    },
    /// The result and its data are in S3 (`bytes`: how much was sent).
    Pushed {
        name: String,
        digest: Digest,
        bytes: u64,
    },
    Built {
        name: String,
        digest: Digest,
        seconds: f64,
    },
    Failed {
        name: String,
        digest: Digest,
        error: String,
    },
    /// Not run: a dependency failed, or the build stopped.
    Skipped {
        name: String,
        digest: Digest,
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Planned {
    pub name: String,
    pub digest: Digest,
    /// `cached`, `build` or `rebuild`.
    pub action: String,
}

/// The outcome of one artifact of the plan.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Outcome {
    pub name: String,
    pub digest: Digest,
    /// Its path under the mount.
    pub path: PathBuf,
    /// Output tree, when it exists.
    pub output: Option<Digest>,
    pub requested: bool,
    /// `cached`, `built`, `failed`, `skipped`, or `planned` (dry run).
    pub status: String,
    /// Seconds since the build started when it began and ended running (built or failed).
    pub started: Option<f64>,
    pub finished: Option<f64>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub artifacts: Vec<Outcome>,
    pub seconds: f64,
}

impl Report {
    pub fn failed(&self) -> usize {
        self.artifacts.iter().filter(|a| a.status == "failed").count()
    }
}

/// One builder per store, shared by every build the daemon runs.
pub struct Builder {
    store: Arc<Store>,
    cfg: Config,
    /// Input digests being built right now, so that two builds wanting one result build it once.
    flights: Mutex<HashSet<Digest>>,
    landed: Condvar,
    published: Box<dyn Fn(&Digest) + Send + Sync>,
}

/// The state of one artifact during a run.
#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    Cached,
    Waiting,
    Running,
    Built,
    Failed,
    Skipped,
}

struct Plan<'m> {
    m: &'m Manifest,
    recipes: Vec<Option<Recipe>>,
    digests: Vec<Option<Digest>>,
    /// The sources' trees, kept from gc while the plan lives.
    _sources: Vec<vorpalfs_store::Pin>,
}

impl Builder {
    /// `published` is called with each input digest as its result is committed (the mount uses
    /// it to drop a cached "no such entry").
    pub fn new(store: Arc<Store>, cfg: Config, published: Box<dyn Fn(&Digest) + Send + Sync>) -> Result<Builder> {
        // Workspaces left by a builder that died with the store (we own it now) are garbage.
        if cfg.work_dir.exists() {
            for ent in fs::read_dir(&cfg.work_dir).at(&cfg.work_dir)?.flatten() {
                let _ = fs::remove_dir_all(ent.path());
            }
        }
        fs::create_dir_all(&cfg.work_dir).at(&cfg.work_dir)?;
        fs::create_dir_all(&cfg.log_dir).at(&cfg.log_dir)?;
        Ok(Builder { store, cfg, flights: Mutex::new(HashSet::new()), landed: Condvar::new(), published })
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The store path of an input digest on this host.
    pub fn path_of(&self, digest: &Digest) -> PathBuf {
        self.cfg.mountpoint.join(digest.to_hex())
    }

    /// The recipes of every artifact of a manifest (sources are hashed into the store).
    pub fn recipes(&self, m: &Manifest) -> Result<Vec<Recipe>> {
        let all: Vec<bool> = vec![true; m.artifacts.len()];
        let plan = self.plan(m, &all)?;
        Ok(plan.recipes.into_iter().map(|r| r.expect("every artifact planned")).collect())
    }

    fn plan<'m>(&self, m: &'m Manifest, wanted: &[bool]) -> Result<Plan<'m>> {
        let n = m.artifacts.len();
        let mut needed_sources = HashSet::new();
        for (i, a) in m.artifacts.iter().enumerate() {
            if wanted[i] {
                needed_sources.extend(a.sources.iter().copied());
            }
        }
        let mut trees = HashMap::new();
        let mut pins = Vec::new();
        for s in needed_sources {
            let (tree, pin) = self.source_tree(m, s)?;
            trees.insert(s, tree);
            pins.push(pin);
        }
        let mut plan = Plan { m, recipes: vec![None; n], digests: vec![None; n], _sources: pins };
        for i in graph::topo_order(m) {
            if !wanted[i] {
                continue;
            }
            let a = &m.artifacts[i];
            let sandbox = match a.rootfs {
                Some(r) => {
                    Sandbox::Rootfs { name: m.artifacts[r].name.clone(), digest: plan.digests[r].expect("deps first") }
                }
                None => Sandbox::Host(sandbox::HOST_PROFILE.to_string()),
            };
            let recipe = Recipe {
                format: FORMAT,
                name: a.name.clone(),
                system: this_system(),
                sandbox,
                sources: a
                    .sources
                    .iter()
                    .map(|&s| SourceRef { name: m.sources[s].name.clone(), tree: trees[&s] })
                    .collect(),
                deps: a
                    .deps
                    .iter()
                    .map(|&d| DepRef {
                        name: m.artifacts[d].name.clone(),
                        digest: plan.digests[d].expect("deps first"),
                    })
                    .collect(),
                steps: a
                    .steps
                    .iter()
                    .map(|s| StepRecipe {
                        entrypoint: s.entrypoint.clone(),
                        args: s.args.clone(),
                        script: s.script.clone(),
                        env: s.env.clone(),
                    })
                    .collect(),
            };
            plan.digests[i] = Some(recipe.digest());
            plan.recipes[i] = Some(recipe);
        }
        Ok(plan)
    }

    /// Puts a source into the store and returns its tree, pinned for as long as the pin lives.
    fn source_tree(&self, m: &Manifest, s: usize) -> Result<(Digest, vorpalfs_store::Pin)> {
        let src = &m.sources[s];
        let err = |msg: String| Error::Source { name: src.name.clone(), msg };
        match &src.kind {
            SourceKind::Local { path, include, exclude } => {
                let build = |pats: &[String]| -> Result<Option<globset::GlobSet>> {
                    if pats.is_empty() {
                        return Ok(None);
                    }
                    let mut b = globset::GlobSetBuilder::new();
                    for p in pats {
                        b.add(globset::Glob::new(p).map_err(|e| err(format!("bad glob `{p}`: {e}")))?);
                    }
                    Ok(Some(b.build().map_err(|e| err(e.to_string()))?))
                };
                let (inc, exc) = (build(include)?, build(exclude)?);
                // A directory (or a symlink to one) is the tree; a single file becomes a tree
                // holding just that file.
                let meta = fs::metadata(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
                let (dir, only) = if meta.is_dir() {
                    (fs::canonicalize(path).map_err(|e| err(format!("{}: {e}", path.display())))?, None)
                } else {
                    let parent = path.parent().unwrap_or(Path::new("/"));
                    let parent = fs::canonicalize(parent).map_err(|e| err(format!("{}: {e}", parent.display())))?;
                    (parent, path.file_name().map(|f| f.to_os_string()))
                };
                let keep = |rel: &Path, is_dir: bool| {
                    if let Some(only) = &only {
                        return rel.as_os_str() == only.as_os_str();
                    }
                    if exc.as_ref().is_some_and(|g| g.is_match(rel)) {
                        return false;
                    }
                    is_dir || inc.as_ref().is_none_or(|g| g.is_match(rel))
                };
                let filtered = only.is_some() || inc.is_some() || exc.is_some();
                // Pinned: a source is named by no root, and gc must leave it until the build
                // that uses it is over.
                let (report, pin) = self
                    .store
                    .ingest_pinned(&dir, if filtered { Some(&keep) } else { None })
                    .map_err(|e| err(e.to_string()))?;
                Ok((report.root, pin))
            }
            SourceKind::Url { url, blake3 } => {
                if let Some(tree) = self.store.fetched_source(blake3)?
                    && let Ok(pin) = self.store.pin(&tree)
                {
                    return Ok((tree, pin));
                }
                let dir = self.cfg.work_dir.join(format!("fetch-{}-{}", &blake3[..12], std::process::id()));
                let _ = fs::remove_dir_all(&dir);
                fs::create_dir_all(&dir).at(&dir)?;
                let result = crate::fetch::download(url, blake3, &dir)
                    .map_err(err)
                    .and_then(|()| Ok(self.store.add_fetched_source(&dir, blake3)?))
                    .and_then(|tree| Ok((tree, self.store.pin(&tree)?)));
                let _ = fs::remove_dir_all(&dir);
                result
            }
        }
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
        let m = manifest::load(&manifest::locate(path)?)?;
        let n = m.artifacts.len();
        let mut requested = vec![false; n];
        if opts.targets.is_empty() {
            requested = vec![true; n];
        }
        for t in &opts.targets {
            requested[m.find(t).ok_or_else(|| Error::UnknownArtifact(t.clone()))?] = true;
        }
        // Everything the requested artifacts could need, for the digests.
        let mut closure = requested.clone();
        for i in graph::topo_order(&m).into_iter().rev() {
            if closure[i] {
                for d in graph::needs(&m, i) {
                    closure[d] = true;
                }
            }
        }
        let plan = self.plan(&m, &closure)?;
        let digest = |i: usize| plan.digests[i].expect("planned");

        // What must run: a requested artifact unless cached (or --rebuild), and the deps of
        // whatever runs unless cached. A cached artifact's deps are not even looked at.
        let mut state = vec![None::<State>; n];
        let mut order: Vec<usize> = graph::topo_order(&m).into_iter().filter(|&i| requested[i]).collect();
        order.reverse();
        let mut stack = order;
        while let Some(i) = stack.pop() {
            if state[i].is_some() {
                continue;
            }
            let force = opts.rebuild && requested[i];
            if !force && self.store.find_result(&digest(i))?.is_some() {
                state[i] = Some(State::Cached);
                continue;
            }
            state[i] = Some(State::Waiting);
            stack.extend(graph::needs(&m, i));
        }
        let in_plan: Vec<usize> = graph::topo_order(&m).into_iter().filter(|&i| state[i].is_some()).collect();
        events(Event::Plan {
            artifacts: in_plan
                .iter()
                .map(|&i| Planned {
                    name: m.artifacts[i].name.clone(),
                    digest: digest(i),
                    action: match state[i] {
                        Some(State::Cached) => "cached",
                        _ if opts.rebuild && requested[i] => "rebuild",
                        _ => "build",
                    }
                    .into(),
                })
                .collect(),
        });
        let outcome = |i: usize, status: &str| Outcome {
            name: m.artifacts[i].name.clone(),
            digest: digest(i),
            path: self.path_of(&digest(i)),
            output: None,
            requested: requested[i],
            status: status.into(),
            started: None,
            finished: None,
            error: None,
        };
        if opts.dry_run {
            let artifacts = in_plan
                .iter()
                .map(|&i| outcome(i, if state[i] == Some(State::Cached) { "cached" } else { "planned" }))
                .collect();
            return Ok(Report { artifacts, seconds: t0.elapsed().as_secs_f64() });
        }

        // Names for cached results, so that `vorpalfs run <name>` finds this build's.
        let mut outcomes: Vec<Option<Outcome>> = vec![None; n];
        let mut names = Vec::new();
        for &i in &in_plan {
            if state[i] == Some(State::Cached) {
                let a = &m.artifacts[i];
                names.push((digest(i), a.name.clone()));
                names.extend(a.aliases.iter().map(|al| (digest(i), al.clone())));
                let mut o = outcome(i, "cached");
                o.output = self.store.result(&digest(i))?;
                outcomes[i] = Some(o);
            }
        }
        self.store.set_aliases(&names)?;

        let to_run: Vec<bool> = (0..n).map(|i| state[i] == Some(State::Waiting)).collect();
        let prio = graph::priorities(&m, &to_run);
        let mut pending: Vec<usize> =
            (0..n).map(|i| graph::needs(&m, i).iter().filter(|&&d| to_run[d]).count()).collect();
        let mut dependents = vec![Vec::new(); n];
        for i in (0..n).filter(|&i| to_run[i]) {
            for d in graph::needs(&m, i) {
                if to_run[d] {
                    dependents[d].push(i);
                }
            }
        }
        // Ready work, longest remaining chain first, then manifest order.
        let mut ready: BinaryHeap<(usize, std::cmp::Reverse<usize>)> =
            (0..n).filter(|&i| to_run[i] && pending[i] == 0).map(|i| (prio[i], std::cmp::Reverse(i))).collect();
        let jobs = opts.jobs.max(1);
        let (tx, rx) = crossbeam_channel::unbounded::<(usize, f64, f64, Result<Digest>)>();
        let mut running = 0usize;
        let mut stopped = false;
        let plan = &plan;
        let m = &m;

        std::thread::scope(|s| {
            loop {
                while !stopped && running < jobs && !cancel.load(Ordering::SeqCst) {
                    let Some((_, std::cmp::Reverse(i))) = ready.pop() else { break };
                    state[i] = Some(State::Running);
                    running += 1;
                    let tx = tx.clone();
                    let force = opts.rebuild && requested[i];
                    s.spawn(move || {
                        let started = t0.elapsed().as_secs_f64();
                        let r = self.run_artifact(plan, i, force, opts, events, cancel);
                        let _ = tx.send((i, started, t0.elapsed().as_secs_f64(), r));
                    });
                }
                if running == 0 {
                    break;
                }
                let (i, started, finished, r) = rx.recv().expect("a worker always reports");
                running -= 1;
                let mut o = outcome(i, "built");
                o.started = Some(started);
                o.finished = Some(finished);
                match r {
                    Ok(tree) => {
                        state[i] = Some(State::Built);
                        o.output = Some(tree);
                        for &j in &dependents[i] {
                            pending[j] -= 1;
                            if pending[j] == 0 && state[j] == Some(State::Waiting) {
                                ready.push((prio[j], std::cmp::Reverse(j)));
                            }
                        }
                    }
                    Err(e) => {
                        state[i] = Some(State::Failed);
                        o.status = "failed".into();
                        let msg = e.to_string();
                        o.error = Some(msg.clone());
                        if !matches!(e, Error::Cancelled) {
                            events(Event::Failed { name: m.artifacts[i].name.clone(), digest: digest(i), error: msg });
                        }
                        if !opts.keep_going {
                            stopped = true;
                        }
                    }
                }
                outcomes[i] = Some(o);
            }
        });

        // Whatever did not run: say why.
        for &i in &in_plan {
            if outcomes[i].is_some() {
                continue;
            }
            let failed_dep =
                graph::needs(m, i).into_iter().find(|&d| matches!(state[d], Some(State::Failed | State::Skipped)));
            let reason = match failed_dep {
                Some(d) => format!("dependency `{}` failed", m.artifacts[d].name),
                None if cancel.load(Ordering::SeqCst) => "the build was cancelled".into(),
                None => "the build stopped after a failure (use --keep-going to go on)".into(),
            };
            state[i] = Some(State::Skipped);
            events(Event::Skipped { name: m.artifacts[i].name.clone(), digest: digest(i), reason: reason.clone() });
            let mut o = outcome(i, "skipped");
            o.error = Some(reason);
            outcomes[i] = Some(o);
        }
        if cancel.load(Ordering::SeqCst) {
            return Err(Error::Cancelled);
        }
        Ok(Report { artifacts: outcomes.into_iter().flatten().collect(), seconds: t0.elapsed().as_secs_f64() })
    }

    /// Builds one artifact, or waits for another build of the same digest and uses its result.
    fn run_artifact(
        &self,
        plan: &Plan<'_>,
        i: usize,
        force: bool,
        opts: &Options,
        events: &(dyn Fn(Event) + Sync),
        cancel: &AtomicBool,
    ) -> Result<Digest> {
        let digest = plan.digests[i].expect("planned");
        {
            let mut flights = self.flights.lock().unwrap();
            while flights.contains(&digest) {
                flights = self.landed.wait_timeout(flights, Duration::from_millis(200)).unwrap().0;
                if cancel.load(Ordering::SeqCst) {
                    return Err(Error::Cancelled);
                }
            }
            // Another build may have just published it.
            if !force && let Some(tree) = self.store.find_result(&digest)? {
                return Ok(tree);
            }
            flights.insert(digest);
        }
        let r = match self.claim(plan, i, &digest, events, cancel) {
            Ok(Claim::Theirs(tree)) => Ok(tree),
            Ok(Claim::Ours) => {
                let r = self.execute(plan, i, opts, events, cancel);
                if self.store.has_remote()
                    && let Err(e) = self.store.remote_release(&digest.to_hex())
                {
                    tracing::warn!(%digest, "cannot release the build claim in S3: {e}");
                }
                r
            }
            Err(e) => Err(e),
        };
        self.flights.lock().unwrap().remove(&digest);
        self.landed.notify_all();
        r
    }

    /// With S3, claims the digest for this host (a conditional put), or waits while another
    /// host builds it and takes its result. A claim older than the artifact's timeout plus ten
    /// minutes (an hour without a timeout) is taken as abandoned.
    fn claim(
        &self,
        plan: &Plan<'_>,
        i: usize,
        digest: &Digest,
        events: &(dyn Fn(Event) + Sync),
        cancel: &AtomicBool,
    ) -> Result<Claim> {
        if !self.store.has_remote() {
            return Ok(Claim::Ours);
        }
        let a = &plan.m.artifacts[i];
        let name = digest.to_hex();
        let owner = format!(
            "{}:{}",
            nix::unistd::gethostname().map_or("?".into(), |h| h.to_string_lossy().into_owned()),
            std::process::id()
        );
        let stale = a.timeout.map_or(3600, |t| t.as_secs() + 600);
        let mut said = false;
        loop {
            match self.store.remote_claim(&name, &owner, false) {
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
                if let Some(tree) = self.store.find_result(digest)? {
                    return Ok(Claim::Theirs(tree));
                }
                match self.store.remote_claim_info(&name)? {
                    None => break,
                    Some((age, _)) if age > stale => {
                        if self.store.remote_claim(&name, &owner, true)? {
                            return Ok(Claim::Ours);
                        }
                    }
                    Some((_, holder)) if !said => {
                        said = true;
                        events(Event::Log {
                            name: a.name.clone(),
                            line: format!("(waiting: {holder} is building it)"),
                        });
                    }
                    Some(_) => {}
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }

    fn execute(
        &self,
        plan: &Plan<'_>,
        i: usize,
        opts: &Options,
        events: &(dyn Fn(Event) + Sync),
        cancel: &AtomicBool,
    ) -> Result<Digest> {
        let m = plan.m;
        let a = &m.artifacts[i];
        let digest = plan.digests[i].expect("planned");
        let recipe = plan.recipes[i].as_ref().expect("planned");
        let t = Instant::now();
        events(Event::Started { name: a.name.clone(), digest });
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let ws = self.cfg.work_dir.join(format!("{}-{nanos}", digest.short()));
        let result = self.execute_in(plan, i, &ws, events, cancel);
        let result = result.and_then(|()| {
            if cancel.load(Ordering::SeqCst) {
                return Err(Error::Cancelled);
            }
            let mut names = vec![a.name.clone()];
            names.extend(a.aliases.iter().cloned());
            let report = self
                .store
                .publish_result(&ws.join("output"), &digest, &recipe.canonical(), &names)
                .map_err(|e| Error::Build { name: a.name.clone(), msg: format!("cannot publish the output: {e}") })?;
            (self.published)(&digest);
            tracing::info!(artifact = %a.name, %digest, output = %report.root, files = report.files, bytes = report.bytes, "published");
            if self.store.has_remote() {
                let p = self
                    .store
                    .push(&digest.to_hex(), &|_, _| {})
                    .map_err(|e| Error::Build { name: a.name.clone(), msg: format!("built, but the push to S3 failed: {e}") })?;
                events(Event::Pushed { name: a.name.clone(), digest, bytes: p.uploaded_bytes });
            }
            Ok(report.root)
        });
        match &result {
            Ok(_) => {
                events(Event::Built { name: a.name.clone(), digest, seconds: t.elapsed().as_secs_f64() });
                remove_workspace(&ws);
            }
            Err(_) if opts.keep_failed && ws.exists() => {
                tracing::warn!(artifact = %a.name, workspace = %ws.display(), "kept the failed workspace");
                events(Event::Log { name: a.name.clone(), line: format!("(workspace kept at {})", ws.display()) });
            }
            Err(_) => remove_workspace(&ws),
        }
        result
    }

    fn execute_in(
        &self,
        plan: &Plan<'_>,
        i: usize,
        ws: &Path,
        events: &(dyn Fn(Event) + Sync),
        cancel: &AtomicBool,
    ) -> Result<()> {
        let m = plan.m;
        let a = &m.artifacts[i];
        let digest = plan.digests[i].expect("planned");
        let recipe = plan.recipes[i].as_ref().expect("planned");
        let (root, work, out) = (ws.join("root"), ws.join("workspace"), ws.join("output"));
        for d in [&root, &work, &out, &work.join(".vorpal")] {
            fs::create_dir_all(d).at(d)?;
        }
        for s in &recipe.sources {
            self.store.export(&s.tree, &work.join("source").join(&s.name))?;
        }
        let store_path = |d: &Digest| format!("/vorpal/store/{d}");
        // Every artifact the deps need too (store paths refer to each other), read-only.
        let mut visible = Vec::new();
        let mut stack: Vec<usize> = a.deps.clone();
        while let Some(d) = stack.pop() {
            if !visible.contains(&d) {
                visible.push(d);
                stack.extend(m.artifacts[d].deps.iter().copied());
            }
        }
        let mounted = |d: usize| self.path_of(&plan.digests[d].expect("planned"));
        let mut env: Vec<(String, String)> = vec![
            ("VORPAL_OUTPUT".into(), store_path(&digest)),
            ("VORPAL_WORKSPACE".into(), WORKSPACE.into()),
            ("HOME".into(), WORKSPACE.into()),
            ("SOURCE_DATE_EPOCH".into(), "0".into()),
            ("TZ".into(), "UTC".into()),
        ];
        let mut path_dirs = Vec::new();
        let mut all = Vec::new();
        for &d in &a.deps {
            let dd = plan.digests[d].expect("planned");
            let p = store_path(&dd);
            env.push((format!("VORPAL_ARTIFACT_{dd}"), p.clone()));
            env.push((format!("VORPAL_ARTIFACT_{}", env_name(&m.artifacts[d].name)), p.clone()));
            path_dirs.push(format!("{p}/bin"));
            all.push(p);
        }
        env.push(("VORPAL_ARTIFACTS".into(), all.join(" ")));
        path_dirs.push(BASE_PATH.into());
        env.push(("PATH".into(), path_dirs.join(":")));

        let mut steps = Vec::new();
        for (n, s) in recipe.steps.iter().enumerate() {
            let mut argv = vec![s.entrypoint.clone()];
            argv.extend(s.args.iter().cloned());
            if let Some(script) = &s.script {
                let file = work.join(".vorpal").join(format!("step-{}", n + 1));
                fs::write(&file, script).at(&file)?;
                fs::set_permissions(&file, fs::Permissions::from_mode(0o755)).at(&file)?;
                argv.push(format!("{WORKSPACE}/.vorpal/step-{}", n + 1));
            }
            steps.push(StepSpec { argv, env: s.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect() });
        }
        let spec = sandbox::Spec {
            root,
            workspace: work,
            output: out,
            output_path: store_path(&digest),
            deps: visible.iter().map(|&d| (mounted(d), store_path(&plan.digests[d].expect("planned")))).collect(),
            rootfs: a.rootfs.map(mounted),
            env,
            steps,
        };
        let spec_path = ws.join("sandbox.json");
        fs::write(&spec_path, serde_json::to_vec(&spec).expect("spec serializes")).at(&spec_path)?;
        let log_path = self.cfg.log_dir.join(format!("{digest}.log"));
        let timeout = a.timeout;
        let outcome = self.run_helper(&a.name, &spec_path, &log_path, timeout, events, cancel)?;
        match outcome {
            HelperEnd::Ok => Ok(()),
            HelperEnd::Cancelled => Err(Error::Cancelled),
            HelperEnd::TimedOut => {
                Err(Error::Timeout { name: a.name.clone(), secs: timeout.unwrap_or_default().as_secs(), log: log_path })
            }
            HelperEnd::Failed(status) => {
                let (step, how) = parse_status(&status);
                if step == 0 {
                    return Err(Error::Build {
                        name: a.name.clone(),
                        msg: format!("the sandbox could not be set up: {how}; log: {}", log_path.display()),
                    });
                }
                Err(Error::StepFailed {
                    name: a.name.clone(),
                    step,
                    steps: recipe.steps.len(),
                    how,
                    tail: tail(&log_path, 20),
                    log: log_path,
                })
            }
        }
    }

    /// Starts the sandbox helper and waits for it, streaming its output to the log and to
    /// `events`. Kills its whole process tree on timeout or cancel.
    fn run_helper(
        &self,
        name: &str,
        spec: &Path,
        log_path: &Path,
        timeout: Option<Duration>,
        events: &(dyn Fn(Event) + Sync),
        cancel: &AtomicBool,
    ) -> Result<HelperEnd> {
        let mut log = fs::File::create(log_path).at(log_path)?;
        let (out_r, out_w) = std::io::pipe().at("pipe")?;
        let (mut status_r, status_w) = std::io::pipe().at("pipe")?;
        let mut cmd = Command::new(&self.cfg.helper);
        cmd.arg("__sandbox").arg(spec);
        cmd.stdin(Stdio::null()).stdout(out_w.try_clone().at("pipe")?).stderr(out_w);
        cmd.env_clear().process_group(0);
        let status_fd = std::os::fd::AsRawFd::as_raw_fd(&status_w);
        // SAFETY: between fork and exec we only call async-signal-safe functions (dup2, prctl).
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(status_fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // If this thread goes away (the daemon killed), so does the build.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| Error::Build {
            name: name.into(),
            msg: format!("cannot start the sandbox helper {}: {e}", self.cfg.helper.display()),
        })?;
        drop(cmd);
        drop(status_w);
        let pgid = child.id() as i32;
        let started = Instant::now();
        let end = std::thread::scope(|s| {
            let reader = s.spawn(move || {
                let mut r = BufReader::new(out_r);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match r.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let _ = log.write_all(&line);
                            let text = String::from_utf8_lossy(&line).trim_end_matches(['\n', '\r']).to_string();
                            events(Event::Log { name: name.into(), line: text });
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
                        killed = Some(HelperEnd::Cancelled);
                    } else if timeout.is_some_and(|t| started.elapsed() > t) {
                        killed = Some(HelperEnd::TimedOut);
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
        let (status, killed) = end;
        let status =
            status.map_err(|e| Error::Build { name: name.into(), msg: format!("waiting for the sandbox: {e}") })?;
        if let Some(k) = killed {
            return Ok(k);
        }
        let mut text = String::new();
        let _ = status_r.read_to_string(&mut text);
        if status.success() {
            Ok(HelperEnd::Ok)
        } else {
            let text = text.trim();
            Ok(HelperEnd::Failed(if text.is_empty() { format!("sandbox helper {status}") } else { text.to_string() }))
        }
    }
}

enum Claim {
    Ours,
    Theirs(Digest),
}

enum HelperEnd {
    Ok,
    Failed(String),
    TimedOut,
    Cancelled,
}

/// `(step, how)` from the helper's status line ("step 2 exited with status 1").
fn parse_status(s: &str) -> (usize, String) {
    if let Some(rest) = s.strip_prefix("step ")
        && let Some((n, how)) = rest.split_once(' ')
        && let Ok(n) = n.parse()
    {
        return (n, how.to_string());
    }
    (0, s.strip_prefix("setup: ").unwrap_or(s).to_string())
}

/// The last `n` lines of a log, indented, for error messages.
fn tail(path: &Path, n: usize) -> String {
    let text = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| format!("  | {l}")).collect::<Vec<_>>().join("\n")
}

/// `my-lib.2` → `MY_LIB_2`.
pub fn env_name(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect()
}

fn remove_workspace(ws: &Path) {
    if let Err(e) = fs::remove_dir_all(ws)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(workspace = %ws.display(), "cannot remove: {e}");
    }
}
