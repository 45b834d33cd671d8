//! Access profiles: which chunks of a root programs read through the mount, in the order they
//! were first read. A profile lives in S3 next to its root, `profiles/<tree>`; a host that
//! looks the root up for the first time fetches it with the index and prefetches those chunks,
//! in that order, ahead of the program's faults (demand reads still go first: `lazy.rs`).
//!
//! - **Recording** is in memory only: the mount calls [`Store::touched`] on every read, which
//!   costs a hash lookup (no RocksDB write). Each root keeps at most [`MAX_PROFILE_CHUNKS`]
//!   chunk ids and all roots together at most [`RECORDED_MAX`]; beyond that nothing more is
//!   recorded.
//! - **Pushing** ([`Store::push_profile`]) merges: what S3 already has keeps its order and the
//!   chunks read here that it lacks follow, up to the cap; the result is signed with this
//!   host's key, if it has one.
//! - **Trust.** A profile names chunks, never bytes: every chunk it leads to is fetched from a
//!   place the verified index gave and checked against its digest like any other. What a
//!   hostile profile can do is make a host fetch up to the prefetch budget of chunks it did not
//!   need. It is refused when it is larger than its cap, names another tree than its key, or
//!   (when signatures are required) carries no trusted signature over its tree and contents; a
//!   profile of an older version of an artifact is under that version's tree, so it is never
//!   found for the new one.
//!
//! ```text
//! profiles/<tree hex>   "vorpalfs profile v1\ntree <hex>\nchunks <n> <blake3 of the ids>\n",
//!                       one "sig <key> <time> <base64>" line per signature, an empty line,
//!                       then the n chunk ids (32 bytes each), hottest first
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::model::digest::Digest;
use crate::model::records::FileRecord;
use crate::remote::Remote;
use crate::remote::trust::{MAX_SIGNATURES, SecretKey, Sig};
use crate::store::Store;

pub const PROFILE_HEADER: &str = "vorpalfs profile v1";
/// The most chunk ids one profile holds (2 MiB of ids; a compiler's run reads a few thousand).
pub const MAX_PROFILE_CHUNKS: usize = 1 << 16;
/// The largest profile object read: the ids, the header and every signature line.
pub const MAX_PROFILE_OBJECT: u64 = (MAX_PROFILE_CHUNKS as u64) * 32 + (16 << 10);
/// The most chunk ids recorded on this host, all roots together (about 20 MiB).
pub const RECORDED_MAX: usize = 1 << 18;

pub fn profile_key(tree: &Digest) -> String {
    format!("profiles/{tree}")
}

/// A profile as stored in S3.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    pub tree: Digest,
    /// Hottest first, each once.
    pub chunks: Vec<Digest>,
    pub sigs: Vec<Sig>,
}

/// The digest a signature covers for the ids: their concatenation, hashed.
fn ids_digest(chunks: &[Digest]) -> Digest {
    let mut h = blake3::Hasher::new();
    for c in chunks {
        h.update(&c.0);
    }
    Digest(*h.finalize().as_bytes())
}

/// The statement a profile's signature covers.
pub fn profile_statement(tree: &Digest, ids: &Digest, n: usize, key: &str, time: u64) -> Vec<u8> {
    format!("vorpalfs profile statement v1\ntree {tree}\nchunks {n} {ids}\nkey {key}\ntime {time}\n").into_bytes()
}

impl Profile {
    pub fn new(tree: Digest, chunks: Vec<Digest>) -> Profile {
        Profile { tree, chunks, sigs: Vec::new() }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!(
            "{PROFILE_HEADER}\ntree {}\nchunks {} {}\n",
            self.tree,
            self.chunks.len(),
            ids_digest(&self.chunks)
        );
        for s in &self.sigs {
            out.push_str(&format!("sig {}\n", s.encode()));
        }
        out.push('\n');
        let mut out = out.into_bytes();
        for c in &self.chunks {
            out.extend_from_slice(&c.0);
        }
        out
    }

    /// Parses untrusted bytes: `None` for anything but a well-formed profile within the caps
    /// (no id twice, the ids matching their digest line).
    pub fn parse(obj: &[u8]) -> Option<Profile> {
        if obj.len() as u64 > MAX_PROFILE_OBJECT {
            return None;
        }
        // The text part ends at the first empty line; the ids follow it.
        let split = obj.windows(2).position(|w| w == b"\n\n")?;
        let (text, ids) = (std::str::from_utf8(&obj[..split + 1]).ok()?, &obj[split + 2..]);
        let mut lines = text.split_terminator('\n');
        if lines.next()? != PROFILE_HEADER {
            return None;
        }
        let tree = lines.next()?.strip_prefix("tree ")?.parse().ok()?;
        let (n, digest) = lines.next()?.strip_prefix("chunks ")?.split_once(' ')?;
        let n: usize = n.parse().ok()?;
        let digest: Digest = digest.parse().ok()?;
        if n > MAX_PROFILE_CHUNKS || ids.len() != n * 32 {
            return None;
        }
        let mut sigs: Vec<Sig> = Vec::new();
        for l in lines {
            let s = Sig::parse(l.strip_prefix("sig ")?)?;
            if sigs.len() == MAX_SIGNATURES || sigs.iter().any(|o| o.key == s.key) {
                return None;
            }
            sigs.push(s);
        }
        let chunks: Vec<Digest> = ids.chunks_exact(32).map(|c| Digest(c.try_into().expect("32 bytes"))).collect();
        let mut seen = HashSet::with_capacity(chunks.len());
        if !chunks.iter().all(|c| seen.insert(*c)) || ids_digest(&chunks) != digest {
            return None;
        }
        Some(Profile { tree, chunks, sigs })
    }

    /// The statement a signature by `key` at `time` covers.
    pub fn statement(&self, key: &str, time: u64) -> Vec<u8> {
        profile_statement(&self.tree, &ids_digest(&self.chunks), self.chunks.len(), key, time)
    }

    /// Signs the profile with `key` (the only signature it then carries: the contents changed).
    pub fn sign(&mut self, key: &SecretKey) {
        let time = crate::remote::trust::now();
        self.sigs = vec![key.sign(&self.statement(&key.name, time), time)];
    }
}

/// What this host's mount has read of each root, in first-touch order.
#[derive(Default)]
pub(crate) struct Recorder {
    roots: HashMap<Digest, Touches>,
    total: usize,
    /// At the cap with nothing to drop: touches are ignored until a push makes room.
    full: bool,
}

#[derive(Default)]
struct Touches {
    order: Vec<Digest>,
    seen: HashSet<Digest>,
    /// How many of `order` are in S3 already (pushed from here).
    pushed: usize,
}

impl Recorder {
    fn touch(&mut self, root: &Digest, chunk: Digest) {
        if self.total >= RECORDED_MAX && !self.make_room() {
            return;
        }
        let t = self.roots.entry(*root).or_default();
        if t.order.len() < MAX_PROFILE_CHUNKS && t.seen.insert(chunk) {
            t.order.push(chunk);
            self.total += 1;
        }
    }
}

impl Recorder {
    /// At the cap: drops the roots whose every recorded chunk is in S3 already (the next push
    /// of one merges with S3's profile, so nothing is lost). Whether there is room now.
    fn make_room(&mut self) -> bool {
        if self.full {
            return false;
        }
        self.roots.retain(|_, t| t.pushed < t.order.len());
        self.total = self.roots.values().map(|t| t.order.len()).sum();
        self.full = self.total >= RECORDED_MAX;
        !self.full
    }
}

/// What [`Store::push_profile`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProfileReport {
    pub tree: Digest,
    /// Chunks recorded here for the root.
    pub recorded: usize,
    /// Chunks of the profile S3 had before (0: none, or one refused).
    pub there: usize,
    /// Chunks of the profile written (0: nothing new, nothing written).
    pub written: usize,
    pub signed_by: Option<String>,
}

/// Counters of recorded and used profiles, for `vorpalfs status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProfileStats {
    /// Roots with chunks recorded here, and those chunks.
    pub recorded_roots: u64,
    pub recorded_chunks: u64,
    /// Profiles found in S3 (and accepted) for roots looked up here.
    pub profiles_used: u64,
    /// GETs sent and bytes (as stored) asked for by profile prefetch.
    pub prefetch_gets: u64,
    pub prefetch_bytes: u64,
}

/// Fetches and checks the profile of `tree` (in the background of a lookup): `None` when there
/// is none or it is refused (logged).
pub(crate) async fn fetch_profile(remote: Remote, tree: Digest, trust: crate::remote::trust::Trust) -> Option<Profile> {
    let key = profile_key(&tree);
    let bytes = match remote.get(key.clone(), MAX_PROFILE_OBJECT).await {
        Ok(Some(b)) => b,
        Ok(None) => return None,
        Err(e) => {
            tracing::debug!(tree = %tree, "no profile: {e}");
            return None;
        }
    };
    match accept(&bytes, &tree, &trust) {
        Ok(p) => Some(p),
        Err(why) => {
            tracing::warn!(tree = %tree, "ignoring the profile at {}/{key}: {why}", remote.url());
            None
        }
    }
}

/// Whether a profile object found under `tree`'s key may be used here.
pub(crate) fn accept(
    bytes: &[u8],
    tree: &Digest,
    trust: &crate::remote::trust::Trust,
) -> std::result::Result<Profile, String> {
    let p = Profile::parse(bytes).ok_or("not a vorpalfs profile of a version this host reads")?;
    if p.tree != *tree {
        return Err(format!("it is the profile of tree {}", p.tree));
    }
    if trust.required() && trust.trusted_signer(&p.sigs, |k, t| p.statement(k, t)).is_none() {
        return Err(format!("no trusted signature (trusted keys: {})", trust.key_names()));
    }
    Ok(p)
}

impl Store {
    /// The mount read `[offset, offset+len)` of `file` below root `root`: records the chunks
    /// it covers that the root's profile lacks (holes are not recorded: they cost nothing).
    pub fn touched(&self, root: &Digest, file: &FileRecord, offset: u64, len: usize) {
        if offset >= file.size || len == 0 || file.chunks.is_empty() {
            return;
        }
        let last = file.chunk_at((offset + len as u64 - 1).min(file.size - 1));
        let mut rec = self.read.recorder.lock().unwrap();
        for c in &file.chunks[file.chunk_at(offset)..=last] {
            if !c.is_zero() {
                rec.touch(root, c.id);
            }
        }
    }

    /// The chunks recorded here for `tree`, hottest first.
    pub fn recorded(&self, tree: &Digest) -> Vec<Digest> {
        self.read.recorder.lock().unwrap().roots.get(tree).map(|t| t.order.clone()).unwrap_or_default()
    }

    /// Publishes what this host recorded of root `what` (a name or digest) as its profile in
    /// S3, merged with the profile there (if it is one this host accepts).
    pub fn push_profile(&self, what: &str) -> Result<ProfileReport> {
        let remote = self.remote_or_err()?;
        let r = self.resolve_local(what)?.ok_or_else(|| Error::UnknownName(what.to_string()))?;
        let recorded = self.recorded(&r.tree);
        if recorded.is_empty() {
            return Err(Error::NoProfile { name: what.to_string() });
        }
        let key = profile_key(&r.tree);
        let there = match remote.wait(remote.get(key.clone(), MAX_PROFILE_OBJECT)) {
            Ok(Some(b)) => accept(&b, &r.tree, &self.opts.trust)
                .map_err(|why| tracing::info!(tree = %r.tree, "replacing the profile in S3: {why}"))
                .ok(),
            Ok(None) => None,
            // Too large to be one: replaced.
            Err(Error::Remote { source: crate::RemoteError::TooLarge { .. }, .. }) => None,
            Err(e) => return Err(e),
        };
        let mut chunks = there.as_ref().map(|p| p.chunks.clone()).unwrap_or_default();
        let before = chunks.len();
        let mut seen: HashSet<Digest> = chunks.iter().copied().collect();
        for c in &recorded {
            if chunks.len() == MAX_PROFILE_CHUNKS {
                break;
            }
            if seen.insert(*c) {
                chunks.push(*c);
            }
        }
        let mut report = ProfileReport {
            tree: r.tree,
            recorded: recorded.len(),
            there: before,
            signed_by: self.opts.trust.signer.as_ref().map(|k| k.name.clone()),
            ..Default::default()
        };
        let signed_by_us = there
            .as_ref()
            .is_some_and(|p| self.opts.trust.signer.as_ref().is_none_or(|k| p.sigs.iter().any(|s| s.key == k.name)));
        if chunks.len() > before || !signed_by_us {
            let mut p = Profile::new(r.tree, chunks);
            if let Some(k) = &self.opts.trust.signer {
                p.sign(k);
            }
            report.written = p.chunks.len();
            remote.wait(remote.put(key, p.encode().into()))?;
        }
        let mut rec = self.read.recorder.lock().unwrap();
        if let Some(t) = rec.roots.get_mut(&r.tree) {
            t.pushed = t.pushed.max(recorded.len());
            rec.full = false;
        }
        Ok(report)
    }

    /// Pushes the profile of every root read here since its profile was last pushed (a build
    /// host does, after a build: its steps read their dependencies through the mount). Failures
    /// are logged, not returned: a profile is a hint.
    pub fn push_new_profiles(&self) -> Vec<ProfileReport> {
        let fresh: Vec<Digest> = {
            let rec = self.read.recorder.lock().unwrap();
            rec.roots.iter().filter(|(_, t)| t.order.len() > t.pushed).map(|(d, _)| *d).collect()
        };
        let mut out = Vec::new();
        for tree in fresh {
            match self.push_profile(&tree.to_hex()) {
                Ok(r) => out.push(r),
                Err(e) => tracing::warn!(tree = %tree, "cannot push the profile: {e}"),
            }
        }
        out
    }

    pub fn profile_stats(&self) -> ProfileStats {
        use std::sync::atomic::Ordering::Relaxed;
        let rec = self.read.recorder.lock().unwrap();
        ProfileStats {
            recorded_roots: rec.roots.len() as u64,
            recorded_chunks: rec.total as u64,
            profiles_used: self.read.profiles_used.load(Relaxed),
            prefetch_gets: self.read.profile_gets.load(Relaxed),
            prefetch_bytes: self.read.profile_bytes.load(Relaxed),
        }
    }

    /// Prefetches `tree` on its first lookup here, in the background, if it is small (see
    /// `lazy.rs`); its profile was sent already ([`Store::prefetch_profile`]).
    pub(crate) fn prefetch_root(self: &Arc<Self>, tree: Digest) {
        let Some(remote) = self.remote.as_ref() else { return };
        let store = crate::local::cache::Pending::start(self);
        remote.handle().spawn_blocking(move || store.prefetch_small(tree));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u8) -> Vec<Digest> {
        (0..n).map(|i| Digest(*blake3::hash(&[i]).as_bytes())).collect()
    }

    #[test]
    fn a_profile_round_trips_and_every_damage_is_refused() {
        let tree = Digest([7; 32]);
        let mut p = Profile::new(tree, ids(5));
        let key = SecretKey::generate("host-a").unwrap();
        p.sign(&key);
        let bytes = p.encode();
        assert_eq!(Profile::parse(&bytes), Some(p.clone()));
        // One flipped bit anywhere: refused, or parsed into something whose signature fails.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 1;
            if let Some(q) = Profile::parse(&b) {
                let ok = q.sigs.iter().any(|s| key.public().verifies(&q.statement(&s.key, s.time), s));
                assert!(!ok || q == p, "byte {i}: a damaged profile still carries a good signature");
            }
        }
        // A repeated id, a count that lies, a truncated id list: refused.
        let mut dup = Profile::new(tree, ids(3));
        dup.chunks.push(dup.chunks[0]);
        assert_eq!(Profile::parse(&dup.encode()), None);
        assert_eq!(Profile::parse(&bytes[..bytes.len() - 1]), None);
    }

    #[test]
    fn profiles_are_bounded_in_size() {
        let big: Vec<Digest> =
            (0..MAX_PROFILE_CHUNKS as u32 + 1).map(|i| Digest(*blake3::hash(&i.to_le_bytes()).as_bytes())).collect();
        let over = Profile::new(Digest([1; 32]), big.clone());
        assert_eq!(Profile::parse(&over.encode()), None, "one id over the cap");
        let at = Profile::new(Digest([1; 32]), big[..MAX_PROFILE_CHUNKS].to_vec());
        let enc = at.encode();
        assert!(enc.len() as u64 <= MAX_PROFILE_OBJECT);
        assert_eq!(Profile::parse(&enc).map(|p| p.chunks.len()), Some(MAX_PROFILE_CHUNKS));
        // The recorder stops at its caps.
        let mut r = Recorder::default();
        for c in &big {
            r.touch(&Digest([1; 32]), *c);
        }
        assert_eq!(r.total, MAX_PROFILE_CHUNKS);
        for i in 0..(RECORDED_MAX as u32 + 10) {
            r.touch(&Digest(*blake3::hash(&i.to_be_bytes()).as_bytes()), Digest([2; 32]));
        }
        assert_eq!(r.total, RECORDED_MAX);
        // A root whose chunks are all in S3 makes room for new ones; until then none is kept.
        let late = Digest([3; 32]);
        r.touch(&late, Digest([4; 32]));
        assert!(!r.roots.contains_key(&late));
        r.roots.get_mut(&Digest([1; 32])).unwrap().pushed = MAX_PROFILE_CHUNKS;
        r.full = false;
        r.touch(&late, Digest([4; 32]));
        assert_eq!(r.roots[&late].order, [Digest([4; 32])]);
        assert_eq!(r.total, RECORDED_MAX - MAX_PROFILE_CHUNKS + 1);
    }
}
