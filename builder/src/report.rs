//! What a build tells its caller: events as they happen, and a report at the end.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use vorpalfs_store::Digest;

/// Progress of a build, in the order things happen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// What will run and what is cached.
    Plan {
        artifacts: Vec<Planned>,
    },
    Started {
        name: String,
        digest: Digest,
    },
    /// One line a step wrote (stdout and stderr together).
    Log {
        name: String,
        line: String,
    },
    /// The result and its data are in S3 (`bytes`: how much was sent).
    Pushed {
        name: String,
        digest: Digest,
        bytes: u64,
    },
    Built {
        name: String,
        digest: Digest,
        seconds: f64,
    },
    Failed {
        name: String,
        digest: Digest,
        error: String,
    },
    /// Not run: a dependency failed, or the build stopped.
    Skipped {
        name: String,
        digest: Digest,
        reason: String,
    },
}

/// What the plan does with an artifact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Cached,
    Build,
    Rebuild,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Planned {
    pub name: String,
    pub digest: Digest,
    pub action: Action,
    /// Why a result S3 has for this digest was not taken (e.g. no trusted key signed it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_refused: Option<String>,
}

/// How an artifact of the plan ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Its result existed (here or in S3): not built.
    Cached,
    Built,
    Failed,
    /// Not run: a dependency failed, the build stopped or was cancelled.
    Skipped,
    /// A dry run's "would build".
    Planned,
}

/// The outcome of one artifact of the plan.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Outcome {
    pub name: String,
    pub digest: Digest,
    /// Its path under the mount.
    pub path: PathBuf,
    /// Output tree, when it exists.
    pub output: Option<Digest>,
    pub requested: bool,
    pub status: Status,
    /// Seconds since the build started when it began and ended running (built or failed).
    pub started: Option<f64>,
    pub finished: Option<f64>,
    pub error: Option<String>,
    /// Why a result S3 has for this digest was not taken (e.g. no trusted key signed it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_refused: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub artifacts: Vec<Outcome>,
    pub seconds: f64,
}

impl Report {
    pub fn failed(&self) -> usize {
        self.artifacts.iter().filter(|a| a.status == Status::Failed).count()
    }
}
