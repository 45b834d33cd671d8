//! The builder's errors. Each names what the user must look at: the manifest file and line, the
//! artifact, the step, the log file, the source.

use std::path::PathBuf;

use crate::fetch::DownloadError;
use crate::process::ProcessError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A manifest that cannot be used; `at` is `file:line:column` (or the file), `msg` the
    /// parser's or the checker's words.
    #[error("{at}: {msg}")]
    Manifest { at: String, msg: String },

    #[error("unknown artifact `{0}` (not in the manifest, and no build of that name in the store)")]
    UnknownArtifact(String),

    #[error("source `{name}`: {source}")]
    Source { name: String, source: SourceError },

    #[error("artifact `{name}`: step {step} of {steps} {how}; log: {}\n{tail}", log.display())]
    StepFailed { name: String, step: usize, steps: usize, how: String, log: PathBuf, tail: String },

    #[error("artifact `{name}`: the sandbox could not be set up: {how}; log: {}", log.display())]
    SandboxSetup { name: String, how: String, log: PathBuf },

    #[error("artifact `{name}`: timed out after {secs}s (every process of the step was killed); log: {}", log.display())]
    Timeout { name: String, secs: u64, log: PathBuf },

    #[error("artifact `{name}`: {source}")]
    Process { name: String, source: ProcessError },

    #[error("artifact `{name}`: cannot publish the output: {source}")]
    Publish { name: String, source: vorpalfs_store::Error },

    #[error("artifact `{name}`: built, but the push to S3 failed: {source}")]
    Push { name: String, source: vorpalfs_store::Error },

    #[error("build cancelled")]
    Cancelled,

    #[error(transparent)]
    NoBuildUsers(#[from] crate::users::NoBuildUsers),

    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    #[error(transparent)]
    Store(#[from] vorpalfs_store::Error),
}

/// Why a source could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("bad glob `{pattern}`: {source}")]
    Glob { pattern: String, source: globset::Error },
    #[error("{}: {source}", path.display())]
    Path { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Download(#[from] DownloadError),
    #[error(transparent)]
    Store(#[from] vorpalfs_store::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io { path: path.into(), source })
    }
}
