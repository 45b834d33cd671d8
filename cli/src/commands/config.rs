//! `vorpalfs config show`, and the man pages.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::settings::Settings;

pub fn show(settings: &Settings) -> Result<ExitCode> {
    let redacted: Vec<&str> = settings.shown.iter().filter(|s| s.redacted).map(|s| s.key).collect();
    if settings.json {
        let map: serde_json::Map<String, serde_json::Value> =
            settings.shown.iter().map(|s| (s.key.to_string(), serde_json::to_value(s).unwrap_or_default())).collect();
        let v = serde_json::json!({
            "files": settings.config_files,
            "settings": map,
            "redacted": redacted,
        });
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    for s in &settings.shown {
        let value = match &s.value {
            serde_json::Value::Null => format!("({})", default_of(s.key)),
            serde_json::Value::String(t) => t.clone(),
            v => v.to_string(),
        };
        println!("{:<16} {:<40} {}", s.key, value, s.source);
    }
    if settings.config_files.is_empty() {
        println!("# no configuration file read");
    } else {
        let files: Vec<String> = settings.config_files.iter().map(|p| p.display().to_string()).collect();
        println!("# files read, later wins: {}", files.join(", "));
    }
    if !redacted.is_empty() {
        println!("# credentials in the URLs of {} are shown as <redacted>", redacted.join(", "));
    }
    println!("# S3 credentials come from the AWS chain (AWS_* variables, profiles) and are never shown");
    Ok(ExitCode::SUCCESS)
}

/// What an unset setting means (the README's configuration table says the same).
fn default_of(key: &str) -> &'static str {
    match key {
        "s3" => "none: local only",
        "s3_endpoint" => "AWS",
        "cache_size" => "unlimited",
        "prefetch_below" => "64M, at most half the cache",
        "build_space" => "half the memory",
        "build_processes" => "2048",
        "max_download" => "4G",
        "admin_group" => "none: root only",
        "signing_key" => "none: pushes unsigned",
        "trusted_keys" => "none",
        "jobs" => "number of CPUs",
        "threads" => "2 per core, 4 to 16",
        "xattrs" => "false",
        "metrics" => "off",
        "fill" => "false",
        _ => "unset",
    }
}

/// Writes `vorpalfs.1` and `vorpalfs-<sub>.1` for every subcommand (and theirs) into `dir`.
pub fn manpages(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cmd = crate::args::Cli::command();
    write_page(dir, cmd.clone(), "vorpalfs")?;
    fn walk(dir: &Path, cmd: &clap::Command, prefix: &str) -> Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let name = format!("{prefix}-{}", sub.get_name());
            write_page(dir, sub.clone(), &name)?;
            walk(dir, sub, &name)?;
        }
        Ok(())
    }
    let mut built = cmd;
    built.build();
    walk(dir, &built, "vorpalfs")
}

fn write_page(dir: &Path, cmd: clap::Command, name: &str) -> Result<()> {
    // A one-shot command: the few names are leaked rather than needing clap's `string` feature.
    let leaked: &'static str = Box::leak(name.to_string().into_boxed_str());
    let cmd = cmd.name(leaked).bin_name(name.replace('-', " "));
    let path = dir.join(format!("{name}.1"));
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut buf)?;
    std::fs::write(&path, buf).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
