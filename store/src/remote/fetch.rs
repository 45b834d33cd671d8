//! Lazy: a host that has never seen an artifact finds its root in S3 (metadata only, verified);
//! its chunks are fetched when first read (`lazy.rs`), or all at once by a pull (`pull.rs`),
//! verified, kept on disk in a "fetched" pack and indexed.
//!
//! A root is recorded only once its whole closure is known and checked: the root object names
//! a tree and an index; the index's bytes must hash to its name, every tree and file record in
//! it to its digest, and every tree, file and chunk the root reaches must be in the index or
//! already here. Only then are the root and its metadata committed, in one batch.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Error, RemoteError, Result};
use crate::local::index::{Batch, Meta, Place, RemotePlace};
use crate::local::pack::{PackWriter, decode_chunk};
use crate::model::digest::Digest;
use crate::model::records::{FileRecord, RemoteLocator};
use crate::model::tree::{EntryKind, Tree};
use crate::remote::Remote;
use crate::remote::format::{self, IndexEntry, RootObject};
use crate::remote::trust::{RootKind, Sig};
use crate::store::{Resolved, Store};

/// One ranged GET of a pull: chunks of one remote pack, back to back, in offset order.
pub(crate) struct Run {
    pub chunks: Vec<(Digest, RemoteLocator)>,
}

impl Run {
    pub fn pack(&self) -> Digest {
        self.chunks[0].1.pack
    }

    pub fn range(&self) -> std::ops::Range<u64> {
        let start = self.chunks[0].1.offset;
        // Offsets only grow along a run, but lengths vary: the end is the furthest.
        let end = self.chunks.iter().map(|(_, r)| r.offset + u64::from(r.stored_len)).max().unwrap_or(start);
        start..end
    }
}

/// What S3 holds for a root name: its root object and, unless the tree is here, its index.
pub(crate) struct RemoteRoot {
    name: String,
    found: Found,
    index: Option<Bytes>,
}

/// A root object as S3 gave it.
pub(crate) struct Found {
    pub root: RootObject,
    /// Its bytes, kept with the root (`verify` checks its signatures again).
    pub bytes: Bytes,
    pub url: String,
}

/// Fetches and parses `roots/<name>`.
async fn fetch_root_object(remote: Remote, name: String) -> Result<Option<Found>> {
    let key = format::root_key(&name);
    let Some(bytes) = remote.get(key.clone(), format::MAX_ROOT_OBJECT).await? else { return Ok(None) };
    let url = format!("{}/{key}", remote.url());
    match RootObject::parse(&bytes) {
        Some(root) => Ok(Some(Found { root, bytes, url })),
        None => Err(Error::BadRemoteObject { url, what: "root object" }),
    }
}

/// An index whose size the root object gives is fetched in ranges of about this size, at most
/// [`INDEX_GETS`] at once (a toolchain's 7.7 MB index: 8 GETs, one round trip and an eighth of
/// the transfer, instead of one round trip and all of it).
const INDEX_PIECE: u64 = 1 << 20;
const INDEX_GETS: u64 = 8;

/// Fetches the index `digest`, checked against its name: in parallel ranges when its root
/// object gives its `size` (and, should that size be wrong, again in one GET).
pub(crate) async fn fetch_index(remote: Remote, digest: Digest, size: Option<u64>) -> Result<Bytes> {
    let key = format::index_key(&digest);
    let matches = |b: &Bytes| Digest(*blake3::hash(b).as_bytes()) == digest;
    if let Some(n) = size.filter(|n| *n > 2 * INDEX_PIECE && *n <= format::MAX_INDEX_OBJECT) {
        let parts = n.div_ceil(INDEX_PIECE).min(INDEX_GETS);
        let step = n.div_ceil(parts);
        let gets: Vec<_> = (0..parts)
            .map(|i| remote.handle().spawn(remote.get_range(key.clone(), i * step..((i + 1) * step).min(n))))
            .collect();
        let mut out = bytes::BytesMut::with_capacity(n as usize);
        let mut failed = None;
        for g in gets {
            match g.await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())) {
                Ok(b) => out.extend_from_slice(&b),
                Err(e) => drop(failed.get_or_insert(e)),
            }
        }
        let out = out.freeze();
        match failed {
            None if matches(&out) => return Ok(out),
            None => tracing::debug!(index = %digest, "the index's size in its root object is wrong"),
            Some(e) => tracing::debug!(index = %digest, "fetching the index in ranges failed: {e}"),
        }
    }
    let bytes = remote.get(key.clone(), format::MAX_INDEX_OBJECT).await?.ok_or_else(|| Error::Remote {
        url: format!("{}/{key}", remote.url()),
        source: crate::error::RemoteError::NotFound,
    })?;
    if !matches(&bytes) {
        return Err(Error::Corrupt { what: "remote index", digest, detail: "content does not match its name".into() });
    }
    Ok(bytes)
}

impl Store {
    /// Looks `name` up in S3 (blocking): if a root of that name is there, its metadata is
    /// fetched, checked and recorded here (no data).
    pub fn resolve_remote(&self, name: &str) -> Result<Option<Resolved>> {
        let remote = self.remote_or_err()?;
        let Some(found) = remote.wait(fetch_root_object(remote.clone(), name.to_string()))? else { return Ok(None) };
        self.check_root(name, &found.root, &found.url)?;
        let index = match self.knows(&found.root)? {
            true => None,
            false => Some(remote.wait(fetch_index(remote.clone(), found.root.index, found.root.index_size))?),
        };
        self.record_remote_root(RemoteRoot { name: name.to_string(), found, index }, |_| {}).map(Some)
    }

    /// [`Store::resolve_remote`] on the I/O runtime (the mount's lookups must not block).
    pub async fn resolve_remote_async(self: Arc<Self>, name: String) -> Result<Option<Resolved>> {
        let remote = self.remote_or_err()?.clone();
        let t = std::time::Instant::now();
        // The index comes next (the mount asks for names not here), in parallel ranges: the
        // connections they need are opened now, in the root object's round trip (a HEAD
        // each), not one handshake after it.
        for _ in 1..INDEX_GETS {
            remote.handle().spawn(remote.exists(format::root_key(&name)));
        }
        let Some(found) = fetch_root_object(remote.clone(), name.clone()).await? else { return Ok(None) };
        self.check_root(&name, &found.root, &found.url)?;
        let root_ms = t.elapsed().as_millis();
        // The profile comes with the index, in parallel: no round trip more before the first
        // read, and the lookup does not wait for it.
        let mut profile = remote.handle().spawn(crate::remote::profile::fetch_profile(
            remote.clone(),
            found.root.tree,
            self.opts.trust.clone(),
        ));
        let index = match self.knows(&found.root)? {
            true => None,
            false => Some(fetch_index(remote, found.root.index, found.root.index_size).await?),
        };
        let index_ms = t.elapsed().as_millis();
        // The profile's GET is small and started first: done by now, or used when it lands.
        let (profile, late) = match tokio::time::timeout(std::time::Duration::from_millis(50), &mut profile).await {
            Ok(p) => (p.ok().flatten(), None),
            Err(_) => (None, Some(profile)),
        };
        let store = self.clone();
        let tree = found.root.tree;
        let r = tokio::task::spawn_blocking(move || {
            let early = store.clone();
            // The hot chunks are sent as soon as the index says where they are: they arrive
            // while the closure is recorded.
            let used = std::cell::Cell::new(false);
            let r = store.record_remote_root(RemoteRoot { name, found, index }, |places| {
                if let Some(p) = &profile {
                    early.prefetch_profile(tree, p, Some(places));
                    used.set(true);
                }
            });
            if !used.get()
                && let Some(p) = &profile
            {
                store.prefetch_profile(tree, p, None);
            }
            r
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        tracing::debug!(tree = %r.tree, root_ms, index_ms, recorded_ms = t.elapsed().as_millis(), "looked up in S3");
        if let Some(late) = late {
            let store = crate::local::cache::Pending::start(&self);
            self.remote_or_err()?.handle().spawn(async move {
                if let Ok(Some(p)) = late.await {
                    let s = store.clone();
                    let _ = tokio::task::spawn_blocking(move || s.prefetch_profile(tree, &p, None)).await;
                }
            });
        }
        self.prefetch_root(r.tree);
        if self.opts.fill {
            self.fill_root(r.tree);
        }
        Ok(Some(r))
    }

    /// Whether a root object's tree is here and its index's chunk places are recorded (if not,
    /// the index is fetched: it may know places of chunks that are not here).
    fn knows(&self, root: &RootObject) -> Result<bool> {
        Ok(self.index.has_tree(&root.tree)? && self.index.meta(Meta::AppliedIndex(&root.index))?.is_some())
    }

    /// Whether the root object found in S3 under `name` may be used here: a root named by a tree
    /// digest names that tree, and, when signatures are required, an accepted key signed what
    /// the object says under this name. Returns the accepted signature, if any.
    pub fn check_root(&self, name: &str, root: &RootObject, url: &str) -> Result<Option<Sig>> {
        let trust = &self.opts.trust;
        let refuse = |detail: String| Error::Untrusted { url: url.to_string(), detail, keys: trust.key_names() };
        if root.kind == Some(RootKind::Root)
            && let Ok(d) = name.parse::<Digest>()
            && d != root.tree
        {
            return Err(refuse(format!("a root named by tree {d} names tree {}", root.tree)));
        }
        let signer = trust.trusted_signer(&root.sigs, |k, t| root.statement(name, k, t));
        if signer.is_none() && trust.required() {
            let detail = match root.sigs.is_empty() {
                true => "not signed".to_string(),
                false => {
                    let keys: Vec<&str> = root.sigs.iter().map(|s| s.key.as_str()).collect();
                    format!("no accepted signature for this name and tree (signed by {})", keys.join(", "))
                }
            };
            return Err(refuse(detail));
        }
        Ok(signer.cloned())
    }

    /// The accepted signature on the root object root `name` was found in S3 by, if it still
    /// names the tree the root names here.
    pub fn signer(&self, name: &str) -> Result<Option<Sig>> {
        let Some(root) = self.root_object(name)? else { return Ok(None) };
        Ok(self.opts.trust.trusted_signer(&root.sigs, |k, t| root.statement(name, k, t)).cloned())
    }

    /// Every root found in S3 (that still names what S3 said), with its accepted signature.
    pub fn roots_from_s3(&self) -> Result<Vec<(String, Digest, Option<Sig>)>> {
        let mut out = Vec::new();
        for (name, tree) in self.index.roots()? {
            if self.root_object(&name)?.is_some() {
                let sig = self.signer(&name)?;
                out.push((name, tree, sig));
            }
        }
        Ok(out)
    }

    /// The keys this store signs with and trusts.
    pub fn trust(&self) -> &crate::remote::trust::Trust {
        &self.opts.trust
    }

    /// The root object root `name` was found in S3 by, if it still names the root's tree.
    pub(crate) fn root_object(&self, name: &str) -> Result<Option<RootObject>> {
        let (Some(bytes), Some(tree)) = (self.index.meta(Meta::RootObject(name))?, self.index.root(name)?) else {
            return Ok(None);
        };
        Ok(RootObject::parse(&bytes).filter(|r| r.tree == tree))
    }

    /// Checks a root fetched from S3 and records it with its metadata, in one commit.
    /// `decoded` is called with the chunk places of the index once it is decoded (not when the
    /// index was not fetched), before the closure is checked and recorded.
    fn record_remote_root(
        &self,
        r: RemoteRoot,
        decoded: impl FnOnce(&HashMap<Digest, RemoteLocator>),
    ) -> Result<Resolved> {
        let _span = tracing::debug_span!("record_remote_root", name = r.name).entered();
        let root = &r.found.root;
        // From "is this tree/file here?" to the commit: gc must not remove what is reused.
        let _writer = self.gc_lock.read().unwrap();
        let t0 = std::time::Instant::now();
        let mut batch = Batch::default();
        if let Some(bytes) = &r.index {
            let mut trees: HashMap<Digest, Vec<u8>> = HashMap::new();
            let mut files: HashMap<Digest, Vec<u8>> = HashMap::new();
            let mut places: HashMap<Digest, RemoteLocator> = HashMap::new();
            format::decode_index(bytes, &root.index, |e| {
                match e {
                    IndexEntry::Tree(d, b) => drop(trees.insert(d, b)),
                    IndexEntry::File(d, b) => drop(files.insert(d, b)),
                    IndexEntry::Chunk(id, l) => drop(places.insert(id, l)),
                }
                Ok(())
            })?;
            decoded(&places);
            let t_decoded = t0.elapsed().as_millis();
            let lacks = |what: &'static str, digest: Digest| Error::Corrupt {
                what: "remote index",
                digest: root.index,
                detail: format!("it lacks {what} {digest} of root {}", r.name),
            };
            // The closure, walked from the root: every tree, file and chunk must be in the index
            // or here. The index adds places for the chunks of this closure only, and never
            // replaces a place already known. Records the index has are written whether or not
            // they are here (the same digest is the same bytes): no read to ask.
            let mut trees_batch = Batch::default();
            let mut stack = vec![root.tree];
            let mut seen = std::collections::HashSet::new();
            let mut file_digests = Vec::new();
            while let Some(t) = stack.pop() {
                if !seen.insert(t) {
                    continue;
                }
                let enc = match trees.remove(&t) {
                    Some(enc) => {
                        trees_batch.put_tree(&t, &enc);
                        enc
                    }
                    None => self.index.tree(&t)?.ok_or_else(|| lacks("tree", t))?,
                };
                for e in Tree::decode(&enc, &t)?.entries() {
                    match &e.kind {
                        EntryKind::Dir { digest, .. } => stack.push(*digest),
                        EntryKind::File { digest, .. } if seen.insert(*digest) => file_digests.push(*digest),
                        _ => {}
                    }
                }
            }
            // The file records and their chunks' places, on every core (a toolchain has 50k).
            use rayon::prelude::*;
            let t_walked = t0.elapsed().as_millis();
            let mut parts = file_digests
                .par_chunks(4096)
                .map(|ds| {
                    let mut b = Batch::default();
                    for d in ds {
                        let record = match files.get(d) {
                            // Checked against its digest as the index was decoded.
                            Some(enc) => {
                                b.put_file(d, enc);
                                FileRecord::decode_checked(enc, d)?
                            }
                            None => FileRecord::decode(&self.index.file(d)?.ok_or_else(|| lacks("file", *d))?, d)?,
                        };
                        for c in record.chunks {
                            match places.get(&c.id) {
                                Some(l) if self.index.has_remote_place(&c.id, &l.pack)? => {}
                                Some(l) => b.put_remote(&c.id, l, Place::Unchecked),
                                None if self.index.has_chunk(&c.id)? || self.index.remote_place(&c.id)?.is_some() => {}
                                None => return Err(lacks("the place of chunk", c.id)),
                            }
                        }
                    }
                    Ok(b)
                })
                .collect::<Result<Vec<Batch>>>()?;
            // Written in parts at once, unsynced (what S3 said is a cache here), before the root
            // that makes them reachable: a crash between leaves records no root reaches (gc
            // drops them) and no applied index (the next lookup fetches it again).
            parts.push(trees_batch);
            let t_files = t0.elapsed().as_millis();
            parts.into_par_iter().try_for_each(|b| self.index.commit_with(b, false))?;
            tracing::debug!(t_decoded, t_walked, t_files, t_committed = t0.elapsed().as_millis(), "recorded");
            batch.put_meta(Meta::AppliedIndex(&root.index), b"");
        } else if !self.index.has_tree(&root.tree)? {
            // Went away (gc) between the question and now: the next lookup fetches the index.
            return Err(Error::Missing { what: "tree", digest: root.tree });
        }
        self.put_root(&mut batch, &r.name, &root.tree)?;
        batch.put_meta(Meta::RootObject(&r.name), &r.found.bytes);
        // Unsynced: what S3 said is a cache here. A crash of the host may lose it (whole, with
        // the places of chunks fetched since), and the next lookup asks S3 again.
        self.index.commit_with(batch, false)?;
        let signer = self.opts.trust.trusted_signer(&root.sigs, |k, t| root.statement(&r.name, k, t));
        tracing::info!(name = r.name, tree = %root.tree, signer = signer.map(|s| s.key.as_str()), "found in S3");
        Ok(Resolved { root: r.name, tree: root.tree, remote: true })
    }

    /// Where a chunk is in S3, if known: a place this host verified if there is one.
    pub(crate) fn remote_place(&self, id: &Digest) -> Result<Option<RemotePlace>> {
        self.index.remote_place(id)
    }

    /// Marks the place of chunk `id` in `pack` wrong: what it gave was wrong or missing. The
    /// next read of the chunk tries its next place, if any.
    pub(crate) fn forget_place(&self, id: &Digest, pack: &Digest, why: &Error) -> Result<()> {
        let mut batch = Batch::default();
        for p in self.index.remote_places(id)?.iter().filter(|p| p.loc.pack == *pack && p.state != Place::Wrong) {
            batch.wrong_remote(id, p);
        }
        if !batch.is_empty() {
            tracing::warn!(chunk = %id, pack = %pack, "a place of a chunk in S3 is wrong, not used again: {why}");
        }
        self.commit(batch)
    }

    /// The place to fetch chunk `id` from: `None` when S3 has none, an error when every place
    /// known was wrong.
    pub(crate) fn place_to_fetch(&self, id: &Digest) -> Result<Option<RemotePlace>> {
        let places = self.index.remote_places(id)?;
        match places.first() {
            Some(p) if p.state == Place::Wrong => Err(Error::Corrupt {
                what: "chunk",
                digest: *id,
                detail: format!(
                    "where S3 has it gave wrong bytes or is missing (S3 pack {} at {}{})",
                    p.loc.pack,
                    p.loc.offset,
                    match places.len() {
                        1 => String::new(),
                        n => format!(", and {} more places", n - 1),
                    }
                ),
            }),
            p => Ok(p.copied()),
        }
    }

    /// A GET of a run failed. When S3 says the pack is not there, or shorter than the index
    /// says, or not what its name says, the run's places are wrong and are forgotten.
    pub(crate) fn missing_pack(&self, run: &Run, e: Error) -> Error {
        let wrong = matches!(
            &e,
            Error::Remote { source: RemoteError::NotFound | RemoteError::ShortRead { .. }, .. }
                | Error::Corrupt { what: "pack", .. }
        );
        if wrong {
            for (id, _) in &run.chunks {
                if let Err(f) = self.forget_place(id, &run.pack(), &e) {
                    return f;
                }
            }
        }
        e
    }

    /// Verifies the chunks of a fetched run, keeps the good ones on disk and in memory, and
    /// returns the first (the one asked for). A damaged chunk after the first is only left out.
    /// The place of a damaged chunk is forgotten (its next place, if any, is tried next time).
    /// `held`: the caller is a pull, holding `gc_lock` shared already.
    pub(crate) fn accept_run(&self, run: &Run, bytes: Bytes, held: bool) -> Result<Bytes> {
        let start = run.range().start;
        let mut good = Vec::with_capacity(run.chunks.len());
        let mut first = None;
        for (n, (id, rl)) in run.chunks.iter().enumerate() {
            let at = (rl.offset - start) as usize;
            let stored = bytes.slice(at..at + rl.stored_len as usize);
            let place = || format!("fetched from S3 pack {} at {}", rl.pack, rl.offset);
            match decode_chunk(id, rl, stored.clone(), &place) {
                Ok(data) => {
                    if n == 0 {
                        first = Some(data);
                    } else {
                        self.chunks.insert(*id, data);
                    }
                    good.push((*id, *rl, stored));
                }
                Err(e) => {
                    self.forget_place(id, &rl.pack, &e)?;
                    if n == 0 {
                        return Err(e);
                    }
                }
            }
        }
        match self.keep_fetched(&good, held, true) {
            // A pull exists to keep the data: its failure is the pull's.
            Err(e) if held => return Err(e),
            // A read has its bytes whether or not they could be kept (a full disk, say).
            Err(e) => tracing::warn!("cannot keep chunks fetched from S3 on disk (they are served anyway): {e}"),
            Ok(()) => {}
        }
        Ok(first.expect("the first chunk was checked"))
    }

    /// Appends chunks fetched from S3 to the open fetch pack and indexes them in one commit:
    /// verified ones (`checked`), or ones a read checks when it first reads them.
    pub(crate) fn keep_fetched(
        &self,
        chunks: &[(Digest, RemoteLocator, Bytes)],
        held: bool,
        checked: bool,
    ) -> Result<()> {
        // While gc runs, fetched chunks are served from memory but not kept on disk: a read
        // never waits for a gc. A caller already holding the lock (pull) says so: a second
        // shared lock could fail while gc waits for the first.
        let _writer = match held {
            true => None,
            false => match self.gc_lock.try_read() {
                Ok(g) => Some(g),
                Err(_) => return Ok(()),
            },
        };
        let mut slot = self.fetched.pack.lock().unwrap();
        let mut batch = Batch::default();
        for (id, rl, stored) in chunks {
            if slot.is_none() {
                let pid = self.alloc_pack_id();
                let w = PackWriter::create(&self.packs_dir, pid)?;
                // Named in the index at once, so that opening the store keeps it.
                let mut b = Batch::default();
                b.put_fetched_pack(pid);
                self.commit(b)?;
                *slot = Some(w);
            }
            let w = slot.as_mut().expect("just opened");
            let loc = w.append(id, rl.raw_len, rl.codec, stored)?;
            batch.put_locator(id, &loc);
            // The place gave the right bytes: a push may now name it. Bytes kept unchecked are
            // checked when read, like every chunk read from a pack; their place stays as it was.
            if checked {
                batch.put_remote(id, rl, Place::Verified);
            }
            self.fetched.touch_new(w.id());
        }
        let full = slot.as_ref().is_some_and(|w| w.len() >= self.fetch_pack_size());
        if let Some(w) = slot.as_mut() {
            w.flush()?;
        }
        if full {
            let (pid, info) = slot.take().expect("open").seal()?;
            batch.put_pack(pid, &info);
        }
        drop(slot);
        // Not synced (but for a sealed pack): this is a cache. A crash may lose the entries, or
        // keep entries whose bytes never reached the disk; those fail verification when read
        // and are fetched again. Syncing would cost a WAL fsync per lazy read.
        self.index.commit_with(batch, full)?;
        if full {
            self.evict()?;
        }
        Ok(())
    }
}
