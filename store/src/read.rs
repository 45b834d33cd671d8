//! Reads: a file's bytes in a range, from the chunks that cover it; each chunk from the memory
//! cache, the local packs or S3, verified against its digest before use.
//!
//! Three entry points share one assembly step: [`Store::read_cached`] never blocks (memory
//! only: the mount answers on its own thread with it), [`Store::read`] blocks (commands,
//! export, the tests), and [`Store::read_async`] runs on the I/O runtime: local misses on its
//! blocking pool, S3 fetches awaited directly, concurrent readers of one chunk sharing one
//! fetch. The store decides the readahead: a chunk fetched from S3 brings the file's following
//! chunks in the same GET when they sit next to it (see `remote/fetch.rs`).

use std::future::Future;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};

use crate::error::{Error, IoContext, Result};
use crate::model::digest::Digest;
use crate::model::records::FileRecord;
use crate::remote::lazy::{Flight, Plan, place_is_wrong};
use crate::store::Store;

/// How many times a read plans a fetch of one chunk (each wrong place costs one).
const MAX_TRIES: usize = 5;

/// What the blocking half of an async miss found.
enum Miss {
    Local(Bytes),
    LocalBad(Error),
    Plan(Result<Plan>),
}

/// Waits for a flight to land; [`Error::Abandoned`] if it never will.
async fn land(mut f: Flight) -> Result<Bytes> {
    match f.wait_for(Option::is_some).await {
        Ok(v) => v.clone().expect("landed"),
        Err(_) => Err(Error::Abandoned),
    }
}

/// Memory-cache counters of an open store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CacheStats {
    pub chunk_cache_bytes: u64,
    pub chunk_cache_budget: u64,
    pub chunk_hits: u64,
    pub chunk_misses: u64,
    /// Bytes (uncompressed) fetched from S3 and checked, by reads and prefetch.
    #[serde(default)]
    pub fetched_bytes: u64,
    /// GETs sent to fetch small roots whole.
    #[serde(default)]
    pub prefetch_gets: u64,
}

/// What this host fetched for one root from S3 (for `vorpalfs status` and the metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RootStats {
    /// Chunks of the profile used for it (0: none was found).
    pub profile_chunks: u64,
    /// What prefetch (its profile, or the whole of a small root) asked for: GETs and bytes.
    pub prefetch_gets: u64,
    pub prefetch_bytes: u64,
    /// Chunks a reader of the mount waited for S3 for.
    pub demand_misses: u64,
    /// GETs that landed for it (reads, readahead, neighbours, prefetch) and their bytes.
    pub gets: u64,
    pub fetched_bytes: u64,
}

/// Roots whose counters are kept (beyond this, new roots are not counted).
const ROOTS_COUNTED: usize = 4096;

/// The chunks `[first, last]` of `file` covering `want` bytes from `offset`.
fn span(file: &FileRecord, offset: u64, len: usize) -> Option<(usize, usize, usize)> {
    if offset >= file.size || len == 0 {
        return None;
    }
    let want = len.min((file.size - offset) as usize);
    let first = file.chunk_at(offset);
    let last = file.chunk_at(offset + want as u64 - 1);
    Some((first, last, want))
}

/// Cuts `[offset, offset+want)` out of the covering chunks (one slice, no copy, when a single
/// chunk covers it), checking each chunk is as long as the file record says.
fn assemble(file: &FileRecord, offset: u64, want: usize, first: usize, chunks: &[Bytes]) -> Result<Bytes> {
    for (i, data) in chunks.iter().enumerate() {
        let c = &file.chunks[first + i];
        if data.len() != c.len as usize {
            return Err(Error::Corrupt {
                what: "chunk",
                digest: c.id,
                detail: format!("has {} bytes, the file record says {}", data.len(), c.len),
            });
        }
    }
    let start = (offset - file.chunks[first].offset) as usize;
    if chunks.len() == 1 {
        return Ok(chunks[0].slice(start..start + want));
    }
    let mut out = BytesMut::with_capacity(want);
    let mut skip = start;
    for data in chunks {
        let n = (data.len() - skip).min(want - out.len());
        out.extend_from_slice(&data[skip..skip + n]);
        skip = 0;
    }
    Ok(out.freeze())
}

impl Store {
    /// Bytes `[offset, offset+len)` of `file` (fewer only at its end), fetching what is not
    /// here. Blocks.
    pub fn read(&self, file: &FileRecord, offset: u64, len: usize) -> Result<Bytes> {
        let Some((first, last, want)) = span(file, offset, len) else { return Ok(Bytes::new()) };
        let chunks = (first..=last).map(|i| self.chunk(file, i)).collect::<Result<Vec<_>>>()?;
        assemble(file, offset, want, first, &chunks)
    }

    /// [`Store::read`] from the memory cache only: `None` if a chunk is not there. Never
    /// blocks on I/O.
    pub fn read_cached(&self, file: &FileRecord, offset: u64, len: usize) -> Option<Bytes> {
        let Some((first, last, want)) = span(file, offset, len) else { return Some(Bytes::new()) };
        let chunks = (first..=last).map(|i| self.chunk_cached(&file.chunks[i].id)).collect::<Option<Vec<_>>>()?;
        assemble(file, offset, want, first, &chunks).ok()
    }

    /// [`Store::read`] from memory and the local packs only: `None` when a chunk must come
    /// from S3 (or is damaged here and S3 may have it). Blocks on local disk, never on the
    /// network.
    pub fn read_here(&self, file: &FileRecord, offset: u64, len: usize) -> Result<Option<Bytes>> {
        let Some((first, last, want)) = span(file, offset, len) else { return Ok(Some(Bytes::new())) };
        let mut chunks = Vec::with_capacity(last - first + 1);
        for i in first..=last {
            let id = file.chunks[i].id;
            if let Some(c) = self.chunk_cached(&id) {
                chunks.push(c);
                continue;
            }
            self.read.misses.fetch_add(1, Ordering::Relaxed);
            match self.chunk_local(&id) {
                Ok(Some(d)) => {
                    self.chunks.insert(id, d.clone());
                    chunks.push(d);
                }
                Ok(None) if self.remote.is_some() => return Ok(None),
                Ok(None) => return Err(Error::Missing { what: "chunk", digest: id }),
                Err(_) if self.remote.is_some() => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        assemble(file, offset, want, first, &chunks).map(Some)
    }

    /// [`Store::read`] on the I/O runtime: for callers that must not block (the mount).
    pub fn read_async(
        self: &Arc<Self>,
        file: Arc<FileRecord>,
        offset: u64,
        len: usize,
    ) -> impl Future<Output = Result<Bytes>> + Send + 'static {
        self.read_async_in(None, file, offset, len)
    }

    /// [`Store::read_async`] of a file below `root` (what S3 sends for it is counted for it).
    pub fn read_async_in(
        self: &Arc<Self>,
        root: Option<Digest>,
        file: Arc<FileRecord>,
        offset: u64,
        len: usize,
    ) -> impl Future<Output = Result<Bytes>> + Send + 'static {
        let store = self.clone();
        async move {
            let Some((first, last, want)) = span(&file, offset, len) else { return Ok(Bytes::new()) };
            let mut chunks = Vec::with_capacity(last - first + 1);
            for i in first..=last {
                chunks.push(store.chunk_async(&file, i, root).await?);
            }
            assemble(&file, offset, want, first, &chunks)
        }
    }

    /// Updates the counters of `root` (see [`RootStats`]).
    pub(crate) fn count_for(&self, root: &Digest, f: impl FnOnce(&mut RootStats)) {
        let mut roots = self.read.roots.lock().unwrap();
        if roots.len() >= ROOTS_COUNTED && !roots.contains_key(root) {
            return;
        }
        f(roots.entry(*root).or_default());
    }

    /// The counters of every root S3 sent something for.
    pub fn root_stats(&self) -> std::collections::HashMap<Digest, RootStats> {
        self.read.roots.lock().unwrap().clone()
    }

    /// A chunk's bytes if they are in the memory cache (or are the all-zero chunk).
    pub(crate) fn chunk_cached(&self, id: &Digest) -> Option<Bytes> {
        // A hole reads as zeros from a static buffer: nothing to cache, read or fetch.
        let c = crate::model::records::zero_chunk_bytes(id).or_else(|| self.chunks.get(id));
        if c.is_some() {
            self.read.hits.fetch_add(1, Ordering::Relaxed);
        }
        c
    }

    /// Chunk `i` of `file`, verified: from memory, the packs, or S3 (with readahead). Blocks.
    pub(crate) fn chunk(&self, file: &FileRecord, i: usize) -> Result<Bytes> {
        match self.chunk_cached(&file.chunks[i].id) {
            Some(c) => Ok(c),
            None => self.chunk_missed(file, i),
        }
    }

    /// [`Store::chunk`] of a chunk not in memory. Kept out of line: the cached path is the hot
    /// one, and it stays small.
    #[cold]
    #[inline(never)]
    fn chunk_missed(&self, file: &FileRecord, i: usize) -> Result<Bytes> {
        let id = file.chunks[i].id;
        self.read.misses.fetch_add(1, Ordering::Relaxed);
        let local = self.chunk_local(&id);
        let data = match local {
            Ok(Some(d)) => d,
            // Not here, or damaged here: S3 may have it.
            r if self.remote.is_some() => match self.fetch_blocking(file, i)? {
                Some(d) => d,
                None => return Err(r.err().unwrap_or(Error::Missing { what: "chunk", digest: id })),
            },
            Ok(None) => return Err(Error::Missing { what: "chunk", digest: id }),
            Err(e) => return Err(e),
        };
        self.chunks.insert(id, data.clone());
        Ok(data)
    }

    /// Chunk `i` of `file` from S3, blocking (see `remote/lazy.rs`): waits for the fetch in
    /// flight, or plans one and sends it. `None`: S3 has no place for it. A place that gives
    /// wrong bytes is marked and the next one tried.
    pub(crate) fn fetch_blocking(&self, file: &FileRecord, i: usize) -> Result<Option<Bytes>> {
        let remote = self.remote_or_err()?;
        let mut failed = None;
        for _ in 0..MAX_TRIES {
            let flight = match self.plan_fetch(file, i, None) {
                Ok(Plan::NotInS3) => return failed.map_or(Ok(None), Err),
                Ok(Plan::Wait(f)) => f,
                Ok(Plan::WaitNeighbours(mut landed)) => {
                    let _ = remote.wait(async move { landed.wait_for(|l| *l).await.map(drop) });
                    if let Some(c) = self.chunks.get(&file.chunks[i].id) {
                        return Ok(Some(c));
                    }
                    continue;
                }
                Ok(Plan::Send(pieces, f)) => {
                    self.send_and_wait(pieces)?;
                    f
                }
                // Every place is wrong now: the first failure says best why.
                Err(e) => return Err(failed.unwrap_or(e)),
            };
            match remote.wait(land(flight)) {
                Ok(d) => return Ok(Some(d)),
                // Kept here unchecked as it landed (or dropped unsent: fetched again).
                Err(Error::Abandoned) if let Ok(Some(d)) = self.chunk_local(&file.chunks[i].id) => return Ok(Some(d)),
                Err(e) if place_is_wrong(&e) || matches!(e, Error::Abandoned) => drop(failed.get_or_insert(e)),
                Err(e) => return Err(e),
            }
        }
        Err(failed.unwrap_or(Error::Abandoned))
    }

    /// [`Store::chunk`] on the I/O runtime, one fetch per chunk however many wait for it.
    async fn chunk_async(self: &Arc<Self>, file: &Arc<FileRecord>, i: usize, root: Option<Digest>) -> Result<Bytes> {
        let id = file.chunks[i].id;
        if let Some(c) = self.chunk_cached(&id) {
            return Ok(c);
        }
        self.read.misses.fetch_add(1, Ordering::Relaxed);
        let mut failed = None;
        let (mut local_tried, mut sent) = (false, false);
        for _ in 0..MAX_TRIES {
            if let Some(c) = self.chunks.get(&id) {
                return Ok(c);
            }
            let flight = match self.flight(&id) {
                Some(f) => {
                    self.hurry(&id);
                    f
                }
                None => {
                    let (store, f) = (self.clone(), file.clone());
                    let try_local = !std::mem::replace(&mut local_tried, true);
                    let miss = tokio::task::spawn_blocking(move || store.miss(&f, i, try_local, root))
                        .await
                        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
                    match miss {
                        Miss::Local(d) => {
                            self.chunks.insert(id, d.clone());
                            return Ok(d);
                        }
                        Miss::LocalBad(e) => {
                            failed = Some(e);
                            continue;
                        }
                        Miss::Plan(Ok(Plan::NotInS3)) => {
                            return Err(failed.unwrap_or(Error::Missing { what: "chunk", digest: id }));
                        }
                        Miss::Plan(Ok(Plan::Wait(f))) => f,
                        Miss::Plan(Ok(Plan::WaitNeighbours(mut landed))) => {
                            let _ = landed.wait_for(|l| *l).await;
                            continue;
                        }
                        Miss::Plan(Ok(Plan::Send(pieces, f))) => {
                            self.launch(pieces)?;
                            sent = true;
                            f
                        }
                        Miss::Plan(Err(e)) => return Err(failed.unwrap_or(e)),
                    }
                }
            };
            if let Some(r) = &root
                && failed.is_none()
            {
                self.count_for(r, |s| s.demand_misses += 1);
            }
            let waited = std::time::Instant::now();
            let landed = land(flight).await;
            tracing::debug!(
                size = file.size,
                chunk = i,
                offset = file.chunks[i].offset,
                ms = waited.elapsed().as_secs_f64() * 1e3,
                "a read waited for S3"
            );
            match landed {
                Ok(d) => {
                    if i == 0 && sent {
                        self.fetch_for_loader(file, &d, root);
                    }
                    return Ok(d);
                }
                // Dropped unsent, or kept here unchecked as it landed: look here again.
                Err(Error::Abandoned) => {
                    local_tried = false;
                    failed.get_or_insert(Error::Abandoned);
                }
                Err(e) if place_is_wrong(&e) => drop(failed.get_or_insert(e)),
                Err(e) => return Err(e),
            }
        }
        Err(failed.unwrap_or(Error::Abandoned))
    }

    /// The blocking half of a miss on the async path: the local packs (once), then a plan.
    fn miss(&self, file: &FileRecord, i: usize, try_local: bool, root: Option<Digest>) -> Miss {
        let id = file.chunks[i].id;
        if try_local {
            match self.chunk_local(&id) {
                Ok(Some(d)) => return Miss::Local(d),
                // Damaged here: S3 may have it (and if not, this is the error).
                Err(e) if self.remote.is_some() => return Miss::LocalBad(e),
                Err(e) => return Miss::Plan(Err(e)),
                Ok(None) => {}
            }
        }
        if self.remote.is_none() {
            return Miss::Plan(Err(Error::Missing { what: "chunk", digest: id }));
        }
        Miss::Plan(self.plan_fetch(file, i, root))
    }

    /// A chunk from the local packs, verified; `None` when this host has no copy.
    fn chunk_local(&self, id: &Digest) -> Result<Option<Bytes>> {
        let Some(loc) = self.index.locator(id)? else { return Ok(None) };
        self.touch_pack(loc.pack);
        self.packs.read_chunk(id, &loc).map(Some)
    }

    /// A chunk read from its pack, bypassing the memory cache (for `verify`).
    pub(crate) fn chunk_from_pack(&self, id: &Digest) -> Result<Bytes> {
        let loc = self.index.locator(id)?.ok_or(Error::Missing { what: "chunk", digest: *id })?;
        self.packs.read_chunk(id, &loc)
    }

    /// Streams a whole file into `out`, chunk by chunk (each verified).
    pub fn write_file_to(&self, digest: &Digest, out: &mut impl Write, out_path: &Path) -> Result<u64> {
        let f = self.file(digest)?;
        for i in 0..f.chunks.len() {
            out.write_all(&self.chunk(&f, i)?).at(out_path)?;
        }
        Ok(f.size)
    }

    /// A `Read` over a stored file.
    pub fn reader(&self, digest: &Digest) -> Result<FileReader<'_>> {
        Ok(FileReader { store: self, file: self.file(digest)?, pos: 0 })
    }

    /// Waits (at most `timeout`) until the background GETs already started (readahead,
    /// neighbours, prefetch) have landed or failed; whether they all have. A daemon calls it
    /// before closing the store, so that no task is left writing to it.
    pub fn settle(&self, timeout: std::time::Duration) -> bool {
        self.read.pending.wait(timeout)
    }

    /// What the index (RocksDB) holds in memory now.
    pub fn index_memory(&self) -> crate::IndexMemory {
        self.index.memory()
    }

    /// Cache counters and sizes, for `vorpalfs status`.
    pub fn cache_stats(&self) -> CacheStats {
        CacheStats {
            chunk_cache_bytes: self.chunks.bytes() as u64,
            chunk_cache_budget: self.opts.chunk_cache_bytes as u64,
            chunk_hits: self.read.hits.load(Ordering::Relaxed),
            chunk_misses: self.read.misses.load(Ordering::Relaxed),
            fetched_bytes: self.read.fetched_bytes.load(Ordering::Relaxed),
            prefetch_gets: self.read.prefetched_gets.load(Ordering::Relaxed),
        }
    }
}

/// Sequential reader over a stored file.
pub struct FileReader<'a> {
    store: &'a Store,
    file: Arc<FileRecord>,
    pos: u64,
}

impl Read for FileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let b = self.store.read(&self.file, self.pos, buf.len()).map_err(std::io::Error::other)?;
        buf[..b.len()].copy_from_slice(&b);
        self.pos += b.len() as u64;
        Ok(b.len())
    }
}
