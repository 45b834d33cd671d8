//! The command line: clap definitions, parsed once. The commands a daemon runs for a client
//! are sent to it as these same values (serde), never re-parsed from argv.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};

/// A content-addressed artifact store for build outputs.
#[derive(Parser, Debug)]
#[command(name = "vorpalfs", version, about, propagate_version = true)]
pub struct Cli {
    /// A configuration file read instead of the user's (after the system's
    /// /etc/vorpalfs/config.toml) [default: $XDG_CONFIG_HOME/vorpalfs/config.toml].
    #[arg(long, global = true, env = "VORPALFS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The store directory [default: /var/lib/vorpalfs as root, else $XDG_DATA_HOME/vorpalfs]
    #[arg(long, global = true, env = "VORPALFS_STORE_DIR", value_name = "DIR")]
    pub store_dir: Option<PathBuf>,

    /// Where the store is mounted.
    #[arg(long, global = true, env = "VORPALFS_MOUNTPOINT", value_name = "DIR", default_value = "/vorpal/store")]
    pub mountpoint: PathBuf,

    /// S3 location shared with other hosts: s3://bucket/prefix (credentials: the AWS chain).
    #[arg(long, global = true, env = "VORPALFS_S3", value_name = "URL")]
    pub s3: Option<String>,

    /// S3-compatible endpoint, e.g. http://127.0.0.1:9000 [default: AWS_ENDPOINT_URL, else AWS].
    #[arg(long, global = true, env = "VORPALFS_S3_ENDPOINT", value_name = "URL")]
    pub s3_endpoint: Option<String>,

    /// Disk budget for data fetched from S3, e.g. 20G (least recently read is evicted first).
    #[arg(long, global = true, env = "VORPALFS_CACHE_SIZE", value_name = "SIZE", value_parser = parse_size)]
    pub cache_size: Option<u64>,

    /// Memory for a running artifact's workspace and output (a tmpfs), e.g. 8G
    /// [default: half the memory].
    #[arg(long, global = true, env = "VORPALFS_BUILD_SPACE", value_name = "SIZE", value_parser = parse_size)]
    pub build_space: Option<u64>,

    /// A root from S3 with less than this to fetch is fetched whole, in the background, when the
    /// mount first looks it up, e.g. 64M; 0 never [default: 64M, at most half --cache-size].
    #[arg(long, global = true, env = "VORPALFS_PREFETCH_BELOW", value_name = "SIZE", value_parser = parse_size)]
    pub prefetch_below: Option<u64>,

    /// The most bytes a `url` source may download, e.g. 2G [default: 4G].
    #[arg(long, global = true, env = "VORPALFS_MAX_DOWNLOAD", value_name = "SIZE", value_parser = parse_size)]
    pub max_download: Option<u64>,

    /// Processes a running artifact may have at once.
    #[arg(long, global = true, env = "VORPALFS_BUILD_PROCESSES", value_name = "N")]
    pub build_processes: Option<u64>,

    /// A group whose members may run the daemon's administrative commands (push, gc, store rm,
    /// umount); root always may.
    #[arg(long, global = true, env = "VORPALFS_ADMIN_GROUP", value_name = "GROUP")]
    pub admin_group: Option<String>,

    /// The secret key this host signs the roots and results it pushes with (a file from
    /// `vorpalfs key generate`, mode 0600).
    #[arg(long, global = true, env = "VORPALFS_SIGNING_KEY", value_name = "FILE")]
    pub signing_key: Option<PathBuf>,

    /// Public keys whose signatures make a root or result from S3 acceptable: `NAME:BASE64`
    /// entries and files of such lines, separated by commas or spaces. Once any key is set
    /// (this or --signing-key), what no accepted key signed is refused.
    #[arg(long, global = true, env = "VORPALFS_TRUSTED_KEYS", value_name = "KEYS")]
    pub trusted_keys: Option<String>,

    /// Take roots and results from S3 that no trusted key signed although keys are set
    /// (a warning is printed on every command).
    #[arg(long, global = true, env = "VORPALFS_TRUST_UNSIGNED", value_parser = clap::builder::BoolishValueParser::new())]
    pub trust_unsigned: bool,

    /// Serve extended attributes on the mount: `user.vorpalfs.digest` of every entry. Off by
    /// default: with them on, the kernel asks the daemon for `security.*` and ACL attributes
    /// of every new inode, one round trip each (`ls -l` of a cold 100k-entry directory took
    /// 6.0 s with them, 0.84 s without; native 1.4 s). `--xattrs=false` turns them off again.
    #[arg(long, global = true, env = "VORPALFS_XATTRS", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub xattrs: Option<bool>,

    /// After a root from S3 is first looked up, fetch the rest of it in the background, two
    /// GETs at a time behind reads and prefetch, within half the cache budget. Off by default.
    #[arg(long, global = true, env = "VORPALFS_FILL", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub fill: Option<bool>,

    /// Publish the access profiles of what was read through the mount to S3, once a minute and
    /// at unmount, merged with S3's (for a host that may write to the bucket; builds push theirs
    /// anyway). Off by default.
    #[arg(long, global = true, env = "VORPALFS_PUSH_PROFILES", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub push_profiles: Option<bool>,

    /// Serve the daemon's counters, per-root S3 counters and FUSE latencies in the Prometheus
    /// text format at `GET /metrics` on ADDR: a loopback `HOST:PORT` or `unix:PATH`. Off by
    /// default.
    #[arg(long, global = true, env = "VORPALFS_METRICS", value_name = "ADDR")]
    pub metrics: Option<String>,

    /// Print data as JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,

    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Work with the content-addressed store.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Mount the store read-only (default /vorpal/store) and serve it from a daemon.
    Mount(MountArgs),
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
    /// Access profiles: which chunks of a root were read through the mount, first-read first.
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// Remove data no root reaches; prints what was freed.
    Gc,
    /// Build the artifacts of a manifest (vorpalfs.toml); prints their store paths.
    Build(BuildArgs),
    /// Print the canonical recipe of an artifact (what its input digest hashes).
    Inspect(InspectArgs),
    /// Run an artifact's `bin/<name>` from the store.
    Run(RunArgs),
    /// Signing keys: make one, or print the public half of one.
    #[command(subcommand)]
    Key(KeyCommand),
    /// The effective configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Check this host's setup (FUSE, mountpoint, namespaces, store, disk, daemon, S3, keys);
    /// exits non-zero when a check fails.
    Doctor,
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (vorpalfs.1 and one per subcommand) into DIR.
    #[command(hide = true)]
    Manpages { dir: PathBuf },
}

#[derive(Subcommand, Debug, Clone, Serialize, Deserialize)]
pub enum ProfileCommand {
    /// Publish what the mount's daemon recorded of each root (a name or digest) to S3, merged
    /// with the profile there: hosts that look the root up later prefetch those chunks first.
    Push {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Lay each root's hot chunks (its profile in S3) out back to back in new packs, in profile
    /// order, and point its index there: hosts that look it up later prefetch them in a few
    /// large GETs. The hot chunks are then twice in S3; a root laid out so already is left alone.
    Repack {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum ConfigCommand {
    /// Every setting, its value and where it came from (default, a file, env, flag).
    Show,
}

#[derive(Subcommand, Debug, Clone)]
pub enum KeyCommand {
    /// Write a new ed25519 key pair, NAME.secret (mode 0600) and NAME.public, and print the
    /// public key (`NAME:BASE64`, what other hosts put in --trusted-keys).
    Generate {
        /// The key's name (letters, digits, '.', '_', '-'), e.g. builder-2026.
        name: String,
        /// Where to write the two files.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Print the public key of a secret key file.
    Public { secret: PathBuf },
}

#[derive(Subcommand, Debug, Clone, Serialize, Deserialize)]
pub enum StoreCommand {
    /// Ingest a directory; prints its root digest.
    Add {
        dir: PathBuf,
        /// Also record the root under this name (a GC root).
        #[arg(long)]
        name: Option<String>,
    },
    /// List the named roots.
    Ls,
    /// Write a stored file to stdout: `<digest|name>/<path>`.
    Cat { path: String },
    /// Materialize a stored tree into a new or empty directory.
    Export { root: String, dir: PathBuf },
    /// Re-hash everything reachable from the roots; exits non-zero on any damage.
    Verify,
    /// Verify, then drop what is damaged from the index (a re-add of its source or a pull
    /// writes it again) and, with S3, fetch damaged chunks again; exits non-zero unless all of
    /// it was restored.
    Repair,
    /// Object counts, logical vs stored bytes, dedup ratio.
    Stats,
    /// Remove a root name (its data stays until garbage collection).
    Rm { name: String },
}

#[derive(Args, Debug, Clone)]
pub struct MountArgs {
    /// Mountpoint [default: --mountpoint]
    pub dir: Option<PathBuf>,
    /// Serve from this process instead of a background daemon (for systemd and debugging).
    #[arg(long)]
    pub foreground: bool,
    /// FUSE worker threads [default: 2 per core, 4 to 16].
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Args, Debug, Clone, Serialize, Deserialize)]
pub struct BuildArgs {
    /// Artifacts to build (names or aliases of ./vorpalfs.toml, or of --file) [default: all];
    /// the first may instead be a manifest file or a directory holding vorpalfs.toml.
    #[arg(value_name = "NAME|PATH")]
    pub words: Vec<String>,
    /// The manifest (a file, or a directory holding vorpalfs.toml); every word is then an
    /// artifact of it.
    #[arg(short = 'f', long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Artifacts built at once [default: number of CPUs].
    #[arg(short, long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Go on with independent artifacts after one fails.
    #[arg(short, long)]
    pub keep_going: bool,
    /// Build the requested artifacts even if their result exists.
    #[arg(long)]
    pub rebuild: bool,
    /// Print what would be built and what is cached, and stop.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Keep the workspace of a failed artifact (its path is printed).
    #[arg(long)]
    pub keep_failed: bool,
    /// Accept local sources outside the manifest's directory that are not readable by
    /// everyone (everything stored is readable by every user through the mount).
    #[arg(long)]
    pub allow_outside_sources: bool,
}

#[derive(Args, Debug, Clone, Serialize, Deserialize)]
pub struct InspectArgs {
    /// An artifact name or alias, or an input digest.
    pub artifact: String,
    /// Compute the recipe from this manifest (file or directory) instead of the store's record.
    #[arg(short = 'f', long = "file", visible_alias = "manifest", value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// Print the exact bytes that are hashed (compact), not the readable form.
    #[arg(long)]
    pub canonical: bool,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Artifact name or alias (the newest build of it).
    pub artifact: String,
    /// The program in its `bin/` [default: the artifact's name].
    #[arg(long)]
    pub bin: Option<String>,
    /// Arguments for the program.
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// `512M`, `10G`, `1048576`: a byte count with an optional binary suffix (K, M, G, T).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mul) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        Some('T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: u64 = num.trim().parse().map_err(|_| format!("{s:?} is not a size (like 512M or 20G)"))?;
    n.checked_mul(mul).ok_or_else(|| format!("{s:?} is too large"))
}
