//! The store's remote side: objects shared with other hosts in an object store (S3).
//!
//! ```text
//! mod.rs     ObjectStore: the raw requests a backend answers (one attempt each);
//!            Remote: what the store uses, one ObjectStore plus retries with backoff, per-attempt
//!            deadlines, size caps, counters and fail-fast while the backend is down
//! s3.rs      the S3 backend (the only aws-sdk-s3 importer)
//! memory.rs  an in-memory backend with injected faults (latency, errors, corruption, outage)
//! format.rs  what is stored: remote pack records, root objects, root indexes (bounded decoders)
//! push.rs    a root and the data S3 lacks, up
//! fetch.rs   lazy lookup of remote roots: metadata fetched, checked and recorded
//! lazy.rs    chunk fetches on read: parallel pieces, growing readahead, neighbours, flights
//! profile.rs access profiles: recorded on read, pushed merged, prefetched on first lookup
//! pull.rs    a whole root down
//! evict.rs   the byte budget of fetched data
//! claims.rs  build claims (build a digest once across hosts)
//! trust.rs   keys, and the signatures on root objects and claims
//! ```
//!
//! Everything the backend returns is untrusted: objects are size-capped before they are read
//! whole, and chunks, trees, file records and indexes are verified against their digests before
//! anything is kept.

use std::future::Future;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::error::{Error, RemoteError, Result};

pub mod claims;
pub(crate) mod elf;
pub mod evict;
pub mod fetch;
pub mod format;
pub mod lazy;
pub mod memory;
pub mod profile;
pub mod pull;
pub mod push;
pub mod repack;
pub mod s3;
#[cfg(test)]
mod tests;
pub mod trust;

pub use memory::{Faults, MemoryStore};
pub use s3::S3Config;

/// A boxed future, as the backends return them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// A body arriving in parts (a whole object streamed).
pub type BodyStream = mpsc::Receiver<std::result::Result<Bytes, RemoteError>>;
type R<T> = std::result::Result<T, RemoteError>;

/// The raw requests of an object store. Keys are relative to the backend's own prefix. Each
/// call is one attempt: [`Remote`] adds retries, deadlines and counters for every backend.
pub trait ObjectStore: Send + Sync + 'static {
    /// Where the objects are (`s3://bucket/prefix`), for messages.
    fn url(&self) -> String;
    /// A byte range of an object, or all of it; `None` when the object does not exist.
    fn get(&self, key: &str, range: Option<Range<u64>>) -> BoxFuture<'_, R<Option<Bytes>>>;
    /// A whole object in parts as they arrive; `None` when it does not exist.
    fn get_stream(&self, key: &str) -> BoxFuture<'_, R<Option<BodyStream>>>;
    /// The object's size; `None` when it does not exist.
    fn size(&self, key: &str) -> BoxFuture<'_, R<Option<u64>>>;
    /// Stores an object; with `if_absent`, only if no object has the key (returns false,
    /// writing nothing, when one has).
    fn put(&self, key: &str, body: Bytes, if_absent: bool) -> BoxFuture<'_, R<bool>>;
    /// Stores a file's content (S3: multipart, parts read from disk in turn).
    fn put_file(&self, key: &str, path: &Path) -> BoxFuture<'_, R<()>>;
    /// Keys under a prefix.
    fn list(&self, prefix: &str) -> BoxFuture<'_, R<Vec<String>>>;
    fn delete(&self, key: &str) -> BoxFuture<'_, R<()>>;
}

/// A GET of at most this many bytes is timed as a round trip.
const SMALL_GET: usize = 64 << 10;

/// How requests are retried and bounded.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Attempts per request (the first included).
    pub attempts: u32,
    /// Backoff before the second attempt; doubled after each, with ±50% jitter.
    pub backoff: Duration,
    /// Deadline of one attempt of a small request (metadata, claims).
    pub small_deadline: Duration,
    /// Deadline of one attempt moving data: this plus the time at `min_rate`.
    pub data_deadline: Duration,
    /// The slowest transfer rate tolerated, bytes per second.
    pub min_rate: u64,
    /// After this many requests in a row failed (all attempts), S3 is treated as down...
    pub down_after: u32,
    /// ...for this long: requests fail at once with [`RemoteError::Down`].
    pub down_for: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            attempts: 3,
            backoff: Duration::from_millis(100),
            small_deadline: Duration::from_secs(10),
            data_deadline: Duration::from_secs(20),
            min_rate: 1 << 20,
            down_after: 2,
            down_for: Duration::from_secs(5),
        }
    }
}

/// Request and byte counters (for `vorpalfs status` and the tests).
#[derive(Debug, Default)]
pub struct Counters {
    pub gets: AtomicU64,
    pub get_bytes: AtomicU64,
    pub puts: AtomicU64,
    pub put_bytes: AtomicU64,
    pub errors: AtomicU64,
    /// What small GETs take, in microseconds, tracking the fastest lately (0: none seen yet).
    pub small_get_micros: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Traffic {
    pub gets: u64,
    pub get_bytes: u64,
    pub puts: u64,
    pub put_bytes: u64,
    pub errors: u64,
}

/// Whether the backend is up, from the last requests' outcomes.
#[derive(Default)]
struct Health {
    failures_in_a_row: u32,
    down_until: Option<Instant>,
}

/// The object store as the store uses it. Cheap to clone; every future it returns is
/// `'static`, so sync callers can [`Remote::wait`] for it from any thread.
#[derive(Clone)]
pub struct Remote {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Arc<dyn ObjectStore>,
    policy: Policy,
    counters: Counters,
    health: std::sync::Mutex<Health>,
    handle: tokio::runtime::Handle,
    /// A runtime of our own when the caller gave none (kept alive here).
    _runtime: Option<tokio::runtime::Runtime>,
}

/// Where the backend of a [`Remote`] comes from.
#[derive(Clone)]
pub enum Backend {
    S3(S3Config),
    Object(Arc<dyn ObjectStore>),
}

impl Remote {
    /// Connects to `backend`, running requests on `handle` (or on a runtime of its own).
    pub fn connect(backend: Backend, policy: Policy, handle: Option<tokio::runtime::Handle>) -> Result<Remote> {
        let (handle, runtime) = match handle {
            Some(h) => (h, None),
            None => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("vorpalfs-io")
                    .enable_all()
                    .build()
                    .map_err(|e| Error::Runtime(Arc::new(e)))?;
                (rt.handle().clone(), Some(rt))
            }
        };
        let backend: Arc<dyn ObjectStore> = match backend {
            Backend::Object(o) => o,
            Backend::S3(cfg) => {
                let (tx, rx) = std::sync::mpsc::sync_channel(1);
                handle.spawn(async move {
                    let _ = tx.send(s3::S3::connect(cfg).await);
                });
                Arc::new(rx.recv().expect("the I/O runtime dropped a request"))
            }
        };
        Ok(Remote {
            inner: Arc::new(Inner {
                backend,
                policy,
                counters: Counters::default(),
                health: Default::default(),
                handle,
                _runtime: runtime,
            }),
        })
    }

    pub fn url(&self) -> String {
        self.inner.backend.url()
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.inner.handle
    }

    pub fn traffic(&self) -> Traffic {
        let c = &self.inner.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Traffic {
            gets: l(&c.gets),
            get_bytes: l(&c.get_bytes),
            puts: l(&c.puts),
            put_bytes: l(&c.put_bytes),
            errors: l(&c.errors),
        }
    }

    /// Whether recent requests failed so that new ones fail at once.
    pub fn is_down(&self) -> bool {
        self.inner.health.lock().unwrap().down_until.is_some_and(|t| Instant::now() < t)
    }

    /// Runs `fut` on the I/O runtime and waits for it from this (any) thread.
    pub fn wait<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.inner.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().expect("the I/O runtime dropped a request")
    }

    fn error(&self, key: &str, source: RemoteError) -> Error {
        Error::Remote { url: format!("{}/{key}", self.url()), source }
    }

    /// One request with retries of transient failures, each attempt under `deadline`.
    async fn call<T, F>(&self, key: &str, deadline: Duration, attempt: impl Fn() -> F) -> Result<T>
    where
        F: Future<Output = R<T>>,
    {
        let p = &self.inner.policy;
        {
            let h = self.inner.health.lock().unwrap();
            if h.down_until.is_some_and(|t| Instant::now() < t) {
                self.inner.counters.errors.fetch_add(1, Ordering::Relaxed);
                return Err(self.error(key, RemoteError::Down));
            }
        }
        let mut backoff = p.backoff;
        let mut n = 0;
        let result = loop {
            n += 1;
            let r = match tokio::time::timeout(deadline, attempt()).await {
                Ok(r) => r,
                Err(_) => Err(RemoteError::Timeout(deadline)),
            };
            match r {
                Err(e) if e.is_transient() && n < p.attempts => {
                    tracing::debug!(key, attempt = n, "S3 request failed, retrying: {e}");
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff *= 2;
                }
                r => break r,
            }
        };
        let mut h = self.inner.health.lock().unwrap();
        match &result {
            Err(e) if e.is_transient() => {
                self.inner.counters.errors.fetch_add(1, Ordering::Relaxed);
                h.failures_in_a_row += 1;
                // One line when the trouble starts, one when it ends: not one per read.
                if h.failures_in_a_row == 1 {
                    tracing::error!(
                        "S3 unreachable ({}: {e}); uncached reads fail with EIO until it answers again",
                        self.url()
                    );
                }
                if h.failures_in_a_row >= p.down_after {
                    h.down_until = Some(Instant::now() + p.down_for);
                }
            }
            Err(_) => {
                self.inner.counters.errors.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {
                if h.failures_in_a_row > 0 {
                    tracing::info!("S3 answers again ({})", self.url());
                }
                h.failures_in_a_row = 0;
                h.down_until = None;
            }
        }
        drop(h);
        result.map_err(|e| self.error(key, e))
    }

    fn data_deadline(&self, bytes: u64) -> Duration {
        let p = &self.inner.policy;
        p.data_deadline + Duration::from_secs(bytes / p.min_rate.max(1))
    }

    fn counted_get(&self, bytes: usize) {
        self.inner.counters.gets.fetch_add(1, Ordering::Relaxed);
        self.inner.counters.get_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Records how long a successful GET of `bytes` took (only small ones: their time is the
    /// link's round trip, not its rate).
    fn timed_get(&self, bytes: usize, took: Duration) {
        if bytes > SMALL_GET {
            return;
        }
        let us = took.as_micros().min(u128::from(u32::MAX)) as u64;
        let avg = &self.inner.counters.small_get_micros;
        let old = avg.load(Ordering::Relaxed);
        // The link's own round trip, not the queueing of a busy moment (many readers at once
        // on a near server made it look far): a faster sample is taken at once, a slower one
        // moves the estimate by 1/32.
        let new = if old == 0 || us < old { us.max(1) } else { (old * 31 + us) / 32 };
        avg.store(new, Ordering::Relaxed);
    }

    /// What a small GET has taken lately (`None` before the first).
    pub fn round_trip(&self) -> Option<Duration> {
        match self.inner.counters.small_get_micros.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    fn counted_put(&self, bytes: u64) {
        self.inner.counters.puts.fetch_add(1, Ordering::Relaxed);
        self.inner.counters.put_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A whole small object, refused past `limit` bytes; `None` when it does not exist.
    pub fn get(&self, key: String, limit: u64) -> impl Future<Output = Result<Option<Bytes>>> + Send + 'static {
        let this = self.clone();
        async move {
            let deadline = this.data_deadline(limit);
            let backend = this.inner.backend.clone();
            let r = this
                .call(&key, deadline, || async {
                    // One ranged GET of one byte more than the limit: a hostile object is never
                    // read whole, and a small one costs one round trip, not a HEAD and a GET.
                    match backend.get(&key, Some(0..limit + 1)).await? {
                        Some(b) if b.len() as u64 > limit => Err(RemoteError::TooLarge { limit }),
                        other => Ok(other),
                    }
                })
                .await?;
            if let Some(b) = &r {
                this.counted_get(b.len());
            }
            Ok(r)
        }
    }

    /// Bytes `range` of an object (a ranged GET), exactly as many as asked for.
    pub fn get_range(&self, key: String, range: Range<u64>) -> impl Future<Output = Result<Bytes>> + Send + 'static {
        self.get_range_of(key, range, true)
    }

    /// Bytes `range` of an object; unless `exact`, the range may run past the object's end
    /// (fewer bytes come back). Never more than asked for.
    pub fn get_range_of(
        &self,
        key: String,
        range: Range<u64>,
        exact: bool,
    ) -> impl Future<Output = Result<Bytes>> + Send + 'static {
        let this = self.clone();
        async move {
            let want = range.end - range.start;
            let backend = this.inner.backend.clone();
            let t = Instant::now();
            let b = this
                .call(&key, this.data_deadline(want), || async {
                    match backend.get(&key, Some(range.clone())).await? {
                        None => Err(RemoteError::NotFound),
                        Some(b) if b.len() as u64 > want || (exact && b.len() as u64 != want) => {
                            Err(RemoteError::ShortRead { offset: range.start, want, got: b.len() as u64 })
                        }
                        Some(b) => Ok(b),
                    }
                })
                .await?;
            this.timed_get(b.len(), t.elapsed());
            this.counted_get(b.len());
            tracing::trace!(key, start = range.start, bytes = b.len(), ms = t.elapsed().as_secs_f64() * 1e3, "GET");
            Ok(b)
        }
    }

    /// A whole object in parts as they arrive (no deadline beyond each part's: the caller
    /// checks what arrives and stops when it has seen enough).
    pub fn get_stream(&self, key: String) -> impl Future<Output = Result<BodyStream>> + Send + 'static {
        let this = self.clone();
        async move {
            let backend = this.inner.backend.clone();
            let deadline = this.inner.policy.small_deadline;
            let s = this.call(&key, deadline, || async { backend.get_stream(&key).await }).await?;
            this.inner.counters.gets.fetch_add(1, Ordering::Relaxed);
            s.ok_or_else(|| this.error(&key, RemoteError::NotFound))
        }
    }

    /// Counts bytes of a streamed body as they are consumed.
    pub fn count_streamed(&self, bytes: usize) {
        self.inner.counters.get_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn exists(&self, key: String) -> impl Future<Output = Result<bool>> + Send + 'static {
        let this = self.clone();
        async move {
            let backend = this.inner.backend.clone();
            let deadline = this.inner.policy.small_deadline;
            Ok(this.call(&key, deadline, || async { backend.size(&key).await }).await?.is_some())
        }
    }

    /// Stores a small object (overwriting).
    pub fn put(&self, key: String, body: Bytes) -> impl Future<Output = Result<()>> + Send + 'static {
        let this = self.clone();
        async move {
            this.put_inner(key, body, false).await?;
            Ok(())
        }
    }

    /// Stores a small object unless one has the key (a conditional put): false when it had.
    pub fn put_if_absent(&self, key: String, body: Bytes) -> impl Future<Output = Result<bool>> + Send + 'static {
        let this = self.clone();
        async move { this.put_inner(key, body, true).await }
    }

    async fn put_inner(&self, key: String, body: Bytes, if_absent: bool) -> Result<bool> {
        let backend = self.inner.backend.clone();
        let n = body.len() as u64;
        let done = self
            .call(&key, self.data_deadline(n), || {
                let body = body.clone();
                let backend = backend.clone();
                let key = key.clone();
                async move { backend.put(&key, body, if_absent).await }
            })
            .await?;
        if done {
            self.counted_put(n);
        }
        Ok(done)
    }

    /// Stores a file's content.
    pub fn put_file(&self, key: String, path: PathBuf) -> impl Future<Output = Result<()>> + Send + 'static {
        let this = self.clone();
        async move {
            let n = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?.len();
            let backend = this.inner.backend.clone();
            this.call(&key, this.data_deadline(n), || backend.put_file(&key, &path)).await?;
            this.counted_put(n);
            Ok(())
        }
    }

    pub fn list(&self, prefix: String) -> impl Future<Output = Result<Vec<String>>> + Send + 'static {
        let this = self.clone();
        async move {
            let backend = this.inner.backend.clone();
            let deadline = this.inner.policy.small_deadline;
            this.call(&prefix, deadline, || backend.list(&prefix)).await
        }
    }

    pub fn delete(&self, key: String) -> impl Future<Output = Result<()>> + Send + 'static {
        let this = self.clone();
        async move {
            let backend = this.inner.backend.clone();
            let deadline = this.inner.policy.small_deadline;
            this.call(&key, deadline, || backend.delete(&key)).await
        }
    }
}

/// `d` ± 50%, from the clock's nanoseconds (no RNG needed for spreading retries).
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    d / 2 + d.mul_f64(f64::from(nanos % 1000) / 1000.0)
}
