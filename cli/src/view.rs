//! What the user sees of a build on stderr: a live display on a terminal (a spinner per running
//! artifact above a total bar, log lines printed above them), plain prefixed lines otherwise.

use std::collections::HashMap;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use vorpalfs_builder::{Action, Event};

/// What the user sees of a build on stderr.
pub struct View {
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
    pub fn new(json: bool) -> View {
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

    pub fn suspend<R>(&self, f: impl FnOnce() -> std::io::Result<R>) -> std::io::Result<R> {
        match &self.live {
            Some(l) => l.mp.suspend(f),
            None => f(),
        }
    }

    pub fn show(&mut self, e: Event) {
        match e {
            Event::Plan { artifacts } => {
                let build = artifacts.iter().filter(|a| a.action != Action::Cached).count();
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

    pub fn finish(&mut self) {
        if let Some(l) = self.live.take() {
            for (_, pb) in l.running {
                pb.finish_and_clear();
            }
            l.total.finish_and_clear();
            let _ = l.mp.clear();
        }
    }
}
