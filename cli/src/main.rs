//! The `vorpalfs` command.
//!
//! ```text
//! main.rs      clap definitions, logging, dispatch, error → exit code
//! settings.rs  flags + environment + defaults resolved once, before any work
//! store_cmd.rs `vorpalfs store …`, run against an open store through a Ctx
//! build_cmd.rs `vorpalfs build/inspect/run`: run in the daemon, progress rendered here
//! daemon.rs    `vorpalfs mount`: owns the store, serves FUSE and a control socket
//! client.rs    forwarding commands to a running daemon; start, stop, status
//! proto.rs     the control socket's framing
//! ```
//! One process owns a store. When a daemon runs, `store` commands are sent to it and run there
//! (same code, same output); otherwise they open the store themselves. Data (digests, paths, file
//! bytes, `--json`) goes to stdout; logs and progress to stderr. `anyhow` lives here only: the
//! libraries return typed errors and this binary prints the chain.

mod build_cmd;
mod client;
mod daemon;
mod proto;
mod settings;
mod store_cmd;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use vorpalfs_store::Store;

/// A content-addressed artifact store for build outputs.
#[derive(Parser, Debug)]
#[command(name = "vorpalfs", version, about, propagate_version = true)]
pub struct Cli {
    /// The store directory [default: /var/lib/vorpalfs as root, else $XDG_DATA_HOME/vorpalfs]
    #[arg(long, global = true, env = "VORPALFS_STORE_DIR", value_name = "DIR")]
    store_dir: Option<PathBuf>,

    /// Where the store is mounted.
    #[arg(long, global = true, env = "VORPALFS_MOUNTPOINT", value_name = "DIR", default_value = "/vorpal/store")]
    mountpoint: PathBuf,

    /// S3 location shared with other hosts: s3://bucket/prefix (credentials: the AWS chain).
    #[arg(long, global = true, env = "VORPALFS_S3", value_name = "URL")]
    s3: Option<String>,

    /// S3-compatible endpoint, e.g. http://127.0.0.1:9000 [default: AWS_ENDPOINT_URL, else AWS].
    #[arg(long, global = true, env = "VORPALFS_S3_ENDPOINT", value_name = "URL")]
    s3_endpoint: Option<String>,

    /// Disk budget for data fetched from S3, e.g. 20G (least recently read is evicted first).
    #[arg(long, global = true, env = "VORPALFS_CACHE_SIZE", value_name = "SIZE", value_parser = settings::parse_size)]
    cache_size: Option<u64>,

    /// Print data as JSON on stdout.
    #[arg(long, global = true)]
    json: bool,

    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Work with the content-addressed store.
    #[command(subcommand)]
    Store(store_cmd::StoreCommand),
    /// Mount the store read-only (default /vorpal/store) and serve it from a daemon.
    Mount {
        /// Mountpoint [default: --mountpoint]
        dir: Option<PathBuf>,
        /// Serve from this process instead of a background daemon (for systemd and debugging).
        #[arg(long)]
        foreground: bool,
        /// FUSE worker threads [default: 2 per core, 4 to 16].
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Unmount and stop the daemon (or clear a stale mount left by one that died).
    Umount {
        /// Mountpoint [default: --mountpoint]
        dir: Option<PathBuf>,
    },
    /// Whether the store is mounted, and the daemon's counters.
    Status,
    /// Upload roots, build results or artifacts (by name) and whatever of their data S3 lacks.
    Push {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Fetch whole artifacts from S3 into the local cache (instead of on first read).
    Pull {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove data no root reaches; prints what was freed.
    Gc,
    /// Build the artifacts of a manifest (vorpalfs.toml); prints their store paths.
    Build(build_cmd::BuildArgs),
    /// Print the canonical recipe of an artifact (what its input digest hashes).
    Inspect(build_cmd::InspectArgs),
    /// Run an artifact's `bin/<name>` from the store.
    Run {
        /// Artifact name or alias (the newest build of it).
        artifact: String,
        /// The program in its `bin/` [default: the artifact's name].
        #[arg(long)]
        bin: Option<String>,
        /// Arguments for the program.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}

/// Prints an error and its causes, the way every command reports failure.
pub fn report_error(e: &anyhow::Error, w: &mut dyn Write) {
    let _ = writeln!(w, "error: {e}");
    for cause in e.chain().skip(1) {
        let _ = writeln!(w, "  caused by: {cause}");
    }
}

fn run_store_locally(
    settings: &settings::Settings,
    f: impl FnOnce(&mut store_cmd::Ctx<'_>) -> Result<ExitCode>,
) -> Result<ExitCode> {
    let store = Store::open_with(&settings.store_dir, settings.store_options()?)?;
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr());
    let mut ctx =
        store_cmd::Ctx { store: &store, settings, out: &mut out, err: &mut err, root_changed: &|_| {}, local: true };
    let code = f(&mut ctx)?;
    out.flush()?;
    Ok(code)
}

/// The builder's places for a store served at `mountpoint`.
pub fn builder_config(store_dir: &std::path::Path, mountpoint: &std::path::Path) -> vorpalfs_builder::Config {
    vorpalfs_builder::Config {
        mountpoint: mountpoint.to_path_buf(),
        work_dir: store_dir.join("builds"),
        log_dir: store_dir.join("logs"),
        // Not current_exe(): that path is gone if the binary was replaced while we run.
        helper: PathBuf::from("/proc/self/exe"),
    }
}

/// Connects to the store's daemon, starting one in the background first if none runs.
fn ensure_daemon(settings: &settings::Settings) -> Result<std::os::unix::net::UnixStream> {
    if let Some(conn) = client::connect(settings) {
        return Ok(conn);
    }
    client::spawn_daemon(settings, &settings.mountpoint, None)?;
    eprintln!("started a daemon serving {} at {}", settings.store_dir.display(), settings.mountpoint.display());
    client::connect(settings).context("the daemon started but does not answer")
}

fn run(cli: Cli) -> Result<ExitCode> {
    let settings = settings::Settings::resolve(&cli);
    match cli.command {
        Command::Build(_) => build_cmd::call_build(ensure_daemon(&settings)?, &settings),
        Command::Inspect(args) => match client::connect(&settings) {
            Some(conn) => client::forward(conn, &settings),
            None => {
                let store = std::sync::Arc::new(Store::open_with(&settings.store_dir, settings.store_options()?)?);
                let cfg = builder_config(&settings.store_dir, &settings.mountpoint);
                let builder = vorpalfs_builder::Builder::new(store, cfg, Box::new(|_| {}))?;
                let mut out = std::io::stdout().lock();
                let code = build_cmd::run_inspect(&builder, &settings, args, &mut out)?;
                out.flush()?;
                Ok(code)
            }
        },
        Command::Run { artifact, bin, args } => {
            let conn = ensure_daemon(&settings)?;
            let argv = ["vorpalfs", "--json", "inspect", artifact.as_str()].map(String::from).to_vec();
            let (code, out, err) = client::capture(conn, &argv, &settings)?;
            if code != 0 {
                std::io::stderr().write_all(&err)?;
                return Ok(ExitCode::from(code.clamp(1, 255) as u8));
            }
            let info: serde_json::Value = serde_json::from_slice(&out).context("unreadable answer from the daemon")?;
            if info["output"].is_null() {
                bail!("`{artifact}` has a recipe but no output in the store; build it first");
            }
            let path = PathBuf::from(info["path"].as_str().unwrap_or_default());
            let name = bin.unwrap_or_else(|| info["recipe"]["name"].as_str().unwrap_or(&artifact).to_string());
            let prog = path.join("bin").join(&name);
            if !prog.exists() {
                let have: Vec<String> = std::fs::read_dir(path.join("bin"))
                    .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                    .unwrap_or_default();
                bail!(
                    "{} does not exist (bin/ has: {})",
                    prog.display(),
                    if have.is_empty() { "nothing".to_string() } else { have.join(", ") }
                );
            }
            use std::os::unix::process::CommandExt;
            let e = std::process::Command::new(&prog).args(&args).exec();
            Err(e).with_context(|| format!("cannot run {}", prog.display()))
        }
        Command::Store(cmd) => match client::connect(&settings) {
            Some(conn) => client::forward(conn, &settings),
            None => run_store_locally(&settings, |ctx| store_cmd::run(ctx, cmd)),
        },
        Command::Push { .. } | Command::Pull { .. } | Command::Gc => {
            let cmd = match cli.command {
                Command::Push { names } => store_cmd::SyncCommand::Push(names),
                Command::Pull { names } => store_cmd::SyncCommand::Pull(names),
                _ => store_cmd::SyncCommand::Gc,
            };
            match client::connect(&settings) {
                Some(conn) => client::forward(conn, &settings),
                None => run_store_locally(&settings, |ctx| store_cmd::run_sync(ctx, cmd)),
            }
        }
        Command::Mount { dir, foreground, threads } => {
            let mountpoint = dir.map_or(settings.mountpoint.clone(), |d| settings.abs(&d));
            if foreground {
                daemon::run(settings, &mountpoint, threads)?;
            } else if let Some(conn) = client::connect(&settings) {
                let st = client::status(conn)?;
                eprintln!("already mounted by pid {}", st["pid"]);
                println!("{}", st["mountpoint"].as_str().unwrap_or_default());
            } else {
                client::spawn_daemon(&settings, &mountpoint, threads)?;
                println!("{}", mountpoint.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Umount { dir } => {
            let mountpoint = dir.map_or(settings.mountpoint.clone(), |d| settings.abs(&d));
            if let Some(conn) = client::connect(&settings) {
                // The daemon's own mountpoint, which may not be the default.
                let served = client::status(conn)
                    .ok()
                    .and_then(|st| st["mountpoint"].as_str().map(PathBuf::from))
                    .unwrap_or(mountpoint);
                let conn = client::connect(&settings).context("the daemon went away")?;
                client::shutdown(conn, &settings)?;
                eprintln!("unmounted {}", served.display());
            } else if vorpalfs_fs::is_mountpoint(&mountpoint) {
                vorpalfs_fs::detach(&mountpoint).with_context(|| format!("cannot unmount {}", mountpoint.display()))?;
                eprintln!("no daemon was running; detached the mount at {}", mountpoint.display());
            } else {
                bail!(
                    "nothing is mounted at {} and no daemon serves {}",
                    mountpoint.display(),
                    settings.store_dir.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status => {
            let st = match client::connect(&settings) {
                Some(conn) => client::status(conn)?,
                None => serde_json::json!({
                    "mounted": false,
                    "store": settings.store_dir,
                    "stale_mount": vorpalfs_fs::is_mountpoint(&settings.mountpoint),
                }),
            };
            if settings.json {
                println!("{st}");
            } else if st.get("mounted") == Some(&serde_json::Value::Bool(false)) {
                println!("not mounted (store {})", settings.store_dir.display());
                if st["stale_mount"] == true {
                    println!("a stale mount remains at {}: run `vorpalfs umount`", settings.mountpoint.display());
                }
            } else {
                let c = &st["chunk_cache"];
                let f = &st["fs"];
                println!(
                    "mounted at {} by pid {} (up {}s)",
                    st["mountpoint"].as_str().unwrap_or("?"),
                    st["pid"],
                    st["uptime_seconds"]
                );
                println!("store        {}", st["store"].as_str().unwrap_or("?"));
                println!(
                    "chunk cache  {} of {} bytes, {} hits, {} misses",
                    c["bytes"], c["budget"], c["hits"], c["misses"]
                );
                println!(
                    "reads        {} ({} bytes, {} waited for a fetch, {} failed)",
                    f["reads"], f["read_bytes"], f["reads_deferred"], f["read_errors"]
                );
                println!("lookups      {} ({} inodes held)", f["lookups"], f["inodes"]);
                let s3 = &st["s3"];
                if !s3.is_null() {
                    println!(
                        "s3           {}: {} GETs ({} bytes), {} PUTs ({} bytes), {} errors; cache {} bytes (budget {})",
                        s3["url"].as_str().unwrap_or("?"),
                        s3["gets"],
                        s3["get_bytes"],
                        s3["puts"],
                        s3["put_bytes"],
                        s3["errors"],
                        s3["cache_bytes"],
                        if s3["cache_budget"].is_null() { "none".to_string() } else { s3["cache_budget"].to_string() }
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    // The sandbox helper must stay single-threaded until it has unshared its namespaces, so it
    // runs before anything else (it never returns).
    let mut args = std::env::args_os();
    if args.nth(1).as_deref() == Some(std::ffi::OsStr::new("__sandbox")) {
        let spec = args.next().map(PathBuf::from).unwrap_or_default();
        vorpalfs_builder::sandbox::helper_main(&spec);
    }
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli) {
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
