//! `vorpalfs inspect`: the recipe of a built artifact (from the store's record), or of one in
//! a manifest (computed).

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use serde_json::json;
use vorpalfs_builder::Builder;
use vorpalfs_store::Digest;

use crate::args::InspectArgs;
use crate::daemon::protocol::ArtifactInfo;
use crate::settings::Settings;

/// The names the store has roots or builds under, and those `./vorpalfs.toml` declares.
fn known_names(builder: &Builder, caller: Option<&Settings>) -> Vec<String> {
    let mut names: Vec<String> = builder.store().roots().unwrap_or_default().into_iter().map(|r| r.name).collect();
    if let Some(s) = caller {
        // The caller's file, read with the caller's rights.
        let here = || crate::names::names_here(&s.cwd);
        names.extend(match &s.creds {
            Some(c) => c.with(here),
            None => here(),
        });
    }
    names.sort();
    names.dedup();
    names
}

/// The newest build of an artifact name or alias (or an input digest); the caller's manifest's
/// names are suggested when it is unknown.
pub fn artifact(builder: &Builder, what: &str, caller: Option<&Settings>) -> Result<ArtifactInfo> {
    let store = builder.store();
    let digest = match what.parse::<Digest>() {
        Ok(d) => d,
        Err(_) => store.alias(what)?.with_context(|| {
            let near = crate::names::nearest(what, &known_names(builder, caller));
            let near = if near.is_empty() { String::new() } else { format!("; nearest names: {}", near.join(", ")) };
            format!("no build of `{what}` in the store (use --file to inspect one not built yet){near}")
        })?,
    };
    let recipe = store.recipe_or_err(&digest)?;
    let name = serde_json::from_slice::<serde_json::Value>(&recipe)
        .ok()
        .and_then(|v| v["name"].as_str().map(String::from))
        .unwrap_or_else(|| what.to_string());
    Ok(ArtifactInfo { name, digest, path: builder.path_of(&digest), output: store.result(&digest)? })
}

pub fn run(builder: &Builder, settings: &Settings, args: InspectArgs, out: &mut dyn Write) -> Result<ExitCode> {
    let store = builder.store();
    let (digest, recipe) = if let Some(path) = &args.manifest {
        // The client's file: read with the client's rights.
        let load = || -> vorpalfs_builder::Result<_> {
            let path = vorpalfs_builder::manifest::locate(&settings.abs(path))?;
            Ok((vorpalfs_builder::manifest::load(&path)?, path))
        };
        let (m, path) = match &settings.creds {
            Some(c) => c.with(load),
            None => load(),
        }?;
        let i = m
            .find(&args.artifact)
            .with_context(|| crate::names::unknown(&args.artifact, &path, &crate::names::names_of(&m)))?;
        let r = builder.recipes(&m, settings.creds.as_ref())?.swap_remove(i);
        (r.digest(), r.canonical())
    } else {
        let info = artifact(builder, &args.artifact, Some(settings))?;
        (info.digest, store.recipe_or_err(&info.digest)?)
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
