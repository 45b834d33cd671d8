//! The store and S3: push, lazy lookup of remote roots, fetching chunks on read, pull, the
//! cache budget (eviction) and garbage collection.
//!
//! Objects under the prefix, all immutable and content-addressed except root names:
//!
//! ```text
//! packs/<hex>    chunk records exactly as in local packs (header + stored bytes); <hex> is the
//!                BLAKE3 of the object, so two stores pushing the same chunks write the same key
//! indexes/<hex>  zstd of: every tree and file record of one root's closure, and for every chunk
//!                its place (pack, offset, stored/raw length, codec); <hex> = BLAKE3 of the object
//! roots/<name>   "vorpalfs root v2\ntree <hex>\nindex <hex>\n"; build results are roots named
//!                by their input digest
//! ```
//! A host that has never seen an artifact reads its root object and its index (metadata only,
//! verified: the index by its digest, each tree by its own) and records them locally; the
//! artifact then appears in the mount, and each chunk is fetched by a ranged GET of its pack
//! when first read, verified, appended to a local "fetched" pack and indexed. Fetched packs are
//! the cache: past the byte budget the least recently read ones are evicted (their chunks stay
//! known in S3); data ingested here (pinned by its roots) is never evicted.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::digest::{Digest, Kind};
use crate::error::{Error, IoContext, Result};
use crate::index::{Batch, Cf};
use crate::pack::{PACK_HEADER, PackWriter, RECORD_HEADER, decode_chunk, record_header};
use crate::records::{ChunkRef, Codec, FileRecord, Locator, PackInfo};
use crate::remote::Remote;
use crate::store::Store;
use crate::tree::{EntryKind, Tree};

const INDEX_MAGIC: &[u8; 8] = b"VPFSIDX1";
/// Fetched packs are cut at this size (or an eighth of the cache budget, at least 1 MiB): the
/// unit of eviction.
const FETCH_PACK_SIZE: u64 = 16 << 20;
/// The largest chunk (the chunker's maximum).
const MAX_CHUNK: u64 = 4 << 20;
/// A push cuts new remote packs past this size: small enough that several upload at once (each
/// as parts in parallel) and that a server without efficient ranged reads (moto) answers a GET
/// quickly; large enough that a GB is a few dozen objects.
const REMOTE_PACK_SIZE: u64 = 32 << 20;
/// Packs a push uploads at once.
const PARALLEL_PACKS: usize = 3;
/// A read that misses fetches up to this many bytes of the file's following chunks in the same
/// GET when they sit next to it in the remote pack (a sequential read then costs one GET per
/// READAHEAD bytes, not one per chunk).
const READAHEAD: u64 = 8 << 20;
/// A pull coalesces neighbouring chunks of a pack into ranged GETs of up to this size.
const PULL_RANGE: u64 = 16 << 20;
/// Ranged GETs a pull has in flight (each verified on its own thread while others download).
const PARALLEL_GETS: usize = 4;
const FETCHED: &[u8] = b"fetched-pack:";

/// Where a chunk is in S3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteLocator {
    pub pack: Digest,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub codec: Codec,
}

impl RemoteLocator {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(49);
        v.extend_from_slice(self.pack.as_bytes());
        v.extend_from_slice(&self.offset.to_le_bytes());
        v.extend_from_slice(&self.stored_len.to_le_bytes());
        v.extend_from_slice(&self.raw_len.to_le_bytes());
        v.push(self.codec as u8);
        v
    }

    fn decode(b: &[u8]) -> Option<RemoteLocator> {
        if b.len() != 49 {
            return None;
        }
        Some(RemoteLocator {
            pack: Digest::from_slice(&b[..32])?,
            offset: u64::from_le_bytes(b[32..40].try_into().ok()?),
            stored_len: u32::from_le_bytes(b[40..44].try_into().ok()?),
            raw_len: u32::from_le_bytes(b[44..48].try_into().ok()?),
            codec: Codec::from_u8(b[48])?,
        })
    }

    fn local(&self, pack: u64, offset: u64) -> Locator {
        Locator { pack, offset, stored_len: self.stored_len, raw_len: self.raw_len, codec: self.codec }
    }
}

/// What a push did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushReport {
    pub name: String,
    pub tree: Digest,
    /// True when S3 already had this root with this tree: nothing was sent.
    pub already: bool,
    pub chunks: u64,
    pub new_chunks: u64,
    pub uploaded_bytes: u64,
}

/// What a pull did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PullReport {
    pub tree: Digest,
    pub chunks: u64,
    pub fetched_chunks: u64,
    pub fetched_bytes: u64,
}

/// What a garbage collection freed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub packs_removed: u64,
    pub bytes_freed: u64,
    pub chunks_dropped: u64,
    pub files_dropped: u64,
    pub trees_dropped: u64,
}

/// State of the store's side of S3: the open fetch pack and read recency of fetched packs.
#[derive(Default)]
pub(crate) struct SyncState {
    fetch_pack: Mutex<Option<PackWriter>>,
    /// Last read of each fetched pack, in memory only (never a write on the read path).
    recency: Mutex<HashMap<u64, Instant>>,
    last_offline_log: Mutex<Option<Instant>>,
}

/// What [`Store::upload_packs`] did: the chunks now in S3, the bytes sent, the first error.
#[derive(Default)]
struct Uploaded {
    placed: Vec<(Digest, RemoteLocator)>,
    bytes: u64,
    error: Option<Error>,
}

struct Closure {
    trees: Vec<(Digest, Vec<u8>)>,
    files: Vec<(Digest, FileRecord)>,
    chunks: Vec<Digest>,
}

impl Store {
    fn remote_or_err(&self) -> Result<&Remote> {
        self.remote.as_ref().ok_or_else(|| Error::Invalid("no S3 location is configured (--s3 or VORPALFS_S3)".into()))
    }

    /// Whether an S3 location is configured.
    pub fn has_remote(&self) -> bool {
        self.remote.is_some()
    }

    pub fn remote(&self) -> Option<&Remote> {
        self.remote.as_ref()
    }

    fn remote_locator(&self, id: &Digest) -> Result<Option<RemoteLocator>> {
        Ok(self.index.get(Cf::Remote, id.as_bytes())?.and_then(|v| RemoteLocator::decode(&v)))
    }

    /// Every tree, file and chunk reachable from a tree (each once).
    fn closure(&self, root: &Digest) -> Result<Closure> {
        let mut c = Closure { trees: Vec::new(), files: Vec::new(), chunks: Vec::new() };
        let (mut seen_t, mut seen_f, mut seen_c) = (HashSet::new(), HashSet::new(), HashSet::new());
        let mut stack = vec![*root];
        while let Some(t) = stack.pop() {
            if !seen_t.insert(t) {
                continue;
            }
            let bytes = self.index.get(Cf::Trees, t.as_bytes())?.ok_or(Error::Missing { what: "tree", digest: t })?;
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

    /// The root name `what` is pushed under: a root's own name, or the input digest of the
    /// newest build of an artifact name.
    fn push_name(&self, what: &str) -> Result<(String, Digest)> {
        if let Some(v) = self.index.get(Cf::Roots, what.as_bytes())?
            && let Some(d) = Digest::from_slice(&v)
        {
            return Ok((what.to_string(), d));
        }
        if let Some(input) = self.alias(what)?
            && let Some(tree) = self.result(&input)?
        {
            return Ok((input.to_hex(), tree));
        }
        if let Ok(d) = what.parse::<Digest>()
            && self.has_tree(&d)?
            && self.roots()?.iter().any(|r| r.digest == d)
        {
            return Ok((d.to_hex(), d));
        }
        Err(Error::UnknownRoot(what.to_string()))
    }

    /// Uploads a root and whatever of its data S3 lacks. Idempotent.
    pub fn push(&self, what: &str, progress: &(dyn Fn(u64, u64) + Sync)) -> Result<PushReport> {
        let remote = self.remote_or_err()?;
        let (name, tree) = self.push_name(what)?;
        let mut report = PushReport { name: name.clone(), tree, ..Default::default() };
        if let Some(obj) = remote.get(&format!("roots/{name}"))?
            && parse_root(&obj).is_some_and(|(t, _)| t == tree)
        {
            report.already = true;
            return Ok(report);
        }
        let c = self.closure(&tree)?;
        report.chunks = c.chunks.len() as u64;
        // The chunks S3 is not known to have go into new packs of about REMOTE_PACK_SIZE.
        let mut locs: HashMap<Digest, RemoteLocator> = HashMap::new();
        let mut new = Vec::new();
        for id in &c.chunks {
            match self.remote_locator(id)? {
                Some(l) => {
                    locs.insert(*id, l);
                }
                None => new.push((*id, self.locator(id)?)),
            }
        }
        report.new_chunks = new.len() as u64;
        let uploaded = self.upload_packs(remote, &tree, &new, progress);
        // Packs that made it are recorded even if others failed: a retry does not send them again.
        let mut batch = Batch::default();
        for (id, rl) in &uploaded.placed {
            batch.put(Cf::Remote, id.as_bytes(), &rl.encode());
            locs.insert(*id, *rl);
        }
        report.uploaded_bytes = uploaded.bytes;
        if let Some(e) = uploaded.error {
            self.commit(batch)?;
            return Err(e);
        }
        let index = encode_index(&c, &locs)?;
        let index_digest = Digest(*blake3::hash(&index).as_bytes());
        let key = format!("indexes/{index_digest}");
        if !remote.exists(&key)? {
            report.uploaded_bytes += index.len() as u64;
            remote.put(&key, index, false)?;
        }
        let root_obj = format!("{ROOT_HEADER}\ntree {tree}\nindex {index_digest}\n");
        // A named root is also findable by its tree digest, which is what the mount shows.
        if name.parse::<Digest>().is_err() {
            remote.put(&format!("roots/{tree}"), root_obj.clone().into_bytes(), false)?;
        }
        remote.put(&format!("roots/{name}"), root_obj.into_bytes(), false)?;
        self.commit(batch)?;
        Ok(report)
    }

    /// Writes `chunks` into packs of about [`REMOTE_PACK_SIZE`], each staged in a temporary file
    /// (named by its BLAKE3, so identical packs from two hosts are one object) and uploaded by
    /// one of [`PARALLEL_PACKS`] threads while the next is written. Disk: a few staged packs;
    /// memory: the parts in flight. Stops at the first error.
    fn upload_packs(
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
        let done = std::sync::atomic::AtomicU64::new(0);
        let out = Mutex::new(Uploaded::default());
        let fail = |e: Error| {
            let mut o = out.lock().unwrap();
            o.error.get_or_insert(e);
        };
        let failed = || out.lock().unwrap().error.is_some();
        let tmp_dir = self.dir().join("tmp");
        if let Err(e) = std::fs::create_dir_all(&tmp_dir).at(&tmp_dir) {
            fail(e);
        }
        let upload = |p: Staged| {
            let key = format!("packs/{}", p.digest);
            let r = if failed() {
                Ok(())
            } else {
                remote.exists(&key).and_then(|there| {
                    if !there {
                        remote.put_file(&key, &p.tmp)?;
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
                    let placed = placed
                        .into_iter()
                        .map(|(id, off, l)| {
                            let rl = RemoteLocator {
                                pack: digest,
                                offset: off,
                                stored_len: l.stored_len,
                                raw_len: l.raw_len,
                                codec: l.codec,
                            };
                            (id, rl)
                        })
                        .collect();
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

    /// A root by name: this store's, else (with S3) the remote one, recorded here with its
    /// metadata but none of its data. `None` when neither has it.
    pub fn find_root(&self, name: &str) -> Result<Option<Digest>> {
        if let Some(v) = self.index.get(Cf::Roots, name.as_bytes())? {
            return Ok(Digest::from_slice(&v));
        }
        let Some(remote) = &self.remote else { return Ok(None) };
        let Some(obj) = remote.get(&format!("roots/{name}"))? else { return Ok(None) };
        // From "is the tree here?" (and "is this file record here?") to the commit.
        let _writer = self.gc_lock.read().unwrap();
        let url = || format!("{}/roots/{name}", remote.config().url());
        let (tree, index_digest) =
            parse_root(&obj).ok_or_else(|| Error::Remote { url: url(), message: "not a root object".into() })?;
        let mut batch = Batch::default();
        if !self.has_tree(&tree)? {
            let key = format!("indexes/{index_digest}");
            let bytes = remote.get(&key)?.ok_or_else(|| Error::Remote {
                url: format!("{}/{key}", remote.config().url()),
                message: "missing (the root names it)".into(),
            })?;
            if Digest(*blake3::hash(&bytes).as_bytes()) != index_digest {
                return Err(Error::Corrupt {
                    what: "remote index",
                    digest: index_digest,
                    detail: "content does not match its name".into(),
                });
            }
            decode_index(&bytes, &index_digest, &mut batch, self)?;
        }
        batch.put(Cf::Roots, name.as_bytes(), tree.as_bytes());
        self.commit(batch)?;
        tracing::info!(name, %tree, "found in S3");
        Ok(Some(tree))
    }

    /// Fetches a chunk from S3, with readahead of `ahead` (the next chunks of its file), verifies
    /// each, keeps them in a local fetched pack and indexes them. Two readers racing on the same
    /// chunks may both fetch them; the second copy is only dead space in a fetched pack.
    pub(crate) fn fetch_remote(&self, id: &Digest, ahead: &[ChunkRef]) -> Result<Option<Vec<u8>>> {
        let Some(remote) = &self.remote else { return Ok(None) };
        let Some(rl) = self.remote_locator(id)? else { return Ok(None) };
        // Readahead: the file's next chunks, while they are neither here nor in memory and sit
        // right after this one in the same remote pack, up to READAHEAD bytes.
        let mut run = vec![(*id, rl)];
        let mut end = rl.offset + u64::from(rl.stored_len);
        for c in ahead {
            if end - rl.offset >= READAHEAD
                || self.chunk_cached(&c.id).is_some()
                || self.index.contains(Cf::Chunks, c.id.as_bytes())?
            {
                break;
            }
            match self.remote_locator(&c.id)? {
                Some(next) if next.pack == rl.pack && next.offset == end + RECORD_HEADER => {
                    end = next.offset + u64::from(next.stored_len);
                    run.push((c.id, next));
                }
                _ => break,
            }
        }
        let mut first = None;
        self.fetch_run(remote, &run, false, |cid, data| {
            if first.is_none() {
                first = Some(data);
            } else {
                self.cache_chunk(cid, data);
            }
        })
        .inspect_err(|e| {
            if matches!(e, Error::Remote { .. }) {
                self.log_offline(e);
            }
        })?;
        Ok(first)
    }

    /// Fetches `run` (chunks of one remote pack, in offset order) with one ranged GET, verifies
    /// each chunk, keeps them all in the fetched pack and hands each one's bytes to `decoded`.
    /// Returns the stored bytes kept.
    fn fetch_run(
        &self,
        remote: &Remote,
        run: &[(Digest, RemoteLocator)],
        held: bool,
        mut decoded: impl FnMut(Digest, Vec<u8>),
    ) -> Result<u64> {
        let (pack, start) = (run[0].1.pack, run[0].1.offset);
        // Offsets only grow along a run, but lengths vary: the end is the furthest.
        let end = run.iter().map(|(_, r)| r.offset + u64::from(r.stored_len)).max().unwrap_or(start);
        let bytes = remote.get_range(&format!("packs/{pack}"), start, end - start)?;
        let mut got = Vec::with_capacity(run.len());
        for (id, rl) in run {
            let at = (rl.offset - start) as usize;
            let stored = &bytes[at..at + rl.stored_len as usize];
            decoded(*id, check_fetched(id, rl, stored)?);
            got.push((*id, *rl, stored));
        }
        self.keep_fetched(&got, held)?;
        Ok(run.iter().map(|(_, rl)| u64::from(rl.stored_len)).sum())
    }

    /// One line when S3 becomes unreachable, then at most one a minute.
    fn log_offline(&self, e: &Error) {
        let mut last = self.sync.last_offline_log.lock().unwrap();
        if last.is_none_or(|t| t.elapsed().as_secs() >= 60) {
            tracing::error!("S3 unreachable, uncached reads fail with EIO until it is back: {e}");
            *last = Some(Instant::now());
        }
    }

    /// Appends verified chunks to the open fetch pack and indexes them in one commit.
    fn keep_fetched(&self, chunks: &[(Digest, RemoteLocator, &[u8])], held: bool) -> Result<()> {
        // While gc runs, fetched chunks are served from memory but not kept on disk: a read
        // never waits for a gc (and gc never sees a fetch pack change under it).
        // A caller already holding the lock (pull) says so: a second shared lock could fail
        // while gc waits for the first.
        let _writer = match held {
            true => None,
            false => match self.gc_lock.try_read() {
                Ok(g) => Some(g),
                Err(_) => return Ok(()),
            },
        };
        let mut slot = self.sync.fetch_pack.lock().unwrap();
        let mut batch = Batch::default();
        for (id, rl, stored) in chunks {
            if slot.is_none() {
                let pid = self.alloc_pack_id();
                let w = PackWriter::create(&self.packs_dir, pid)?;
                // Named in the index at once, so that opening the store keeps it.
                let mut b = Batch::default();
                b.put(Cf::Packs, &pid.to_be_bytes(), &PackInfo { size: 0, chunks: 0 }.encode());
                b.put(Cf::Meta, &[FETCHED, &pid.to_be_bytes()[..]].concat(), b"");
                self.commit(b)?;
                *slot = Some(w);
            }
            let w = slot.as_mut().expect("just opened");
            let loc = w.append(id, rl.raw_len, rl.codec, stored)?;
            batch.put(Cf::Chunks, id.as_bytes(), &loc.encode());
            self.sync.recency.lock().unwrap().insert(w.id(), Instant::now());
        }
        let full = slot.as_ref().is_some_and(|w| w.len() >= self.fetch_pack_size());
        if let Some(w) = slot.as_mut() {
            w.flush()?;
        }
        if full {
            let (pid, info) = slot.take().expect("open").seal()?;
            batch.put(Cf::Packs, &pid.to_be_bytes(), &info.encode());
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

    /// Notes a read of a local pack (for eviction order); memory only.
    pub(crate) fn touch_pack(&self, pack: u64) {
        if self.remote.is_some() && self.opts.cache_bytes.is_some() {
            let mut r = self.sync.recency.lock().unwrap();
            if let Some(t) = r.get_mut(&pack) {
                *t = Instant::now();
            }
        }
    }

    /// Fetched packs with their sizes.
    fn fetched_packs(&self) -> Result<Vec<(u64, u64)>> {
        let mut ids = Vec::new();
        self.index.scan(Cf::Meta, |k, _| {
            if let Some(rest) = k.strip_prefix(FETCHED)
                && let Ok(b) = rest.try_into()
            {
                ids.push(u64::from_be_bytes(b));
            }
            true
        })?;
        Ok(ids
            .into_iter()
            .map(|id| {
                let len = std::fs::metadata(crate::pack::pack_path(&self.packs_dir, id)).map_or(0, |m| m.len());
                (id, len)
            })
            .collect())
    }

    /// Bytes of fetched (evictable) data on disk.
    pub fn cache_bytes(&self) -> Result<u64> {
        Ok(self.fetched_packs()?.iter().map(|p| p.1).sum())
    }

    fn fetch_pack_size(&self) -> u64 {
        self.opts.cache_bytes.map_or(FETCH_PACK_SIZE, |b| (b / 8).clamp(1 << 20, FETCH_PACK_SIZE))
    }

    /// Evicts the least recently read fetched packs until they fit the cache budget, with room
    /// left for the open fetch pack to fill. Their chunks stay known in S3 and are fetched again
    /// when read. Returns the bytes freed.
    pub fn evict(&self) -> Result<u64> {
        let Some(budget) = self.opts.cache_bytes else { return Ok(0) };
        let budget = budget.saturating_sub(self.fetch_pack_size() + MAX_CHUNK);
        let open = self.sync.fetch_pack.lock().unwrap().as_ref().map(|w| w.id());
        let mut packs = self.fetched_packs()?;
        let mut total: u64 = packs.iter().map(|p| p.1).sum();
        if total <= budget {
            return Ok(0);
        }
        let recency = self.sync.recency.lock().unwrap().clone();
        packs.sort_by_key(|(id, _)| recency.get(id).copied());
        let mut freed = 0;
        for (id, len) in packs {
            if total <= budget {
                break;
            }
            if Some(id) == open {
                continue;
            }
            self.drop_pack(id)?;
            self.sync.recency.lock().unwrap().remove(&id);
            total -= len;
            freed += len;
            tracing::debug!(pack = id, bytes = len, "evicted");
        }
        Ok(freed)
    }

    /// Removes a pack and every locator pointing into it.
    fn drop_pack(&self, id: u64) -> Result<u64> {
        let mut keys = Vec::new();
        self.index.scan(Cf::Chunks, |k, v| {
            if let Some(d) = Digest::from_slice(k)
                && let Ok(l) = Locator::decode(v, &d)
                && l.pack == id
            {
                keys.push(k.to_vec());
            }
            true
        })?;
        let dropped = keys.len() as u64;
        let mut del = Batch::default();
        for k in keys {
            del.delete(Cf::Chunks, &k);
        }
        self.remove_pack(id, del)?;
        Ok(dropped)
    }

    /// Forgets a pack in the index (in one commit with `batch`) and deletes its file.
    fn remove_pack(&self, id: u64, mut batch: Batch) -> Result<()> {
        batch.delete(Cf::Packs, &id.to_be_bytes());
        batch.delete(Cf::Meta, &[FETCHED, &id.to_be_bytes()[..]].concat());
        self.commit(batch)?;
        self.packs.forget(id);
        let path = crate::pack::pack_path(&self.packs_dir, id);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&path, e)),
            _ => Ok(()),
        }
    }

    /// Fetches every chunk of a root that is not here (finding the root in S3 if need be).
    pub fn pull(&self, what: &str, progress: &(dyn Fn(u64, u64) + Sync)) -> Result<PullReport> {
        let remote = self.remote_or_err()?;
        let tree = match self.find_root(what)? {
            Some(t) => t,
            None => self.resolve(what)?,
        };
        // Chunks found here are not fetched: gc must not remove them meanwhile.
        let _writer = self.gc_lock.read().unwrap();
        let c = self.closure(&tree)?;
        let mut report = PullReport { tree, chunks: c.chunks.len() as u64, ..Default::default() };
        let mut by_pack: HashMap<Digest, Vec<(Digest, RemoteLocator)>> = HashMap::new();
        for id in &c.chunks {
            if self.index.contains(Cf::Chunks, id.as_bytes())? {
                continue;
            }
            let rl = self.remote_locator(id)?.ok_or(Error::Missing { what: "chunk (here or in S3)", digest: *id })?;
            by_pack.entry(rl.pack).or_default().push((*id, rl));
        }
        let total: u64 = by_pack.values().flatten().map(|(_, rl)| u64::from(rl.stored_len)).sum();
        // A pack mostly needed comes whole, verified by its name (BLAKE3 of the object) as it
        // streams to disk, where it is a fetched pack as is: no chunk is decoded or copied. Other
        // packs come as runs of chunks close together, up to PULL_RANGE bytes, one GET each,
        // each chunk verified by its own digest.
        let mut ranges: Vec<(bool, Vec<(Digest, RemoteLocator)>)> = Vec::new();
        for (_, mut chunks) in by_pack {
            chunks.sort_by_key(|(_, rl)| rl.offset);
            let needed: u64 = chunks.iter().map(|(_, rl)| RECORD_HEADER + u64::from(rl.stored_len)).sum();
            let span = chunks.iter().map(|(_, rl)| rl.offset + u64::from(rl.stored_len)).max().unwrap_or(0);
            if needed * 4 >= span * 3 {
                ranges.push((true, chunks));
                continue;
            }
            let (mut run, mut start, mut end) = (Vec::new(), 0u64, 0u64);
            for (id, rl) in chunks {
                let rl_end = rl.offset + u64::from(rl.stored_len);
                if !run.is_empty() && (rl.offset > end + (1 << 20) || rl_end - start > PULL_RANGE) {
                    ranges.push((false, std::mem::take(&mut run)));
                }
                if run.is_empty() {
                    (start, end) = (rl.offset, rl_end);
                }
                end = end.max(rl_end);
                run.push((id, rl));
            }
            ranges.push((false, run));
        }
        // PARALLEL_GETS threads each fetch, verify and keep one pack or range at a time.
        let next = std::sync::atomic::AtomicUsize::new(0);
        let done = std::sync::atomic::AtomicU64::new(0);
        let out = Mutex::new((0u64, 0u64, None::<Error>));
        std::thread::scope(|s| {
            for _ in 0..PARALLEL_GETS {
                s.spawn(|| {
                    while out.lock().unwrap().2.is_none() {
                        let Some((whole, run)) = ranges.get(next.fetch_add(1, Ordering::SeqCst)) else { return };
                        let r = if *whole {
                            self.pull_pack(remote, run)
                        } else {
                            self.fetch_run(remote, run, true, |_, _| {})
                        };
                        let mut o = out.lock().unwrap();
                        match r {
                            Ok(bytes) => {
                                o.0 += run.len() as u64;
                                o.1 += run.iter().map(|(_, rl)| u64::from(rl.raw_len)).sum::<u64>();
                                drop(o);
                                progress(done.fetch_add(bytes, Ordering::SeqCst) + bytes, total);
                            }
                            Err(e) => {
                                o.2.get_or_insert(e);
                            }
                        }
                    }
                });
            }
        });
        let (chunks, bytes, error) = out.into_inner().unwrap();
        report.fetched_chunks = chunks;
        report.fetched_bytes = bytes;
        if let Some(e) = error {
            return Err(e);
        }
        self.evict()?;
        Ok(report)
    }

    /// Fetches a whole remote pack into a new local fetched pack, checking it against its name,
    /// and indexes `chunks` (the ones wanted) in it. Returns their stored bytes.
    fn pull_pack(&self, remote: &Remote, chunks: &[(Digest, RemoteLocator)]) -> Result<u64> {
        let pack = chunks[0].1.pack;
        let pid = self.alloc_pack_id();
        let mut w = PackWriter::create(&self.packs_dir, pid)?;
        let mut h = blake3::Hasher::new();
        let got = remote.get_streamed(&format!("packs/{pack}"), &mut |part| {
            h.update(part);
            w.append_records(part)
        });
        // Every byte checked against the pack's name, and the pack long enough for the index.
        let end = chunks.iter().map(|(_, rl)| rl.offset + u64::from(rl.stored_len)).max().unwrap_or(0);
        let checked = got.and_then(|n| {
            let detail = if Digest(*h.finalize().as_bytes()) != pack {
                format!("the S3 object ({n} bytes) does not match its name")
            } else if n < end {
                "shorter than the index says".to_string()
            } else {
                return Ok(());
            };
            Err(Error::Corrupt { what: "pack", digest: pack, detail })
        });
        if let Err(e) = checked {
            w.discard();
            return Err(e);
        }
        let (pid, info) = w.seal()?;
        let info = PackInfo { chunks: chunks.len() as u32, ..info };
        let mut batch = Batch::default();
        batch.put(Cf::Packs, &pid.to_be_bytes(), &info.encode());
        batch.put(Cf::Meta, &[FETCHED, &pid.to_be_bytes()[..]].concat(), b"");
        for (id, rl) in chunks {
            batch.put(Cf::Chunks, id.as_bytes(), &rl.local(pid, PACK_HEADER + rl.offset).encode());
        }
        self.commit(batch)?;
        self.sync.recency.lock().unwrap().insert(pid, Instant::now());
        Ok(chunks.iter().map(|(_, rl)| u64::from(rl.stored_len)).sum())
    }

    /// Removes every tree, file record and chunk locator that no root (and no pin) reaches,
    /// and the packs left holding no reachable chunk.
    ///
    /// Holds `gc_lock` exclusively: writers that may reuse stored objects hold it shared from
    /// their first existence check to their commit, so nothing they decided to reuse is
    /// removed under them, and every root gc sees was committed whole.
    pub fn gc(&self) -> Result<GcReport> {
        let _gc = self.gc_lock.write().unwrap();
        let (mut trees, mut files, mut chunks) = (HashSet::new(), HashSet::new(), HashSet::new());
        let mut stack: Vec<Digest> = self.roots()?.into_iter().map(|r| r.digest).collect();
        stack.extend(self.pinned());
        while let Some(t) = stack.pop() {
            if !trees.insert(t) {
                continue;
            }
            let Some(bytes) = self.index.get(Cf::Trees, t.as_bytes())? else { continue };
            for e in Tree::decode(&bytes, &t)?.entries() {
                match &e.kind {
                    EntryKind::Dir { digest, .. } => stack.push(*digest),
                    EntryKind::File { digest, .. } => {
                        if files.insert(*digest)
                            && let Some(rec) = self.index.get(Cf::Files, digest.as_bytes())?
                        {
                            chunks.extend(FileRecord::decode(&rec, digest)?.chunks.iter().map(|c| c.id));
                        }
                    }
                    EntryKind::Symlink { .. } => {}
                }
            }
        }
        let mut report = GcReport::default();
        let mut live_packs = HashSet::new();
        for (cf, live, dropped) in [
            (Cf::Trees, &trees, &mut report.trees_dropped),
            (Cf::Files, &files, &mut report.files_dropped),
            (Cf::Chunks, &chunks, &mut report.chunks_dropped),
        ] {
            let mut dead = Batch::default();
            let mut err = None;
            self.index.scan(cf, |k, v| {
                match Digest::from_slice(k) {
                    Some(d) if live.contains(&d) => {
                        if cf == Cf::Chunks
                            && let Ok(l) = Locator::decode(v, &d)
                        {
                            live_packs.insert(l.pack);
                        }
                    }
                    _ => {
                        dead.delete(cf, k);
                        *dropped += 1;
                    }
                }
                // Bounded batches: a store of millions of objects is not deleted in one.
                if dead.len() >= 100_000 {
                    err = self.commit(std::mem::take(&mut dead)).err();
                }
                err.is_none()
            })?;
            if let Some(e) = err {
                return Err(e);
            }
            self.commit(dead)?;
        }
        self.clear_meta_caches();
        let open = self.sync.fetch_pack.lock().unwrap().as_ref().map(|w| w.id());
        for (id, info) in self.packs()? {
            if live_packs.contains(&id) || Some(id) == open {
                continue;
            }
            let path = crate::pack::pack_path(&self.packs_dir, id);
            let len = std::fs::metadata(&path).map_or(info.size, |m| m.len());
            self.remove_pack(id, Batch::default())?;
            report.packs_removed += 1;
            report.bytes_freed += len;
        }
        Ok(report)
    }

    /// Claims `claims/<name>` in S3 for this builder (a conditional put): true when the claim is
    /// ours, false when another holds it. `steal` overwrites a claim given up as stale.
    pub fn remote_claim(&self, name: &str, owner: &str, steal: bool) -> Result<bool> {
        let remote = self.remote_or_err()?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        remote.put(&format!("claims/{name}"), format!("{now} {owner}\n").into_bytes(), !steal)
    }

    /// How long ago the claim on `name` was taken, and by whom; `None` when there is none.
    pub fn remote_claim_info(&self, name: &str) -> Result<Option<(u64, String)>> {
        let remote = self.remote_or_err()?;
        let Some(b) = remote.get(&format!("claims/{name}"))? else { return Ok(None) };
        let text = String::from_utf8_lossy(&b);
        let (t, owner) = text.trim().split_once(' ').unwrap_or(("0", ""));
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        Ok(Some((now.saturating_sub(t.parse().unwrap_or(0)), owner.to_string())))
    }

    pub fn remote_release(&self, name: &str) -> Result<()> {
        self.remote_or_err()?.delete(&format!("claims/{name}"))
    }

    /// Counters of S3 traffic, if configured: (GETs, bytes got, PUTs, bytes put, errors).
    pub fn remote_counters(&self) -> Option<[u64; 5]> {
        let s = &self.remote.as_ref()?.stats;
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Some([l(&s.gets), l(&s.get_bytes), l(&s.puts), l(&s.put_bytes), l(&s.errors)])
    }
}

/// First line of a root object. v2: file digests hash chunk lists (store format 2); roots of
/// other versions are not read.
const ROOT_HEADER: &str = "vorpalfs root v2";

/// Decodes and verifies a chunk fetched from S3; an error names the pack it came from.
fn check_fetched(id: &Digest, rl: &RemoteLocator, stored: &[u8]) -> Result<Vec<u8>> {
    decode_chunk(id, &rl.local(0, rl.offset), stored).map_err(|e| match e {
        Error::Corrupt { what, digest, detail } => {
            Error::Corrupt { what, digest, detail: format!("{detail} (fetched from S3 pack {})", rl.pack) }
        }
        e => e,
    })
}

fn parse_root(obj: &[u8]) -> Option<(Digest, Digest)> {
    let text = std::str::from_utf8(obj).ok()?;
    let mut lines = text.lines();
    if lines.next()? != ROOT_HEADER {
        return None;
    }
    let tree = lines.next()?.strip_prefix("tree ")?.parse().ok()?;
    let index = lines.next()?.strip_prefix("index ")?.parse().ok()?;
    Some((tree, index))
}

fn encode_index(c: &Closure, locs: &HashMap<Digest, RemoteLocator>) -> Result<Vec<u8>> {
    let mut raw = Vec::new();
    raw.extend_from_slice(INDEX_MAGIC);
    raw.extend_from_slice(&(c.trees.len() as u32).to_le_bytes());
    for (d, bytes) in &c.trees {
        raw.extend_from_slice(d.as_bytes());
        raw.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        raw.extend_from_slice(bytes);
    }
    raw.extend_from_slice(&(c.files.len() as u32).to_le_bytes());
    for (d, f) in &c.files {
        let bytes = f.encode();
        raw.extend_from_slice(d.as_bytes());
        raw.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        raw.extend_from_slice(&bytes);
    }
    raw.extend_from_slice(&(c.chunks.len() as u32).to_le_bytes());
    for id in &c.chunks {
        let l = locs.get(id).ok_or(Error::Missing { what: "chunk's place in S3", digest: *id })?;
        raw.extend_from_slice(id.as_bytes());
        raw.extend_from_slice(&l.encode());
    }
    zstd::bulk::compress(&raw, 3).map_err(|e| Error::Invalid(format!("cannot compress an index: {e}")))
}

fn decode_index(bytes: &[u8], digest: &Digest, batch: &mut Batch, store: &Store) -> Result<()> {
    let corrupt = |detail: &str| Error::Corrupt { what: "remote index", digest: *digest, detail: detail.into() };
    let raw = zstd::stream::decode_all(bytes).map_err(|_| corrupt("not zstd"))?;
    let mut r = &raw[..];
    let mut take = |n: usize| -> Result<&[u8]> {
        if r.len() < n {
            return Err(corrupt("truncated"));
        }
        let (a, b) = r.split_at(n);
        r = b;
        Ok(a)
    };
    if take(8)? != INDEX_MAGIC {
        return Err(corrupt("bad magic"));
    }
    let n = u32::from_le_bytes(take(4)?.try_into().unwrap());
    for _ in 0..n {
        let d = Digest::from_slice(take(32)?).expect("32 bytes");
        let len = u32::from_le_bytes(take(4)?.try_into().unwrap()) as usize;
        let t = take(len)?;
        if Digest::of(Kind::Tree, t) != d {
            return Err(Error::Corrupt {
                what: "tree",
                digest: d,
                detail: "from S3: encoding does not match its digest".into(),
            });
        }
        Tree::decode(t, &d)?;
        batch.put(Cf::Trees, d.as_bytes(), t);
    }
    let n = u32::from_le_bytes(take(4)?.try_into().unwrap());
    for _ in 0..n {
        let d = Digest::from_slice(take(32)?).expect("32 bytes");
        let len = u32::from_le_bytes(take(4)?.try_into().unwrap()) as usize;
        let f = take(len)?;
        FileRecord::decode(f, &d)?;
        if !store.index.contains(Cf::Files, d.as_bytes())? {
            batch.put(Cf::Files, d.as_bytes(), f);
        }
    }
    let n = u32::from_le_bytes(take(4)?.try_into().unwrap());
    for _ in 0..n {
        let id = take(32)?.to_vec();
        let l = take(49)?;
        RemoteLocator::decode(l).ok_or_else(|| corrupt("bad chunk locator"))?;
        batch.put(Cf::Remote, &id, l);
    }
    Ok(())
}
