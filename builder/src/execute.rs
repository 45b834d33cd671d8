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
use crate::sandbox::{self, BASE_PATH, HelperStatus, StepSpec, WORKSPACE};

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

/// What running an artifact needs from the builder.
pub(crate) struct Executor<'a> {
    pub store: &'a Store,
    pub cfg: &'a Config,
    /// Told each input digest as its result is committed.
    pub published: &'a (dyn Fn(&Digest) + Send + Sync),
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
        let ws = self.cfg.work_dir.join(format!("{}-{nanos}", digest.short()));
        let result = self.run_in(job, &ws, events, cancel).and_then(|()| {
            if cancel.load(Ordering::SeqCst) {
                return Err(Error::Cancelled);
            }
            tracing::info_span!("publish").in_scope(|| self.publish(job, &ws.join("output"), events))
        });
        match &result {
            Ok(_) => {
                events(Event::Built { name: name.clone(), digest, seconds: t.elapsed().as_secs_f64() });
                remove_workspace(&ws);
            }
            Err(_) if keep_failed && ws.exists() => {
                tracing::warn!(artifact = %name, workspace = %ws.display(), "kept the failed workspace");
                events(Event::Log { name: name.clone(), line: format!("(workspace kept at {})", ws.display()) });
            }
            Err(_) => remove_workspace(&ws),
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
            let p = self
                .store
                .push(&job.digest.to_hex(), &|_, _| {})
                .map_err(|source| Error::Push { name: a.name.clone(), source })?;
            events(Event::Pushed { name: a.name.clone(), digest: job.digest, bytes: p.uploaded_bytes });
        }
        Ok(report.root)
    }

    /// Prepares the workspace and runs the steps in the sandbox.
    fn run_in(&self, job: &Job<'_>, ws: &Path, events: &(dyn Fn(Event) + Sync), cancel: &AtomicBool) -> Result<()> {
        let a = job.artifact;
        let (root, work, out) = (ws.join("root"), ws.join("workspace"), ws.join("output"));
        let workspace = tracing::info_span!("workspace").entered();
        for d in [&root, &work, &out, &work.join(".vorpal")] {
            fs::create_dir_all(d).at(d)?;
        }
        for s in &job.recipe.sources {
            self.store.export(&s.tree, &work.join("source").join(&s.name))?;
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
                argv.push(format!("{WORKSPACE}/.vorpal/step-{}", n + 1));
            }
            steps.push(StepSpec { argv, env: s.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect() });
        }
        let mounted = |d: &Digest| self.cfg.mountpoint.join(d.to_hex());
        let spec = sandbox::Spec {
            root,
            workspace: work,
            output: out,
            output_path: store_path(&job.digest),
            deps: job.visible.iter().map(|d| (mounted(d), store_path(d))).collect(),
            rootfs: job.rootfs.as_ref().map(mounted),
            env,
            steps,
        };
        let spec_path = ws.join("sandbox.json");
        fs::write(&spec_path, serde_json::to_vec(&spec).expect("spec serializes")).at(&spec_path)?;
        drop(workspace);
        let log = self.cfg.log_dir.join(format!("{}.log", job.digest));
        let on_line = |line: String| events(Event::Log { name: a.name.clone(), line });
        let end = tracing::info_span!("sandbox")
            .in_scope(|| process::run(&self.cfg.helper, &spec_path, &log, a.timeout, &on_line, cancel))
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
