//! `vorpalfs run NAME`: the newest build of an artifact, its `bin/<name>` exec'd from the store.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use crate::args::RunArgs;
use crate::daemon::client::{self, Relay};
use crate::daemon::protocol::{Reply, Request};
use crate::settings::Settings;

pub fn run(settings: &Settings, args: RunArgs) -> Result<ExitCode> {
    let mut conn = crate::ensure_daemon(settings)?;
    let mut relay = Relay::default();
    let code = client::call(&mut conn, settings, Request::Artifact(args.artifact.clone()), &mut relay)?;
    if code != 0 {
        return Ok(ExitCode::from(code.clamp(1, 255) as u8));
    }
    let Some(Reply::Artifact(info)) = relay.reply else { bail!("the daemon did not say where `{}` is", args.artifact) };
    if info.output.is_none() {
        bail!("`{}` has a recipe but no output in the store; build it first", args.artifact);
    }
    let prog = info.path.join("bin").join(args.bin.as_deref().unwrap_or(&info.name));
    if !prog.exists() {
        let have: Vec<String> = std::fs::read_dir(info.path.join("bin"))
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        bail!(
            "{} does not exist (bin/ has: {})",
            prog.display(),
            if have.is_empty() { "nothing".to_string() } else { have.join(", ") }
        );
    }
    let e = std::process::Command::new(&prog).args(&args.args).exec();
    Err(e).with_context(|| format!("cannot run {}", PathBuf::from(&prog).display()))
}
