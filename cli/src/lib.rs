//! The `vorpalfs` command.
//!
//! ```text
//! lib.rs       the sandbox helper's entry, parse, logging, dispatch, error → exit code
//! main.rs      calls lib.rs's `main` (the library exists for the fuzz targets)
//! args.rs      clap definitions (the daemon receives these values, typed)
//! settings.rs  config files + environment + flags + defaults resolved once, before any work
//! config.rs    the TOML configuration files: where they are, their keys, their errors
//! names.rs     build/run/inspect words: manifest path or artifact name, nearest names
//! commands/    store, sync (push/pull/gc), build, inspect, run, mount, status, key,
//!              config (show), doctor (host checks)
//! daemon/      server (the daemon), client (one frame loop), protocol (typed frames)
//! view.rs      a build's progress on the terminal
//! ```
//! One process owns a store. When a daemon runs, store commands are sent to it and run there
//! (same code, same output); otherwise they open the store themselves. Data (digests, paths, file
//! bytes, `--json`) goes to stdout; logs and progress to stderr. `anyhow` lives here only: the
//! libraries return typed errors and this binary prints the chain.

pub mod args;
mod commands;
mod config;
pub mod daemon;
mod names;
mod settings;
mod view;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches};
use vorpalfs_store::Store;

use args::{Cli, Command};
use commands::Ctx;
use commands::sync::SyncCommand;
use daemon::client;
use daemon::protocol::Request;
use settings::Settings;

/// Logs on stderr, filtered by `-v` or `RUST_LOG`. With `VORPALFS_TRACE=FILE`, also a timeline
/// of every span (ingest stages, FUSE operations, S3 fetches, build phases) in Chrome's trace
/// format, written when the process exits: open it in chrome://tracing or ui.perfetto.dev.
fn init_logging(verbose: u8, daemon: bool) -> Option<tracing_chrome::FlushGuard> {
    use tracing_subscriber::prelude::*;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false).with_filter(filter);
    let (chrome, guard) = match std::env::var_os("VORPALFS_TRACE").filter(|v| !v.is_empty()) {
        Some(path) => {
            // A daemon started by a traced command writes its own file beside the command's.
            let path = if daemon { format!("{}.daemon.json", path.to_string_lossy()).into() } else { path };
            let (layer, guard) = tracing_chrome::ChromeLayerBuilder::new().file(path).include_args(true).build();
            let only_ours = tracing_subscriber::filter::Targets::new()
                .with_target("vorpalfs", tracing::Level::TRACE)
                .with_target("vorpalfs_store", tracing::Level::TRACE)
                .with_target("vorpalfs_fs", tracing::Level::TRACE)
                .with_target("vorpalfs_builder", tracing::Level::TRACE);
            (Some(layer.with_filter(only_ours)), Some(guard))
        }
        None => (None, None),
    };
    tracing_subscriber::registry().with(fmt).with(chrome).init();
    guard
}

/// Prints an error and its causes, the way every command reports failure.
pub fn report_error(e: &anyhow::Error, w: &mut dyn Write) {
    let _ = writeln!(w, "error: {e}");
    for cause in e.chain().skip(1) {
        let _ = writeln!(w, "  caused by: {cause}");
    }
}

/// Runs a store command in this process, against the store opened here.
fn run_locally(settings: &Settings, f: impl FnOnce(&mut Ctx<'_>) -> Result<ExitCode>) -> Result<ExitCode> {
    let store = Store::open_with(&settings.store_dir, settings.store_options()?)?;
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr());
    let mut ctx = Ctx { store: &store, settings, out: &mut out, err: &mut err, root_changed: &|_| {}, local: true };
    let code = f(&mut ctx)?;
    out.flush()?;
    Ok(code)
}

/// Connects to the store's daemon, starting one in the background first if none runs.
pub fn ensure_daemon(settings: &Settings) -> Result<UnixStream> {
    if let Some(conn) = client::connect(settings) {
        return Ok(conn);
    }
    client::spawn_daemon(settings, &settings.mountpoint, None)?;
    eprintln!("started a daemon serving {} at {}", settings.store_dir.display(), settings.mountpoint.display());
    client::connect(settings).context("the daemon started but does not answer")
}

/// Sends a store command to the daemon if one runs, else runs it here.
fn daemon_or_local(
    settings: &Settings,
    request: Request,
    local: impl FnOnce(&mut Ctx<'_>) -> Result<ExitCode>,
) -> Result<ExitCode> {
    match client::connect(settings) {
        Some(conn) => client::forward(conn, settings, request),
        None => run_locally(settings, local),
    }
}

fn run(cli: Cli, matches: &clap::ArgMatches) -> Result<ExitCode> {
    // Needing no settings (and working whatever the configuration files say).
    match &cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "vorpalfs", &mut std::io::stdout());
            return Ok(ExitCode::SUCCESS);
        }
        Command::Manpages { dir } => {
            commands::config::manpages(dir)?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let settings = Settings::resolve(&cli, matches)?;
    if settings.trust_unsigned && (settings.signing_key.is_some() || settings.trusted_keys.is_some()) {
        eprintln!(
            "warning: --trust-unsigned: roots and build results from S3 are taken even when no trusted key signed them"
        );
    }
    match cli.command {
        Command::Build(args) => commands::build::call(ensure_daemon(&settings)?, &settings, args),
        Command::Inspect(args) => match client::connect(&settings) {
            Some(conn) => client::forward(conn, &settings, Request::Inspect(args)),
            None => {
                let store = std::sync::Arc::new(Store::open_with(&settings.store_dir, settings.store_options()?)?);
                let cfg = settings.builder_config(&settings.mountpoint);
                let builder = vorpalfs_builder::Builder::new(store, cfg, Box::new(|_| {}))?;
                let mut out = std::io::stdout().lock();
                let code = commands::inspect::run(&builder, &settings, args, &mut out)?;
                out.flush()?;
                Ok(code)
            }
        },
        Command::Run(args) => commands::run::run(&settings, args),
        Command::Store(cmd) => {
            daemon_or_local(&settings, Request::Store(cmd.clone()), |ctx| commands::store::run(ctx, cmd))
        }
        Command::Push { names } => daemon_or_local(&settings, Request::Push(names.clone()), |ctx| {
            commands::sync::run(ctx, SyncCommand::Push(names))
        }),
        Command::Pull { names } => daemon_or_local(&settings, Request::Pull(names.clone()), |ctx| {
            commands::sync::run(ctx, SyncCommand::Pull(names))
        }),
        Command::Profile(cmd) => daemon_or_local(&settings, Request::Profile(cmd.clone()), |ctx| {
            commands::sync::run(ctx, SyncCommand::Profile(cmd))
        }),
        Command::Gc => daemon_or_local(&settings, Request::Gc, |ctx| commands::sync::run(ctx, SyncCommand::Gc)),
        Command::Mount(args) => commands::mount::mount(settings, args),
        Command::Umount { dir } => commands::mount::umount(&settings, dir),
        Command::Status => commands::status::run(&settings),
        Command::Key(cmd) => commands::key::run(&settings, cmd),
        Command::Config(args::ConfigCommand::Show) => commands::config::show(&settings),
        Command::Doctor => commands::doctor::run(&settings),
        Command::Completions { .. } | Command::Manpages { .. } => unreachable!("handled above"),
    }
}

/// The whole `vorpalfs` command.
pub fn main() -> ExitCode {
    // The sandbox helper must stay single-threaded until it has unshared its namespaces, so it
    // runs before anything else (it never returns).
    let mut args = std::env::args_os();
    if args.nth(1).as_deref() == Some(std::ffi::OsStr::new("__sandbox")) {
        let spec = args.next().map(PathBuf::from).unwrap_or_default();
        vorpalfs_builder::sandbox::helper_main(&spec);
    }
    // Everything the store writes is private (packs, the index, logs, the socket); what must be
    // readable by others (the mountpoint, exported trees) gets its mode set explicitly.
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0o077) };
    // Parsed through ArgMatches to tell a flag from its environment variable and a default.
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let daemon = matches!(&cli.command, Command::Mount(m) if m.foreground);
    let _trace = init_logging(cli.verbose, daemon);
    match run(cli, &matches) {
        Ok(code) => code,
        Err(e) => {
            // A closed stdout (`vorpalfs store cat … | head`) is not an error worth a message.
            let broken_pipe = e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            });
            if broken_pipe {
                return ExitCode::SUCCESS;
            }
            report_error(&e, &mut std::io::stderr());
            ExitCode::FAILURE
        }
    }
}
