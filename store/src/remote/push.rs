//! Push: a root and whatever of its data S3 lacks, up. Idempotent, and safe with many hosts
//! pushing at once: packs and indexes are named by their content, so two hosts pushing the same
//! tree write the same keys.
//!
//! The chunks S3 is not known to have (the `remote` table remembers what was sent or seen) are
//! streamed from the local packs into temporary pack files cut at [`REMOTE_PACK_SIZE`]; three
//! uploader threads send them (multipart, parts in parallel) while the next is written, so disk
//! holds a few packs and memory the parts in flight. Then the index, then the root object.
//! Packs that made it are recorded even when the push fails, so a retry does not resend them.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::error::{Error, IoContext, Result};
use crate::local::index::{Batch, Meta, Place};
use crate::local::pack::{RECORD_HEADER, record_header};
use crate::model::digest::Digest;
use crate::model::records::{FileRecord, Locator, RemoteLocator};
use crate::model::tree::{EntryKind, Tree};
use crate::remote::Remote;
use crate::remote::format::{self, RootObject};
use crate::remote::trust::RootKind;
use crate::store::Store;

/// A push cuts new remote packs past this size: small enough that several upload at once (each
/// as parts in parallel) and that a server without efficient ranged reads (moto) answers a GET
/// quickly; large enough that a GB is a few dozen objects.
pub(crate) const REMOTE_PACK_SIZE: u64 = 32 << 20;
/// Packs a push uploads at once.
const PARALLEL_PACKS: usize = 3;

/// What a push did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushReport {
    pub name: String,
    pub tree: Digest,
    /// True when S3 already had this root with this tree: nothing was sent.
    pub already: bool,
    /// The key this host signed the root object with, if it signs.
    pub signed_by: Option<String>,
    pub chunks: u64,
    pub new_chunks: u64,
    pub uploaded_bytes: u64,
}

/// Every tree, file and chunk reachable from a tree (each once).
pub(crate) struct Closure {
    pub trees: Vec<(Digest, Vec<u8>)>,
    pub files: Vec<(Digest, FileRecord)>,
    pub chunks: Vec<Digest>,
}

/// What [`Store::upload_packs`] did: the chunks now in S3, the bytes sent, the first error.
#[derive(Default)]
pub(crate) struct Uploaded {
    pub placed: Vec<(Digest, RemoteLocator)>,
    pub bytes: u64,
    pub error: Option<Error>,
}

/// Writes the index of closure `c` with chunk places `chunks` (unless S3 has it: it is named by
/// its content). Returns its digest and the bytes sent.
pub(crate) fn put_index(
    remote: &Remote,
    c: &Closure,
    chunks: &[(Digest, RemoteLocator)],
) -> Result<(Digest, u64, u64)> {
    let index = format::encode_index(&c.trees, &c.files, chunks)?;
    let digest = Digest(*blake3::hash(&index).as_bytes());
    let key = format::index_key(&digest);
    let size = index.len() as u64;
    if remote.wait(remote.exists(key.clone()))? {
        return Ok((digest, size, 0));
    }
    remote.wait(remote.put(key, index.into()))?;
    Ok((digest, size, size))
}

impl Store {
    /// Every tree, file record and chunk id reachable from `root`.
    pub(crate) fn closure(&self, root: &Digest) -> Result<Closure> {
        let mut c = Closure { trees: Vec::new(), files: Vec::new(), chunks: Vec::new() };
        let (mut seen_t, mut seen_f, mut seen_c) = (HashSet::new(), HashSet::new(), HashSet::new());
        let mut stack = vec![*root];
        while let Some(t) = stack.pop() {
            if !seen_t.insert(t) {
                continue;
            }
            let bytes = self.index.tree(&t)?.ok_or(Error::Missing { what: "tree", digest: t })?;
            let tree = Tree::decode(&bytes, &t)?;
            c.trees.push((t, bytes));
            for e in tree.entries() {
                match &e.kind {
                    EntryKind::Dir { digest, .. } => stack.push(*digest),
                    EntryKind::File { digest, .. } => {
                        if seen_f.insert(*digest) {
                            let f = self.file(digest)?;
                            for ch in &f.chunks {
                                if seen_c.insert(ch.id) {
                                    c.chunks.push(ch.id);
                                }
                            }
                            c.files.push((*digest, (*f).clone()));
                        }
                    }
                    EntryKind::Symlink { .. } => {}
                }
            }
        }
        Ok(c)
    }

    /// Uploads a root (a root name, an artifact name, or a digest) and whatever of its data S3
    /// lacks. A build result is pushed under its input digest. Idempotent.
    pub fn push(&self, what: &str, progress: &(dyn Fn(u64, u64) + Sync)) -> Result<PushReport> {
        let remote = self.remote_or_err()?;
        let r = self.resolve_local(what)?.ok_or_else(|| Error::UnknownName(what.to_string()))?;
        let (name, tree) = (r.root, r.tree);
        // Kept from gc while its packs are read.
        let _pin = self.pin(&tree)?;
        let mut report = PushReport { name: name.clone(), tree, ..Default::default() };
        let kind = self.kind_of(&name)?;
        let there = self.root_object_in_s3(remote, &name)?;
        match there {
            Some(o) if o.tree == tree => {
                // S3 has it: it only gains this host's signature.
                report.already = true;
                report.signed_by = self.add_signature(remote, &name, kind, o)?;
                return Ok(report);
            }
            Some(o) => self.may_replace(remote, &name, kind, &o)?,
            None => {}
        }
        let c = self.closure(&tree)?;
        report.chunks = c.chunks.len() as u64;
        // Only places this host uploaded or checked are named in the index it writes: a place
        // that another host's index claims may be wrong, and the bytes here are the truth. A
        // chunk with neither a checked place nor local bytes is fetched (and checked) first.
        let unchecked = |id: &Digest| -> Result<bool> {
            Ok(!self.index.has_chunk(id)? && !self.remote_place(id)?.is_some_and(|p| p.state == Place::Verified))
        };
        if c.chunks.iter().try_fold(false, |any, id| Ok::<_, Error>(any || unchecked(id)?))? {
            self.pull(&tree.to_hex(), &|_, _| {})?;
        }
        let mut locs: HashMap<Digest, RemoteLocator> = HashMap::new();
        let mut new = Vec::new();
        for id in &c.chunks {
            match self.remote_place(id)? {
                Some(p) if p.state == Place::Verified => drop(locs.insert(*id, p.loc)),
                _ => new.push((*id, self.index.locator(id)?.ok_or(Error::Missing { what: "chunk", digest: *id })?)),
            }
        }
        report.new_chunks = new.len() as u64;
        let uploaded = self.upload_packs(remote, &tree, &new, progress);
        let mut batch = Batch::default();
        for (id, rl) in &uploaded.placed {
            batch.put_remote(id, rl, Place::Verified);
            locs.insert(*id, *rl);
        }
        report.uploaded_bytes = uploaded.bytes;
        if let Some(e) = uploaded.error {
            self.commit(batch)?;
            return Err(e);
        }
        let chunks: Vec<(Digest, RemoteLocator)> = c
            .chunks
            .iter()
            .map(|id| {
                locs.get(id).map(|l| (*id, *l)).ok_or(Error::Missing { what: "chunk's place in S3", digest: *id })
            })
            .collect::<Result<_>>()?;
        let (index_digest, index_size, sent) = put_index(remote, &c, &chunks)?;
        let object = || RootObject { index_size: Some(index_size), ..RootObject::new(kind, tree, index_digest) };
        report.uploaded_bytes += sent;
        // A named root is also findable by its tree digest, which is what the mount shows. That
        // object must name its own tree: one naming another is replaced.
        if kind == RootKind::Root && name.parse::<Digest>().is_err() {
            let alias = tree.to_hex();
            match self.root_object_in_s3(remote, &alias)?.filter(|o| o.tree == tree) {
                Some(o) => drop(self.add_signature(remote, &alias, kind, o)?),
                None => self.put_root_object(remote, &alias, object())?,
            }
        }
        self.put_root_object(remote, &name, object())?;
        report.signed_by = self.opts.trust.signer.as_ref().map(|k| k.name.clone());
        batch.put_meta(Meta::AppliedIndex(&index_digest), b"");
        self.commit(batch)?;
        Ok(report)
    }

    /// What a root name stands for: a build result (named by an input digest whose recipe is
    /// here) or a root.
    pub(crate) fn kind_of(&self, name: &str) -> Result<RootKind> {
        let result = match name.parse::<Digest>() {
            Ok(d) => self.index.meta(Meta::Recipe(&d))?.is_some(),
            Err(_) => false,
        };
        Ok(if result { RootKind::Result } else { RootKind::Root })
    }

    /// The root object S3 has for `name`, if any (one that is not a root object is as good as
    /// none: it is replaced).
    pub(crate) fn root_object_in_s3(&self, remote: &Remote, name: &str) -> Result<Option<RootObject>> {
        let there = remote.wait(remote.get(format::root_key(name), format::MAX_ROOT_OBJECT))?;
        Ok(there.and_then(|o| RootObject::parse(&o)))
    }

    /// Signs `obj` as `name` with this host's key, if it has one, and writes it.
    fn put_root_object(&self, remote: &Remote, name: &str, mut obj: RootObject) -> Result<()> {
        if let Some(k) = &self.opts.trust.signer {
            obj.sign(name, k);
        }
        remote.wait(remote.put(format::root_key(name), Bytes::from(obj.encode())))
    }

    /// Adds this host's signature to the object S3 has for `name` (which names the tree this
    /// host has), keeping the others'. Returns the key when it signed.
    fn add_signature(
        &self,
        remote: &Remote,
        name: &str,
        kind: RootKind,
        mut obj: RootObject,
    ) -> Result<Option<String>> {
        let Some(k) = &self.opts.trust.signer else { return Ok(None) };
        let own = k.public();
        if obj.sigs.iter().any(|s| own.verifies(&obj.statement(name, &s.key, s.time), s)) {
            return Ok(Some(k.name.clone()));
        }
        // A v2 object carries no kind; the one this host knows is written.
        obj.kind.get_or_insert(kind);
        self.put_root_object(remote, name, obj)?;
        Ok(Some(k.name.clone()))
    }

    /// Whether a push may replace `there`, the object S3 has for `name`, which names another
    /// tree: when it is unsigned, or when none of its signatures is by a key this host's
    /// trusted-keys accept (and it has some), or, for a root (not a build result), when this
    /// host signs the new one. A result signed by a trusted builder is never replaced by an
    /// untrusted one, nor by another host's different build of the same recipe.
    fn may_replace(&self, remote: &Remote, name: &str, kind: RootKind, there: &RootObject) -> Result<()> {
        let trust = &self.opts.trust;
        let trusted = trust.explicitly_trusts(&there.sigs, |k, t| there.statement(name, k, t));
        if there.sigs.is_empty()
            || (!trust.trusted.is_empty() && !trusted)
            || (kind == RootKind::Root && trust.signer.is_some())
        {
            return Ok(());
        }
        let keys: Vec<&str> = there.sigs.iter().map(|s| s.key.as_str()).collect();
        Err(Error::Kept {
            url: format!("{}/{}", remote.url(), format::root_key(name)),
            there: there.tree,
            why: format!("signed by {}", keys.join(", ")),
        })
    }

    /// Writes `chunks` into packs of about [`REMOTE_PACK_SIZE`], each staged in a temporary file
    /// (named by its BLAKE3, so identical packs from two hosts are one object) and uploaded by
    /// one of [`PARALLEL_PACKS`] threads while the next is written. Stops at the first error.
    pub(crate) fn upload_packs(
        &self,
        remote: &Remote,
        tree: &Digest,
        chunks: &[(Digest, Locator)],
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Uploaded {
        struct Staged {
            tmp: std::path::PathBuf,
            digest: Digest,
            len: u64,
            placed: Vec<(Digest, RemoteLocator)>,
        }
        let total: u64 = chunks.iter().map(|(_, l)| RECORD_HEADER + u64::from(l.stored_len)).sum();
        let done = AtomicU64::new(0);
        let out = Mutex::new(Uploaded::default());
        let fail = |e: Error| {
            out.lock().unwrap().error.get_or_insert(e);
        };
        let failed = || out.lock().unwrap().error.is_some();
        let tmp_dir = self.dir().join("tmp");
        if let Err(e) = std::fs::create_dir_all(&tmp_dir).at(&tmp_dir) {
            fail(e);
        }
        let upload = |p: Staged| {
            let key = format::pack_key(&p.digest);
            let r = if failed() {
                Ok(())
            } else {
                remote.wait(remote.exists(key.clone())).and_then(|there| {
                    if !there {
                        remote.wait(remote.put_file(key, p.tmp.clone()))?;
                        out.lock().unwrap().bytes += p.len;
                    }
                    Ok(())
                })
            };
            let _ = std::fs::remove_file(&p.tmp);
            match r {
                Ok(()) if !failed() => {
                    out.lock().unwrap().placed.extend(p.placed);
                    progress(done.fetch_add(p.len, Ordering::SeqCst) + p.len, total);
                }
                Ok(()) => {}
                Err(e) => fail(e),
            }
        };
        std::thread::scope(|s| {
            let (tx, rx) = crossbeam_channel::bounded::<Staged>(1);
            for _ in 0..PARALLEL_PACKS {
                let (rx, upload) = (rx.clone(), &upload);
                s.spawn(move || rx.into_iter().for_each(upload));
            }
            let mut staged = 0u32;
            let mut chunks = chunks.iter().peekable();
            while chunks.peek().is_some() && !failed() {
                let tmp = tmp_dir.join(format!("push-{}-{}-{staged}.pack", std::process::id(), tree.short()));
                staged += 1;
                let r = (|| -> Result<Staged> {
                    let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp).at(&tmp)?);
                    let mut h = blake3::Hasher::new();
                    let (mut offset, mut placed) = (0u64, Vec::new());
                    while offset < REMOTE_PACK_SIZE
                        && let Some((id, loc)) = chunks.next()
                    {
                        let stored = self.packs.read_stored(id, loc)?;
                        let header = record_header(id, loc.raw_len, loc.stored_len, loc.codec);
                        for part in [&header[..], &stored[..]] {
                            w.write_all(part).at(&tmp)?;
                            h.update(part);
                        }
                        placed.push((*id, offset + RECORD_HEADER, *loc));
                        offset += RECORD_HEADER + stored.len() as u64;
                    }
                    w.flush().at(&tmp)?;
                    let digest = Digest(*h.finalize().as_bytes());
                    let placed = placed.into_iter().map(|(id, off, l)| (id, l.moved(digest, off))).collect();
                    Ok(Staged { tmp: tmp.clone(), digest, len: offset, placed })
                })();
                match r {
                    Ok(p) => {
                        if let Err(crossbeam_channel::SendError(p)) = tx.send(p) {
                            let _ = std::fs::remove_file(&p.tmp);
                        }
                    }
                    Err(e) => {
                        let _ = std::fs::remove_file(&tmp);
                        fail(e);
                    }
                }
            }
        });
        out.into_inner().unwrap()
    }
}
