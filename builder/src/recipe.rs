//! Recipes and input digests.
//!
//! An artifact's *recipe* is everything that determines its output, in a canonical form: the
//! format version, its name, the target system, the sandbox profile (the host profile's version,
//! or the rootfs artifact's digest), its sources (by name, as tree digests: names, modes and
//! symlinks count), its deps (by name, as input digests, in the manifest's order, which sets
//! `PATH`), and its steps (entrypoint, args, script, env). Aliases and the timeout do not change
//! the output and are not part of it.
//!
//! The canonical form is compact JSON with fields in a fixed order and maps sorted by key; the
//! input digest is BLAKE3 over it, domain-separated as an artifact (`vorpalfs:artifact:v1\0`).
//! `vorpalfs inspect` prints exactly the bytes that were hashed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use vorpalfs_store::{Digest, Kind};

/// Bumped when the meaning of a recipe changes, so that no old result is reused.
pub const FORMAT: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub format: u32,
    pub name: String,
    pub system: String,
    pub sandbox: Sandbox,
    pub sources: Vec<SourceRef>,
    pub deps: Vec<DepRef>,
    pub steps: Vec<StepRecipe>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Sandbox {
    /// The host's `/usr`, `/bin`, `/lib*` and a minimal `/etc`, read-only; the string names the
    /// exact set (see `sandbox::HOST_PROFILE`).
    Host(String),
    /// Nothing from the host: this artifact's output is `/`.
    Rootfs { name: String, digest: Digest },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceRef {
    pub name: String,
    pub tree: Digest,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DepRef {
    pub name: String,
    pub digest: Digest,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepRecipe {
    pub entrypoint: String,
    pub args: Vec<String>,
    pub script: Option<String>,
    pub env: BTreeMap<String, String>,
}

/// The system builds run for, as part of every recipe.
pub fn this_system() -> String {
    format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS)
}

impl Recipe {
    /// The exact bytes hashed.
    pub fn canonical(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a recipe always serializes")
    }

    /// The input digest: the build key and the store path's name.
    pub fn digest(&self) -> Digest {
        Digest::of(Kind::Artifact, &self.canonical())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Recipe {
        Recipe {
            format: FORMAT,
            name: "hello".into(),
            system: "x86_64-linux".into(),
            sandbox: Sandbox::Host("host-v1".into()),
            sources: vec![SourceRef { name: "src".into(), tree: Digest::of(Kind::Tree, b"t") }],
            deps: vec![DepRef { name: "lib".into(), digest: Digest::of(Kind::Artifact, b"d") }],
            steps: vec![StepRecipe {
                entrypoint: "bash".into(),
                args: vec!["-e".into()],
                script: Some("echo hi".into()),
                env: BTreeMap::from([("A".into(), "1".into())]),
            }],
        }
    }

    /// Golden value: the same recipe has had the same digest on every machine since format 1.
    /// If this changes, every existing result is orphaned: bump `FORMAT` deliberately instead.
    #[test]
    fn golden_digest() {
        let r = sample();
        assert_eq!(
            String::from_utf8(r.canonical()).unwrap(),
            format!(
                r#"{{"format":1,"name":"hello","system":"x86_64-linux","sandbox":{{"host":"host-v1"}},"sources":[{{"name":"src","tree":"{}"}}],"deps":[{{"name":"lib","digest":"{}"}}],"steps":[{{"entrypoint":"bash","args":["-e"],"script":"echo hi","env":{{"A":"1"}}}}]}}"#,
                Digest::of(Kind::Tree, b"t"),
                Digest::of(Kind::Artifact, b"d")
            )
        );
        assert_eq!(r.digest().to_hex(), GOLDEN);
    }

    const GOLDEN: &str = "ade42765fafbfd3593864da122527356d552b140e20e8fe686d8814dfd53971a";

    #[test]
    fn every_field_changes_the_digest() {
        let base = sample().digest();
        type Change = Box<dyn Fn(&mut Recipe)>;
        let mut variants: Vec<Change> = vec![
            Box::new(|r| r.format = 2),
            Box::new(|r| r.name = "hello2".into()),
            Box::new(|r| r.system = "aarch64-linux".into()),
            Box::new(|r| r.sandbox = Sandbox::Host("host-v2".into())),
            Box::new(|r| r.sandbox = Sandbox::Rootfs { name: "fs".into(), digest: Digest::of(Kind::Artifact, b"r") }),
            Box::new(|r| r.sources[0].name = "src2".into()),
            Box::new(|r| r.sources[0].tree = Digest::of(Kind::Tree, b"u")),
            Box::new(|r| r.sources.clear()),
            Box::new(|r| r.deps[0].name = "lib2".into()),
            Box::new(|r| r.deps[0].digest = Digest::of(Kind::Artifact, b"e")),
            Box::new(|r| r.steps[0].entrypoint = "sh".into()),
            Box::new(|r| r.steps[0].args.push("-x".into())),
            Box::new(|r| r.steps[0].script = Some("echo ho".into())),
            Box::new(|r| r.steps[0].script = None),
            Box::new(|r| {
                r.steps[0].env.insert("A".into(), "2".into());
            }),
            Box::new(|r| {
                r.steps[0].env.insert("B".into(), "1".into());
            }),
            Box::new(|r| r.steps.push(r.steps[0].clone())),
        ];
        let mut seen = std::collections::HashSet::from([base]);
        for (i, v) in variants.iter_mut().enumerate() {
            let mut r = sample();
            v(&mut r);
            assert!(seen.insert(r.digest()), "variant {i} did not change the digest");
        }
    }

    #[test]
    fn canonical_round_trip() {
        let r = sample();
        let back: Recipe = serde_json::from_slice(&r.canonical()).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.canonical(), r.canonical());
    }
}
