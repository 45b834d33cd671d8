//! The `vorpalfs` command.
//!
//! ```text
//! main.rs      clap definitions, logging, error → exit code
//! settings.rs  flags + environment + defaults resolved once, before any work
//! store_cmd.rs `vorpalfs store …`
//! ```
//! Data (digests, paths, file bytes, `--json`) goes to stdout; logs and progress to stderr.
//! `anyhow` lives here only: the libraries return typed errors and this binary prints the chain.

mod settings;
mod store_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A content-addressed artifact store for build outputs.
#[derive(Parser, Debug)]
#[command(name = "vorpalfs", version, about, propagate_version = true)]
pub struct Cli {
    /// The store directory [default: /var/lib/vorpalfs as root, else $XDG_DATA_HOME/vorpalfs]
    #[arg(long, global = true, env = "VORPALFS_STORE_DIR", value_name = "DIR")]
    store_dir: Option<PathBuf>,

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
    /// Work with the content-addressed store directly.
    #[command(subcommand)]
    Store(store_cmd::StoreCommand),
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
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let settings = settings::Settings::resolve(&cli);
    let result = match cli.command {
        Command::Store(cmd) => store_cmd::run(&settings, cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // A closed stdout (`vorpalfs store cat … | head`) is not an error worth a message.
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
