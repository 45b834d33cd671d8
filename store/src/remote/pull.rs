//! Pull: every chunk of a root that is not here, fetched now (instead of on first read).
//!
//! A remote pack mostly needed (three quarters of it up to its last needed byte) comes whole,
//! streamed to a new local fetched pack while its BLAKE3 is checked against its name, and
//! becomes that pack as is (the records are the same; only the local magic precedes them), so
//! nothing is decoded or copied. Other packs come as runs of neighbouring chunks of up to
//! [`PULL_RANGE`], each chunk verified by its digest. [`PARALLEL_GETS`] threads each fetch,
//! verify and keep one pack or run at a time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::error::{Error, RemoteError, Result};
use crate::local::index::{Batch, Place};
use crate::local::pack::{PACK_HEADER, PackInfo, PackWriter, RECORD_HEADER};
use crate::model::digest::Digest;
use crate::model::records::RemoteLocator;
use crate::remote::fetch::Run;
use crate::remote::format;
use crate::store::Store;

/// A pull coalesces neighbouring chunks of a pack into ranged GETs of up to this size.
const PULL_RANGE: u64 = 16 << 20;
/// Ranged GETs a pull has in flight (each verified on its own thread while others download).
const PARALLEL_GETS: usize = 4;

/// What a pull did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PullReport {
    pub tree: Digest,
    pub chunks: u64,
    pub fetched_chunks: u64,
    pub fetched_bytes: u64,
}

impl Store {
    /// Fetches every chunk of a root that is not here (finding the root in S3 if need be).
    pub fn pull(&self, what: &str, progress: &(dyn Fn(u64, u64) + Sync)) -> Result<PullReport> {
        let tree = self.resolve(what)?.tree;
        // Kept from gc while its chunks are fetched and indexed.
        let _pin = self.pin(&tree)?;
        let c = self.closure(&tree)?;
        let (fetched_chunks, fetched_bytes) = self.fetch_missing(&c.chunks, progress)?;
        self.evict()?;
        Ok(PullReport { tree, chunks: c.chunks.len() as u64, fetched_chunks, fetched_bytes })
    }

    /// Fetches the chunks of `ids` that are not here, from the places S3's indexes gave them,
    /// and returns how many came and their raw bytes. Stops at the first failed GET.
    pub(crate) fn fetch_missing(&self, ids: &[Digest], progress: &(dyn Fn(u64, u64) + Sync)) -> Result<(u64, u64)> {
        let remote = self.remote_or_err()?;
        // Chunks found here are not fetched: gc must not remove them meanwhile.
        let _writer = self.gc_lock.read().unwrap();
        let mut by_pack: HashMap<Digest, Vec<(Digest, RemoteLocator)>> = HashMap::new();
        for id in ids {
            if self.index.has_chunk(id)? {
                continue;
            }
            let rl = self.place_to_fetch(id)?.ok_or(Error::Missing { what: "chunk (here or in S3)", digest: *id })?.loc;
            by_pack.entry(rl.pack).or_default().push((*id, rl));
        }
        let total: u64 = by_pack.values().flatten().map(|(_, rl)| u64::from(rl.stored_len)).sum();
        let mut jobs: Vec<(bool, Run)> = Vec::new();
        for (_, mut chunks) in by_pack {
            chunks.sort_by_key(|(_, rl)| rl.offset);
            let needed: u64 = chunks.iter().map(|(_, rl)| RECORD_HEADER + u64::from(rl.stored_len)).sum();
            let span = chunks.iter().map(|(_, rl)| rl.offset + u64::from(rl.stored_len)).max().unwrap_or(0);
            if needed * 4 >= span * 3 {
                jobs.push((true, Run { chunks }));
                continue;
            }
            let (mut run, mut start, mut end) = (Vec::new(), 0u64, 0u64);
            for (id, rl) in chunks {
                let rl_end = rl.offset + u64::from(rl.stored_len);
                if !run.is_empty() && (rl.offset > end + (1 << 20) || rl_end - start > PULL_RANGE) {
                    jobs.push((false, Run { chunks: std::mem::take(&mut run) }));
                }
                if run.is_empty() {
                    (start, end) = (rl.offset, rl_end);
                }
                end = end.max(rl_end);
                run.push((id, rl));
            }
            jobs.push((false, Run { chunks: run }));
        }
        let next = AtomicUsize::new(0);
        let done = AtomicU64::new(0);
        let out = Mutex::new((0u64, 0u64, None::<Error>));
        std::thread::scope(|s| {
            for _ in 0..PARALLEL_GETS {
                s.spawn(|| {
                    while out.lock().unwrap().2.is_none() {
                        let Some((whole, run)) = jobs.get(next.fetch_add(1, Ordering::SeqCst)) else { return };
                        let r = if *whole {
                            self.pull_pack(run).map_err(|e| self.missing_pack(run, e))
                        } else {
                            match remote.wait(remote.get_range(format::pack_key(&run.pack()), run.range())) {
                                Ok(bytes) => self.accept_run(run, bytes, true),
                                Err(e) => Err(self.missing_pack(run, e)),
                            }
                            .map(|_| run.chunks.iter().map(|(_, rl)| u64::from(rl.stored_len)).sum())
                        };
                        let mut o = out.lock().unwrap();
                        match r {
                            Ok(bytes) => {
                                o.0 += run.chunks.len() as u64;
                                o.1 += run.chunks.iter().map(|(_, rl)| u64::from(rl.raw_len)).sum::<u64>();
                                drop(o);
                                progress(done.fetch_add(bytes, Ordering::SeqCst) + bytes, total);
                            }
                            Err(e) => drop(o.2.get_or_insert(e)),
                        }
                    }
                });
            }
        });
        let (chunks, bytes, error) = out.into_inner().unwrap();
        match error {
            Some(e) => Err(e),
            None => Ok((chunks, bytes)),
        }
    }

    /// Fetches a whole remote pack into a new local fetched pack, checking it against its name
    /// as it streams (and stopping past the size a pack may have), and indexes the chunks of
    /// `run` (the ones wanted) in it. Returns their stored bytes.
    fn pull_pack(&self, run: &Run) -> Result<u64> {
        let remote = self.remote_or_err()?;
        let pack = run.pack();
        let key = format::pack_key(&pack);
        let pid = self.alloc_pack_id();
        let mut w = PackWriter::create(&self.packs_dir, pid)?;
        let got = remote.wait({
            let remote = remote.clone();
            let key = key.clone();
            async move { remote.get_stream(key).await }
        });
        let mut h = blake3::Hasher::new();
        let mut n = 0u64;
        let streamed = got.and_then(|mut body| {
            while let Some(part) = body.blocking_recv() {
                let part = part.map_err(|source| Error::Remote { url: format!("{}/{key}", remote.url()), source })?;
                n += part.len() as u64;
                remote.count_streamed(part.len());
                if n > format::MAX_REMOTE_PACK {
                    return Err(Error::Remote {
                        url: format!("{}/{key}", remote.url()),
                        source: RemoteError::TooLarge { limit: format::MAX_REMOTE_PACK },
                    });
                }
                h.update(&part);
                w.append_records(&part)?;
            }
            Ok(())
        });
        // Every byte checked against the pack's name, and the pack long enough for the index.
        let checked = streamed.and_then(|()| {
            let detail = if Digest(*h.finalize().as_bytes()) != pack {
                format!("the S3 object ({n} bytes) does not match its name")
            } else if n < run.range().end {
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
        // The pack is what its name says, but whoever wrote the index chose the offsets: each
        // wanted chunk is checked where the index puts it before it is indexed here.
        let mut batch = Batch::default();
        let mut wrong = None;
        let mut good = 0u32;
        for (id, rl) in &run.chunks {
            let loc = rl.moved(pid, PACK_HEADER + rl.offset);
            match self.packs.read_chunk(id, &loc) {
                Ok(_) => {
                    batch.put_locator(id, &loc);
                    batch.put_remote(id, rl, Place::Verified);
                    good += 1;
                }
                Err(e) => {
                    self.forget_place(id, &pack, &e)?;
                    wrong.get_or_insert(e);
                }
            }
        }
        batch.put_fetched_pack(pid);
        batch.put_pack(pid, &PackInfo { chunks: good, ..info });
        self.commit(batch)?;
        self.fetched.touch_new(pid);
        match wrong {
            Some(e) => Err(e),
            None => Ok(run.chunks.iter().map(|(_, rl)| u64::from(rl.stored_len)).sum()),
        }
    }
}
