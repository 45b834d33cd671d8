//! The chunk fetches of lazy reads, shaped for a link with latency: a miss is one round trip
//! however much follows it.
//!
//! - **Pieces in parallel.** A miss plans a run: the chunk asked for and the file's following
//!   chunks that sit after it in the same S3 pack, up to the file's readahead window. The run is
//!   cut into pieces, one ranged GET each, all sent at once; the piece holding the chunk asked
//!   for is small, so the reader waits for one round trip and little transfer, not the window.
//! - **A window that grows.** A reader that misses exactly where the last window ended is
//!   reading sequentially: its next window is twice as large (up to [`WINDOW_MAX`]); any other
//!   miss starts again at [`WINDOW_MIN`].
//! - **Neighbours.** A miss in a small file also reads [`NEIGHBOURS`] bytes past it in the pack
//!   (a piece of its own, in the background): a push lays a directory's files out together, so
//!   these are the files next to it, which a program reading one tends to read next. Their
//!   records are parsed from the bytes and kept only when the index knows exactly that place for
//!   that chunk and its content matches its digest.
//! - **Every chunk fetched once.** Each planned chunk has a flight that its readers wait on;
//!   a run stops at a chunk already in flight.
//! - **Demand first.** Pieces beyond the one a reader waits for take a permit: readahead,
//!   neighbours and the rest of a large file one of [`BACKGROUND_GETS`], prefetch (profiles,
//!   small roots) one of [`PREFETCH_GETS`]; the demanded piece never waits for one, and a reader
//!   that comes to wait for a chunk of a piece still in line has that piece sent at once.
//! - **Prefetch stops** when the store closes (pieces in line are dropped) and when S3 fails
//!   under it (one log line; the rest of that prefetch is dropped, and readers fetch on demand).
//!
//! Every chunk is verified before anything sees it, kept in memory and in the open fetch pack,
//! and its place marked verified; a place that gives wrong bytes or none is marked wrong, and
//! readers waiting on it plan again from the chunk's next place.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use tokio::sync::watch;

use crate::error::{Error, RemoteError, Result};
use crate::local::cache::Pending;
use crate::local::index::Place;
use crate::local::pack::{RECORD_HEADER, decode_chunk, records_in};
use crate::model::digest::Digest;
use crate::model::records::{FileRecord, RemoteLocator};
use crate::remote::format;
use crate::store::Store;

/// The first readahead window of a file, and the largest it grows to.
pub(crate) const WINDOW_MIN: u64 = 4 << 20;
pub(crate) const WINDOW_MAX: u64 = 64 << 20;
/// The piece a reader waits for ends at the first chunk boundary past this many bytes.
const DEMAND_PIECE: u64 = 256 << 10;
/// Readahead pieces carry about this much each (fewer bytes for a small window: at least four
/// pieces, so that a window arrives in about one round trip).
const PIECE_MAX: u64 = 4 << 20;
const PIECE_MIN: u64 = 1 << 20;
/// A miss in a file smaller than this also reads this far past the file in its S3 pack; a miss
/// right where such a read ended reads twice as far, up to [`NEIGHBOURS_MAX`].
pub(crate) const NEIGHBOURS: u64 = 1 << 20;
const NEIGHBOURS_MAX: u64 = 8 << 20;
/// GETs in the background at once (readahead, neighbours, prefetch). Demand GETs are not
/// counted: they never wait behind these.
pub(crate) const BACKGROUND_GETS: usize = 8;
/// GETs for the rest of large files at once (see [`Class::Rest`]).
pub(crate) const REST_GETS: usize = 8;
/// Prefetch GETs at once (a class of their own: see [`Class`]).
pub(crate) const PREFETCH_GETS: usize = 8;
/// GETs a fill (`--fill`) runs at once: it yields to reads and prefetch.
const FILL_GETS: usize = 2;
/// The most a profile's prefetch fetches (as stored), and at most half the cache budget.
const PROFILE_BUDGET: u64 = 1 << 30;
/// By default, a root whose chunks not here take less than this in S3 is fetched whole, in the
/// background, when first looked up on this host (at most half the cache budget, when one is
/// set): small roots cost one round trip in all, not one per file.
pub(crate) const SMALL_ROOT: u64 = 64 << 20;
/// Prefetch reads over gaps this small between wanted chunks of a pack (one GET, not two).
const PREFETCH_GAP: u64 = 256 << 10;
/// A link whose small GETs take this long or more is far: over it, a round trip costs more than
/// the bytes a neighbour read or a whole-file read adds (S3 from another place: 10–30 ms); over
/// a near one (a server on the same host or rack) they cost more than they save.
const FAR: std::time::Duration = std::time::Duration::from_millis(4);

/// The third miss in a file larger than two windows (and at most [`WHOLE_FILE_MAX`], or a
/// quarter of the cache budget) has the rest of the file fetched in the background: a program
/// faulting through a library by mmap touches it in many places, each a round trip otherwise.
const WHOLE_AFTER: u32 = 3;
const WHOLE_FILE_MAX: u64 = 512 << 20;
/// An ELF file at least this large has what a loader reads of it fetched when its first bytes
/// arrive (see [`Store::fetch_for_loader`]), at most [`LOADER_MAX`] bytes of it: below it, the
/// readahead window fetches a file whole anyway.
const LOADER_MIN: u64 = 2 * WINDOW_MIN;
const LOADER_MAX: u64 = 512 << 20;
/// Files whose readahead window is remembered (beyond this the memory is cleared).
const WINDOWS_KEPT: usize = 4096;

/// What the read path remembers of a file being read from S3.
pub(crate) struct FileReads {
    /// The chunk after the last window fetched, and that window's size.
    next: usize,
    window: u64,
    /// Misses planned so far.
    misses: u32,
}

/// A neighbour read in flight: the pack, the byte range, and whether it has landed.
pub(crate) type BlindRead = (Digest, Range<u64>, watch::Receiver<bool>);

/// What a flight ends with; `None` while in the air.
pub(crate) type Landing = Option<Result<Bytes>>;
/// One fetch of a chunk that every reader wanting it waits for.
pub(crate) type Flight = watch::Receiver<Landing>;

/// One ranged GET of a remote pack.
pub(crate) struct Piece {
    pack: Digest,
    what: PieceKind,
    class: Class,
    /// The root a reader read it for (for the per-root counters), if known.
    root: Option<Digest>,
    /// Fetched unasked, likely never read (the rest of a large file): its chunks that no
    /// reader waits for when it lands are kept as S3 sent them, checked when first read, not
    /// decoded now (on a small host, decoding what is never read starves what is).
    lazy: bool,
}

/// Who waits for a piece, which says when it is sent.
#[derive(Clone)]
pub(crate) enum Class {
    /// A reader: sent at once.
    Demand,
    /// Readahead, neighbours: behind [`BACKGROUND_GETS`] permits.
    Background,
    /// The rest of a large file: behind [`REST_GETS`] permits, so that what it fetches, which
    /// a program may never read, leaves most of the link to what it reads now.
    Rest,
    /// A prefetch: behind [`PREFETCH_GETS`] permits, and dropped once its prefetch stopped.
    Prefetch(Arc<Prefetch>),
}

/// One prefetch of a root (its profile, or the whole of a small root).
pub(crate) struct Prefetch {
    tree: Digest,
    what: &'static str,
    stopped: std::sync::atomic::AtomicBool,
}

enum PieceKind {
    /// Chunks known to sit back to back from the first's offset, each with its flight.
    Known(Vec<(Digest, RemoteLocator, watch::Sender<Landing>)>),
    /// Bytes read blind (neighbours): whole records in them are parsed and kept if wanted;
    /// the sender says when they landed (readers of chunks in the range wait for it).
    Blind(Range<u64>, watch::Sender<bool>),
}

impl Piece {
    fn range(&self) -> Range<u64> {
        match &self.what {
            PieceKind::Known(c) => {
                let start = c[0].1.offset;
                start..c.iter().map(|(_, l, _)| l.offset + u64::from(l.stored_len)).max().unwrap_or(start)
            }
            PieceKind::Blind(r, _) => r.clone(),
        }
    }
}

/// What a miss leads to.
pub(crate) enum Plan {
    /// The chunk is being fetched: wait for it.
    Wait(Flight),
    /// The chunk may be in a neighbour read in flight: wait for it to land, then look again.
    WaitNeighbours(watch::Receiver<bool>),
    /// GETs to send; the chunk's flight is among them.
    Send(Vec<Piece>, Flight),
    /// S3 has no place for the chunk.
    NotInS3,
}

/// Whether an error says a place is wrong (its next place may be tried), not that S3 could
/// not be asked.
pub(crate) fn place_is_wrong(e: &Error) -> bool {
    matches!(
        e,
        Error::Corrupt { .. } | Error::Remote { source: RemoteError::NotFound | RemoteError::ShortRead { .. }, .. }
    )
}

impl Store {
    /// The chunk's flight, if it is being fetched. A flight whose fetch went away without
    /// landing (its task dropped) is forgotten.
    pub(crate) fn flight(&self, id: &Digest) -> Option<Flight> {
        let mut flights = self.read.flights.lock().unwrap();
        let f = flights.get(id)?;
        if f.borrow().is_none() && f.has_changed().is_err() {
            flights.remove(id);
            return None;
        }
        Some(f.clone())
    }

    /// The readahead window for a miss at chunk `i` of `file`, which fetches chunks up to (not
    /// including) the one the caller then records with [`Store::fetched_up_to`]; and whether
    /// this miss is the one that has the rest of the file fetched (see [`WHOLE_AFTER`]).
    fn window(&self, file: &FileRecord, i: usize) -> (u64, bool) {
        let w = self.read.windows.lock().unwrap();
        let (window, misses) = match w.get(&file.chunks[0].id) {
            Some(r) if r.next == i => ((r.window * 2).min(WINDOW_MAX), r.misses + 1),
            Some(r) => (WINDOW_MIN, r.misses + 1),
            None => (WINDOW_MIN, 1),
        };
        let (window, limit) = match self.opts.cache_bytes {
            // Readahead stays a small part of the cache: what it brings is not evicted before
            // it is read.
            Some(c) => (window.min((c / 8).max(PIECE_MIN)), WHOLE_FILE_MAX.min(c / 4)),
            None => (window, WHOLE_FILE_MAX),
        };
        (window, misses == WHOLE_AFTER && file.size > 2 * WINDOW_MIN && file.size <= limit)
    }

    fn fetched_up_to(&self, file: &FileRecord, next: usize, window: u64) {
        let mut w = self.read.windows.lock().unwrap();
        if w.len() >= WINDOWS_KEPT {
            w.clear();
        }
        let r = w.entry(file.chunks[0].id).or_insert(FileReads { next, window, misses: 0 });
        (r.next, r.window, r.misses) = (next, window, r.misses.saturating_add(1));
    }

    /// Plans the fetch of chunk `i` of `file` (blocking: index lookups), read below `root` if
    /// known, and registers the flights of what it will fetch.
    pub(crate) fn plan_fetch(&self, file: &FileRecord, i: usize, root: Option<Digest>) -> Result<Plan> {
        let id = file.chunks[i].id;
        if let Some(f) = self.flight(&id) {
            self.hurry(&id);
            return Ok(Plan::Wait(f));
        }
        let Some(first) = self.place_to_fetch(&id)? else { return Ok(Plan::NotInS3) };
        let rl = first.loc;
        if let Some(landed) = self.in_blind_read(&rl) {
            return Ok(Plan::WaitNeighbours(landed));
        }
        let (window, whole) = self.window(file, i);
        let mut run = vec![(id, rl)];
        let mut end = rl.offset + u64::from(rl.stored_len);
        let mut to_file_end = true;
        for c in &file.chunks[i + 1..] {
            if end - rl.offset >= window {
                to_file_end = false;
                break;
            }
            if self.chunks.contains(&c.id) || self.index.has_chunk(&c.id)? {
                to_file_end = false;
                break;
            }
            match self.index.remote_place_in(&c.id, &rl.pack)? {
                Some(p) if p.state != Place::Wrong && p.loc.offset == end + RECORD_HEADER => {
                    end = p.loc.offset + u64::from(p.loc.stored_len);
                    run.push((c.id, p.loc));
                }
                _ => {
                    to_file_end = false;
                    break;
                }
            }
        }
        // Register the flights; the run stops at a chunk someone else is fetching.
        let mut flights = self.read.flights.lock().unwrap();
        if let Some(f) = flights.get(&id) {
            let f = f.clone();
            drop(flights);
            self.hurry(&id);
            return Ok(Plan::Wait(f));
        }
        let mut chunks = Vec::with_capacity(run.len());
        for (n, (cid, loc)) in run.into_iter().enumerate() {
            if n > 0 && flights.contains_key(&cid) {
                to_file_end = false;
                break;
            }
            let (tx, rx) = watch::channel(None);
            flights.insert(cid, rx);
            chunks.push((cid, loc, tx));
        }
        let wait = flights.get(&id).expect("registered").clone();
        drop(flights);
        self.fetched_up_to(file, i + chunks.len(), window);
        let blind_from = chunks.last().map(|(_, l, _)| l.offset + u64::from(l.stored_len)).expect("one chunk");
        let mut pieces = cut(rl.pack, chunks, window);
        // A file a loader is reading has its rest fetched by the loader's fetch, in its turn.
        if whole && self.far_from_s3() && !self.read.loaded.lock().unwrap().contains(&file.chunks[0].id) {
            let rest = self.rest_of_file(file, Class::Rest)?;
            self.read.whole_files.fetch_add(1, Relaxed);
            tracing::debug!(gets = rest.len(), "a large file read in many places: fetching the rest of it");
            pieces.extend(rest);
        }
        if to_file_end && file.size < NEIGHBOURS && self.far_from_s3() {
            let size = {
                let mut tails = self.read.tails.lock().unwrap();
                if tails.len() >= WINDOWS_KEPT {
                    tails.clear();
                }
                let size = match tails.get(&rl.pack) {
                    // The record asked for straddles (or starts at) where the last one ended.
                    Some(&(end, size))
                        if rl.offset.saturating_sub(RECORD_HEADER) <= end
                            && end <= rl.offset + u64::from(rl.stored_len) =>
                    {
                        (size * 2).min(NEIGHBOURS_MAX)
                    }
                    _ => NEIGHBOURS,
                };
                tails.insert(rl.pack, (blind_from.saturating_add(size), size));
                size
            };
            let (tx, rx) = watch::channel(false);
            let range = blind_from..blind_from.saturating_add(size);
            self.read.blind.lock().unwrap().push((rl.pack, range.clone(), rx));
            pieces.push(Piece {
                pack: rl.pack,
                what: PieceKind::Blind(range, tx),
                class: Class::Background,
                root: None,
                lazy: false,
            });
        }
        for p in &mut pieces {
            p.root = root;
        }
        tracing::debug!(
            size = file.size,
            chunk = i,
            gets = pieces.len(),
            bytes = pieces.iter().map(|p| p.range().end - p.range().start).sum::<u64>(),
            "a miss planned"
        );
        Ok(Plan::Send(pieces, wait))
    }

    /// Whether a round trip to S3 costs more than moving a MiB (neighbours and the rest of a
    /// file read in many places are then worth fetching unasked): small GETs have taken
    /// [`FAR`] or more lately, or none was timed yet.
    fn far_from_s3(&self) -> bool {
        self.remote.as_ref().and_then(|r| r.round_trip()).is_none_or(|t| t >= FAR)
    }

    /// A neighbour read in flight that holds the chunk at `rl`, if any.
    fn in_blind_read(&self, rl: &RemoteLocator) -> Option<watch::Receiver<bool>> {
        let mut blind = self.read.blind.lock().unwrap();
        // A read whose task went away without landing is forgotten.
        blind.retain(|(_, _, rx)| *rx.borrow() || rx.has_changed().is_ok());
        let end = rl.offset.saturating_add(u64::from(rl.stored_len));
        blind.iter().find(|(p, r, _)| *p == rl.pack && r.start < rl.offset && end <= r.end).map(|(_, _, rx)| rx.clone())
    }

    /// Sends the pieces of `profile` (hottest first), with the places `places` gives (the index
    /// just decoded, not yet recorded) or, without it, those recorded here.
    pub(crate) fn prefetch_profile(
        self: &Arc<Self>,
        tree: Digest,
        profile: &super::profile::Profile,
        places: Option<&HashMap<Digest, RemoteLocator>>,
    ) {
        self.read.profiles_used.fetch_add(1, Relaxed);
        self.count_for(&tree, |s| s.profile_chunks = profile.chunks.len() as u64);
        let run = Arc::new(Prefetch { tree, what: "profile", stopped: false.into() });
        let pieces = self.plan_profile(profile, places, &run);
        self.send_prefetch(pieces, &run);
    }

    /// The blocking half of [`Store::prefetch_root`]: the rest of a small root (see
    /// [`SMALL_ROOT`]).
    pub(crate) fn prefetch_small(self: &Arc<Self>, tree: Digest) {
        let run = Arc::new(Prefetch { tree, what: "small root", stopped: false.into() });
        let pieces = self.plan_prefetch(&tree, &run);
        self.send_prefetch(pieces, &run);
    }

    fn send_prefetch(self: &Arc<Self>, pieces: Result<Vec<Piece>>, run: &Prefetch) {
        let pieces = match pieces {
            Ok(p) if p.is_empty() => return,
            Ok(p) => p,
            Err(e) => return tracing::debug!(tree = %run.tree, "no {} prefetch: {e}", run.what),
        };
        let bytes: u64 = pieces.iter().map(|p| p.range().end - p.range().start).sum();
        tracing::info!(tree = %run.tree, gets = pieces.len(), bytes, "prefetching by {}", run.what);
        match run.what {
            "profile" => {
                self.read.profile_gets.fetch_add(pieces.len() as u64, Relaxed);
                self.read.profile_bytes.fetch_add(bytes, Relaxed);
            }
            _ => drop(self.read.prefetched_gets.fetch_add(pieces.len() as u64, Relaxed)),
        }
        self.count_for(&run.tree, |s| {
            s.prefetch_gets += pieces.len() as u64;
            s.prefetch_bytes += bytes;
        });
        if let Err(e) = self.launch(pieces) {
            tracing::debug!("no prefetch: {e}");
        }
    }

    /// What a prefetch may fetch: [`PROFILE_BUDGET`] or the small-root limit, and at most half
    /// the cache budget, when one is set.
    fn prefetch_budget(&self, limit: u64) -> u64 {
        match self.opts.cache_bytes {
            Some(c) => limit.min(c / 2),
            None => limit,
        }
    }

    /// The pieces that fetch the chunks of `profile` not here, hottest first, up to the budget.
    fn plan_profile(
        &self,
        profile: &super::profile::Profile,
        places: Option<&HashMap<Digest, RemoteLocator>>,
        run: &Arc<Prefetch>,
    ) -> Result<Vec<Piece>> {
        let budget = self.prefetch_budget(PROFILE_BUDGET);
        let mut by_pack: HashMap<Digest, Vec<(Digest, RemoteLocator, usize)>> = HashMap::new();
        let mut total = 0u64;
        for (rank, id) in profile.chunks.iter().enumerate() {
            let loc = match places {
                Some(_) if self.chunks.contains(id) || self.index.has_chunk(id)? => None,
                Some(p) => p.get(id).copied(),
                None => self.to_fetch(id)?,
            };
            let Some(loc) = loc else { continue };
            total += u64::from(loc.stored_len) + RECORD_HEADER;
            if total > budget {
                break;
            }
            by_pack.entry(loc.pack).or_default().push((*id, loc, rank));
        }
        Ok(self.background_pieces(by_pack, Class::Prefetch(run.clone())))
    }

    /// The pieces that fetch every chunk of `tree` not here, if they fit the small-root budget
    /// (none otherwise), with their flights registered.
    fn plan_prefetch(&self, tree: &Digest, run: &Arc<Prefetch>) -> Result<Vec<Piece>> {
        let budget = self.prefetch_budget(self.opts.prefetch_below);
        if budget == 0 {
            return Ok(Vec::new());
        }
        let mut by_pack: HashMap<Digest, Vec<(Digest, RemoteLocator, usize)>> = HashMap::new();
        let mut total = 0u64;
        let all = self.each_chunk_to_fetch(tree, |id, loc| {
            total += u64::from(loc.stored_len) + RECORD_HEADER;
            by_pack.entry(loc.pack).or_default().push((id, loc, 0));
            Ok(total <= budget)
        })?;
        if !all {
            return Ok(Vec::new());
        }
        Ok(self.background_pieces(by_pack, Class::Prefetch(run.clone())))
    }

    /// Pieces of `class` fetching `by_pack` (chunks, their places and ranks, grouped by remote
    /// pack): per pack in offset order, coalesced over gaps under [`PREFETCH_GAP`] into pieces
    /// of at most [`PIECE_MAX`], with their flights registered (chunks already in flight left
    /// out); lowest rank first.
    fn background_pieces(
        &self,
        by_pack: HashMap<Digest, Vec<(Digest, RemoteLocator, usize)>>,
        class: Class,
    ) -> Vec<Piece> {
        let mut pieces = Vec::new();
        let mut flights = self.read.flights.lock().unwrap();
        for (pack, mut chunks) in by_pack {
            chunks.sort_by_key(|(_, l, _)| l.offset);
            let mut cur: Vec<(Digest, RemoteLocator, watch::Sender<Landing>)> = Vec::new();
            let mut rank = usize::MAX;
            for (id, loc, r) in chunks {
                if flights.contains_key(&id) {
                    continue;
                }
                if let Some((_, first, _)) = cur.first() {
                    let end = cur.iter().map(|(_, l, _)| l.offset + u64::from(l.stored_len)).max().unwrap_or(0);
                    if loc.offset > end + PREFETCH_GAP
                        || loc.offset + u64::from(loc.stored_len) - first.offset > PIECE_MAX
                    {
                        let what = PieceKind::Known(std::mem::take(&mut cur));
                        pieces.push((
                            std::mem::replace(&mut rank, usize::MAX),
                            Piece { pack, what, class: class.clone(), root: None, lazy: false },
                        ));
                    }
                }
                let (tx, rx) = watch::channel(None);
                flights.insert(id, rx);
                cur.push((id, loc, tx));
                rank = rank.min(r);
            }
            if !cur.is_empty() {
                pieces.push((
                    rank,
                    Piece { pack, what: PieceKind::Known(cur), class: class.clone(), root: None, lazy: false },
                ));
            }
        }
        pieces.sort_by_key(|(rank, _)| *rank);
        pieces.into_iter().map(|(_, p)| p).collect()
    }

    /// The rest of a large file being read in many places (a library faulted through by mmap):
    /// lazy pieces of `class` for every chunk of it not here and not in flight.
    fn rest_of_file(&self, file: &FileRecord, class: Class) -> Result<Vec<Piece>> {
        self.pieces_for(file, 0..file.chunks.len(), class, true, u64::MAX)
    }

    /// Pieces of `class` (`lazy` or not) for the chunks `indices` of `file` that are neither
    /// here nor in flight, sent in that order, until `budget` bytes (as stored) are asked for.
    fn pieces_for(
        &self,
        file: &FileRecord,
        indices: impl Iterator<Item = usize>,
        class: Class,
        lazy: bool,
        budget: u64,
    ) -> Result<Vec<Piece>> {
        let mut by_pack: HashMap<Digest, Vec<(Digest, RemoteLocator, usize)>> = HashMap::new();
        let (mut seen, mut total) = (std::collections::HashSet::new(), 0u64);
        for (rank, i) in indices.enumerate() {
            let id = file.chunks[i].id;
            if !seen.insert(id) {
                continue;
            }
            if let Some(loc) = self.to_fetch(&id)? {
                total += u64::from(loc.stored_len) + RECORD_HEADER;
                if total > budget {
                    break;
                }
                by_pack.entry(loc.pack).or_default().push((id, loc, rank));
            }
        }
        let mut pieces = self.background_pieces(by_pack, class);
        for p in &mut pieces {
            p.lazy = lazy;
        }
        Ok(pieces)
    }

    /// Chunk 0 of `file` (its first bytes `head`) just arrived for a reader: if it is a large
    /// ELF library or executable, what a loader reads of it (see `elf.rs`) is fetched, once per
    /// file, by a task: the program headers, then `.dynamic` and the writable segments and the
    /// tables `.dynamic` names, at once, in parallel GETs, before the loader faults through them
    /// page by page; then the rest of what is mapped. Returns at once.
    pub(crate) fn fetch_for_loader(self: &Arc<Self>, file: &Arc<FileRecord>, head: &Bytes, root: Option<Digest>) {
        if file.size < LOADER_MIN || !self.far_from_s3() {
            return;
        }
        let (Some(ph), Some(remote)) = (super::elf::program_headers(head, file.size), self.remote.as_ref()) else {
            return;
        };
        {
            let mut seen = self.read.loaded.lock().unwrap();
            if seen.len() >= WINDOWS_KEPT {
                seen.clear();
            }
            if !seen.insert(file.chunks[0].id) {
                return;
            }
        }
        let (store, file) = (Pending::start(self), file.clone());
        remote.handle().spawn(async move {
            let t = std::time::Instant::now();
            let read = |r: Range<u64>| store.read_async_in(root, file.clone(), r.start, (r.end - r.start) as usize);
            // The program headers (a loader reads them next; they may lie far from the start).
            let Ok(ph) = read(ph).await else { return };
            let segs = super::elf::segments(&ph, file.size);
            let mut want: Vec<Range<u64>> = segs.writable.clone();
            want.extend(segs.dynamic.clone());
            let mut bytes = store.fetch_ranges(&file, want, root, false).await;
            if let Some(d) = segs.dynamic.clone()
                && let Ok(dynamic) = read(d).await
            {
                bytes += store.fetch_ranges(&file, super::elf::tables(&dynamic, &segs), root, false).await;
            }
            // Then the rest of what it maps, behind reads: the program runs through it.
            bytes += store.fetch_ranges(&file, segs.mapped(), root, true).await;
            store.read.loader_bytes.fetch_add(bytes, Relaxed);
            tracing::debug!(
                size = file.size,
                bytes,
                ms = t.elapsed().as_millis(),
                "fetching what a loader reads of a file"
            );
        });
    }

    /// Sends GETs for the chunks of `file` covering `ranges` (see [`Store::pieces_for`]), at
    /// most [`LOADER_MAX`] bytes (as stored), or a quarter of the cache budget: at once, or
    /// (`rest`) lazy pieces behind the rest permits. Returns the bytes asked for.
    async fn fetch_ranges(
        self: &Arc<Self>,
        file: &Arc<FileRecord>,
        ranges: Vec<Range<u64>>,
        root: Option<Digest>,
        rest: bool,
    ) -> u64 {
        let (store, file) = (self.clone(), file.clone());
        let pieces = tokio::task::spawn_blocking(move || {
            let budget = store.opts.cache_bytes.map_or(LOADER_MAX, |c| LOADER_MAX.min(c / 4));
            let indices = ranges
                .iter()
                .filter(|r| r.start < r.end && r.end <= file.size)
                .flat_map(|r| file.chunk_at(r.start)..=file.chunk_at(r.end - 1));
            let class = if rest { Class::Rest } else { Class::Demand };
            store.pieces_for(&file, indices, class, rest, budget)
        })
        .await;
        let Ok(Ok(mut pieces)) = pieces else { return 0 };
        for p in &mut pieces {
            p.root = root;
        }
        let bytes = pieces.iter().map(|p| p.range().end - p.range().start).sum();
        match self.launch(pieces) {
            Ok(()) => bytes,
            Err(_) => 0,
        }
    }

    /// Fetches the rest of `tree` in the background (see [`Store::fill`]). Returns at once.
    pub(crate) fn fill_root(self: &Arc<Self>, tree: Digest) {
        let Some(remote) = self.remote.as_ref() else { return };
        let store = Pending::start(self);
        remote.handle().spawn_blocking(move || match store.fill(&tree) {
            Ok(bytes) => tracing::info!(tree = %tree, bytes, "filled from S3"),
            Err(e) => tracing::warn!(tree = %tree, "filling from S3 stopped: {e}"),
        });
    }

    /// Fetches every chunk of `tree` not here, [`FILL_GETS`] pieces at a time, within half the
    /// cache budget: a walk of the trees, each run of chunks that sit together in a remote pack
    /// one piece of up to [`PIECE_MAX`]. A piece's flights are registered only when it is sent,
    /// so a reader waits for at most one piece. Stops when the store closes, or at the first
    /// failed GET. Returns the bytes fetched (as stored).
    pub(crate) fn fill(&self, tree: &Digest) -> Result<u64> {
        let remote = self.remote_or_err()?;
        let budget = self.prefetch_budget(u64::MAX);
        let mut sent = std::collections::VecDeque::new();
        let (mut total, mut run): (u64, Vec<(Digest, RemoteLocator)>) = (0, Vec::new());
        let mut send = |run: Vec<(Digest, RemoteLocator)>, sent: &mut std::collections::VecDeque<_>| -> Result<bool> {
            let chunks = {
                let mut flights = self.read.flights.lock().unwrap();
                let mut out = Vec::with_capacity(run.len());
                for (id, loc) in run {
                    if let std::collections::hash_map::Entry::Vacant(v) = flights.entry(id) {
                        let (tx, rx) = watch::channel(None);
                        v.insert(rx);
                        out.push((id, loc, tx));
                    }
                }
                out
            };
            if chunks.is_empty() {
                return Ok(true);
            }
            let p = Piece {
                pack: chunks[0].1.pack,
                what: PieceKind::Known(chunks),
                class: Class::Background,
                root: Some(*tree),
                lazy: false,
            };
            total += p.range().end - p.range().start;
            while sent.len() >= FILL_GETS {
                let (p, get): (Piece, tokio::task::JoinHandle<Result<Bytes>>) = sent.pop_front().expect("full");
                let got = remote.wait(get).unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
                let failed = got.as_ref().err().filter(|e| !place_is_wrong(e)).cloned();
                self.land(p, got);
                if let Some(e) = failed {
                    return Err(e);
                }
            }
            if self.read.stopping.load(Relaxed) || total > budget {
                self.abandon(p);
                return Ok(false);
            }
            let get = remote.handle().spawn(get_piece(remote, &p));
            sent.push_back((p, get));
            Ok(true)
        };
        self.each_chunk_to_fetch(tree, |id, loc| {
            // A run goes on while its chunks follow one another in one pack.
            let follows = run.last().is_some_and(|(_, l)| {
                l.pack == loc.pack && loc.offset == l.offset + u64::from(l.stored_len) + RECORD_HEADER
            });
            let size = run.last().map_or(0, |(_, l)| l.offset + u64::from(l.stored_len))
                - run.first().map_or(0, |(_, l)| l.offset);
            if !run.is_empty() && (!follows || size >= PIECE_MAX) && !send(std::mem::take(&mut run), &mut sent)? {
                return Ok(false);
            }
            run.push((id, loc));
            Ok(true)
        })?;
        if !run.is_empty() {
            send(run, &mut sent)?;
        }
        for (p, get) in sent {
            self.land_when(remote, p, get);
        }
        Ok(total)
    }

    /// Walks the closure of `tree` and calls `f` with each distinct chunk of it that is not
    /// here and has a place in S3, until `f` says stop (`false`). Whether the walk went through.
    fn each_chunk_to_fetch(
        &self,
        tree: &Digest,
        mut f: impl FnMut(Digest, RemoteLocator) -> Result<bool>,
    ) -> Result<bool> {
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![*tree];
        while let Some(t) = stack.pop() {
            if !seen.insert(t) {
                continue;
            }
            for e in self.tree(&t)?.entries() {
                match &e.kind {
                    crate::EntryKind::Dir { digest, .. } => stack.push(*digest),
                    crate::EntryKind::File { digest, .. } if seen.insert(*digest) => {
                        for c in &self.file(digest)?.chunks {
                            if !seen.insert(c.id) {
                                continue;
                            }
                            if let Some(loc) = self.to_fetch(&c.id)?
                                && !f(c.id, loc)?
                            {
                                return Ok(false);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(true)
    }

    /// Where to fetch chunk `id` from, unless it is in memory or here (or S3 has no place).
    fn to_fetch(&self, id: &Digest) -> Result<Option<RemoteLocator>> {
        if self.chunks.contains(id) || self.index.has_chunk(id)? {
            return Ok(None);
        }
        Ok(self.index.remote_place(id)?.map(|p| p.loc))
    }

    /// Sends the pieces' GETs on the I/O runtime, each when its class allows (see [`Class`]);
    /// each piece's chunks are checked and kept as it arrives. Returns at once.
    pub(crate) fn launch(self: &Arc<Self>, pieces: Vec<Piece>) -> Result<()> {
        let remote = self.remote_or_err()?.clone();
        for p in pieces {
            let (store, remote) = (Pending::start(self), remote.clone());
            let permits = match &p.class {
                Class::Demand => None,
                Class::Background => Some(self.read.background.clone()),
                Class::Rest => Some(self.read.rest.clone()),
                Class::Prefetch(_) => Some(self.read.prefetch.clone()),
            };
            let hurry = permits.as_ref().map(|_| self.queue(&p));
            remote.clone().handle().spawn(async move {
                let _permit = match (permits, &hurry) {
                    (Some(permits), Some(hurry)) => tokio::select! {
                        biased;
                        _ = hurry.notified() => None,
                        p = permits.acquire_owned() => p.ok(),
                    },
                    _ => None,
                };
                if let Some(h) = &hurry {
                    store.dequeue(&p, h);
                }
                // Dropped unsent: its flights end, and their readers (if any) fetch on demand.
                if store.read.stopping.load(Relaxed)
                    || matches!(&p.class, Class::Prefetch(r) if r.stopped.load(Relaxed))
                {
                    return store.abandon(p);
                }
                let got = get_piece(&remote, &p).await;
                if let (Class::Prefetch(run), Err(e)) = (&p.class, &got)
                    && !place_is_wrong(e)
                {
                    if !run.stopped.swap(true, Relaxed) {
                        tracing::warn!(tree = %run.tree, "prefetch by {} stopped: {e}", run.what);
                    }
                    return store.abandon(p);
                }
                let _ = tokio::task::spawn_blocking(move || store.land(p, got)).await;
            });
        }
        Ok(())
    }

    /// Puts the chunks of a piece waiting for a permit in line; the `Notify` sends it at once.
    fn queue(&self, p: &Piece) -> Arc<tokio::sync::Notify> {
        let n = Arc::new(tokio::sync::Notify::new());
        if let PieceKind::Known(chunks) = &p.what {
            let mut q = self.read.queued.lock().unwrap();
            for (id, _, _) in chunks {
                q.insert(*id, n.clone());
            }
        }
        n
    }

    fn dequeue(&self, p: &Piece, n: &Arc<tokio::sync::Notify>) {
        if let PieceKind::Known(chunks) = &p.what {
            let mut q = self.read.queued.lock().unwrap();
            for (id, _, _) in chunks {
                if q.get(id).is_some_and(|m| Arc::ptr_eq(m, n)) {
                    q.remove(id);
                }
            }
        }
    }

    /// A reader waits for chunk `id`: if it is in a piece still in line, that piece goes now.
    pub(crate) fn hurry(&self, id: &Digest) {
        if let Some(n) = self.read.queued.lock().unwrap().get(id) {
            n.notify_one();
        }
    }

    /// The store is closing: background pieces still in line are dropped, none is sent any
    /// more (those in the air land; [`Store::settle`] waits for them).
    pub fn stop_background(&self) {
        self.read.stopping.store(true, Relaxed);
        self.read.background.close();
        self.read.rest.close();
        self.read.prefetch.close();
    }

    /// Drops a piece unsent: its flights end (their readers, if any, fetch on demand).
    fn abandon(&self, p: Piece) {
        if let PieceKind::Known(chunks) = &p.what {
            self.retire(chunks.iter().map(|(id, _, tx)| (id, tx)));
        }
    }

    /// [`Store::launch`] for a thread that may block: sends the GETs, [`BACKGROUND_GETS`] at a
    /// time (what is in memory stays bounded however large the plan), checks and keeps each
    /// piece in order, and returns when all have landed.
    pub(crate) fn send_and_wait(&self, pieces: Vec<Piece>) -> Result<()> {
        let remote = self.remote_or_err()?;
        let mut sent = std::collections::VecDeque::new();
        for p in pieces {
            if sent.len() == BACKGROUND_GETS {
                let (p, get) = sent.pop_front().expect("full");
                self.land_when(remote, p, get);
            }
            let get = remote.handle().spawn(get_piece(remote, &p));
            sent.push_back((p, get));
        }
        for (p, get) in sent {
            self.land_when(remote, p, get);
        }
        Ok(())
    }

    fn land_when(&self, remote: &crate::remote::Remote, p: Piece, get: tokio::task::JoinHandle<Result<Bytes>>) {
        let got = remote.wait(get).unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        self.land(p, got);
    }

    /// A piece's GET finished: checks its chunks, hands them to their readers, keeps them,
    /// and retires their flights. Never fails: errors go to the readers.
    fn land(&self, p: Piece, got: Result<Bytes>) {
        let start = p.range().start;
        let root = p.root.or(match &p.class {
            Class::Prefetch(run) => Some(run.tree),
            _ => None,
        });
        if let (Some(root), Ok(b)) = (root, &got) {
            self.count_for(&root, |s| {
                s.gets += 1;
                s.fetched_bytes += b.len() as u64;
            });
        }
        match p.what {
            PieceKind::Known(chunks) => {
                let bytes = match got {
                    Ok(b) => b,
                    Err(e) => {
                        let wrong = place_is_wrong(&e);
                        for (id, _, tx) in &chunks {
                            if wrong && let Err(f) = self.forget_place(id, &p.pack, &e) {
                                tracing::warn!("cannot record a wrong place: {f}");
                            }
                            tx.send_replace(Some(Err(e.clone())));
                        }
                        return self.retire(chunks.iter().map(|(id, _, tx)| (id, tx)));
                    }
                };
                let (mut good, mut unchecked) = (Vec::with_capacity(chunks.len()), Vec::new());
                for (id, rl, tx) in &chunks {
                    let at = (rl.offset - start) as usize;
                    let stored = bytes.slice(at..at + rl.stored_len as usize);
                    // Only the flights map holds its receiver: no reader waits for it.
                    if p.lazy && tx.receiver_count() <= 1 {
                        unchecked.push((*id, *rl, stored));
                        continue;
                    }
                    let place = || format!("fetched from S3 pack {} at {}", rl.pack, rl.offset);
                    match decode_chunk(id, rl, stored.clone(), &place) {
                        Ok(data) => {
                            self.chunks.insert(*id, data.clone());
                            tx.send_replace(Some(Ok(data)));
                            good.push((*id, *rl, stored));
                        }
                        Err(e) => {
                            if let Err(f) = self.forget_place(id, &rl.pack, &e) {
                                tracing::warn!("cannot record a wrong place: {f}");
                            }
                            tx.send_replace(Some(Err(e)));
                        }
                    }
                }
                self.keep(&good, true);
                // Kept before their flights end: a reader that came since finds them here.
                self.keep(&unchecked, false);
                self.retire(chunks.iter().map(|(id, _, tx)| (id, tx)));
            }
            PieceKind::Blind(_, landed) => {
                match got {
                    Ok(bytes) => {
                        let good = self.neighbours(&p.pack, start, &bytes);
                        landed.send_replace(true);
                        self.keep(&good, true);
                    }
                    Err(e) => tracing::debug!(pack = %p.pack, "reading the neighbours of a file failed: {e}"),
                }
                landed.send_replace(true);
                self.read.blind.lock().unwrap().retain(|(_, _, rx)| !rx.same_channel(&landed.subscribe()));
            }
        }
    }

    /// The chunks in blind bytes `bytes` (from offset `start` of remote `pack`) that this host
    /// wants: whole records at a place the index knows for that chunk, not here, not being
    /// fetched, and matching their digest. Each is put in memory.
    fn neighbours(&self, pack: &Digest, start: u64, bytes: &Bytes) -> Vec<(Digest, RemoteLocator, Bytes)> {
        let mut good = Vec::new();
        for (id, data) in records_in(bytes) {
            let offset = start + data.start as u64;
            // The place the index knows gives the lengths and codec: a hostile header gives
            // nothing but where the next record starts.
            let known = match self.index.remote_place_in(&id, pack) {
                Ok(Some(p)) if p.state != Place::Wrong && p.loc.offset == offset => p.loc,
                _ => continue,
            };
            if known.stored_len as usize != data.len()
                || self.chunks.contains(&id)
                || self.flight(&id).is_some()
                || self.index.has_chunk(&id).unwrap_or(true)
            {
                continue;
            }
            let stored = bytes.slice(data);
            let place = || format!("fetched from S3 pack {pack} at {offset}");
            match decode_chunk(&id, &known, stored.clone(), &place) {
                Ok(data) => {
                    self.chunks.insert(id, data);
                    good.push((id, known, stored));
                }
                Err(e) => {
                    if let Err(f) = self.forget_place(&id, pack, &e) {
                        tracing::warn!("cannot record a wrong place: {f}");
                    }
                }
            }
        }
        good
    }

    /// Keeps fetched chunks on disk (a read has its bytes whether or not they could be kept):
    /// `checked`, or as S3 sent them, to be checked when first read (see [`Piece::lazy`]).
    fn keep(&self, good: &[(Digest, RemoteLocator, Bytes)], checked: bool) {
        if good.is_empty() {
            return;
        }
        self.read.fetched_bytes.fetch_add(good.iter().map(|(_, l, _)| u64::from(l.raw_len)).sum(), Relaxed);
        if let Err(e) = self.keep_fetched(good, false, checked) {
            tracing::warn!("cannot keep chunks fetched from S3 on disk (they are served anyway): {e}");
        }
    }

    fn retire<'a>(&self, flights: impl Iterator<Item = (&'a Digest, &'a watch::Sender<Landing>)>) {
        let mut map = self.read.flights.lock().unwrap();
        for (id, tx) in flights {
            if map.get(id).is_some_and(|rx| rx.same_channel(&tx.subscribe())) {
                map.remove(id);
            }
        }
    }
}

/// Cuts a run into pieces: the first small (the reader waits for it), the rest about a
/// quarter of the window each, within [`PIECE_MIN`, `PIECE_MAX`].
fn cut(pack: Digest, chunks: Vec<(Digest, RemoteLocator, watch::Sender<Landing>)>, window: u64) -> Vec<Piece> {
    let piece = (window / 4).clamp(PIECE_MIN, PIECE_MAX);
    let mut pieces = Vec::new();
    let mut cur: Vec<(Digest, RemoteLocator, watch::Sender<Landing>)> = Vec::new();
    let mut bytes = 0u64;
    for c in chunks {
        bytes += u64::from(c.1.stored_len) + RECORD_HEADER;
        cur.push(c);
        let limit = if pieces.is_empty() { DEMAND_PIECE } else { piece };
        if bytes >= limit {
            let class = if pieces.is_empty() { Class::Demand } else { Class::Background };
            pieces.push(Piece {
                pack,
                what: PieceKind::Known(std::mem::take(&mut cur)),
                class,
                root: None,
                lazy: false,
            });
            bytes = 0;
        }
    }
    if !cur.is_empty() {
        let class = if pieces.is_empty() { Class::Demand } else { Class::Background };
        pieces.push(Piece { pack, what: PieceKind::Known(cur), class, root: None, lazy: false });
    }
    pieces
}

fn get_piece(
    remote: &crate::remote::Remote,
    p: &Piece,
) -> impl std::future::Future<Output = Result<Bytes>> + Send + 'static {
    remote.get_range_of(format::pack_key(&p.pack), p.range(), !matches!(p.what, PieceKind::Blind(..)))
}
