//! The builder's errors. Each names what the user must look at: the manifest file and line, the
//! artifact, the step, the log file.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{at}: {msg}")]
    Manifest { at: String, msg: String },

    #[error("unknown artifact `{0}` (not in the manifest, and no build of that name in the store)")]
    UnknownArtifact(String),

    #[error("source `{name}`: {msg}")]
    Source { name: String, msg: String },

    #[error("artifact `{name}`: {msg}")]
    Build { name: String, msg: String },

    #[error("artifact `{name}`: step {step} of {steps} {how}; log: {log}\n{tail}")]
    StepFailed { name: String, step: usize, steps: usize, how: String, log: PathBuf, tail: String },

    #[error("artifact `{name}`: timed out after {secs}s (every process of the step was killed); log: {log}")]
    Timeout { name: String, secs: u64, log: PathBuf },

    #[error("build cancelled")]
    Cancelled,

    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

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
