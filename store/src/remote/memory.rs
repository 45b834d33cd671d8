//! An object store in memory, with faults on demand: per-request latency and bandwidth, the next
//! N requests failing, an outage, a blackhole that never answers, corrupted objects. The remote
//! layer's unit tests run against it; nothing here touches the network.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;

use super::{BodyStream, BoxFuture, ObjectStore};
use crate::error::RemoteError;

type R<T> = std::result::Result<T, RemoteError>;

/// What goes wrong, and how slow the link is.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Added before every answer.
    pub latency: Duration,
    /// Bytes per second per request; `None`: instant.
    pub bandwidth: Option<u64>,
    /// The next this-many requests fail with a transient error.
    pub fail_next: u32,
    /// Every request fails with a transient error (a refused connection).
    pub outage: bool,
    /// Requests never answer (a blackholed endpoint).
    pub hang: bool,
    /// Objects whose bytes come back with one bit flipped (keys).
    pub corrupt: Vec<String>,
}

/// The in-memory object store.
#[derive(Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, Bytes>>,
    faults: Mutex<Faults>,
    /// GETs (whole, ranged or streamed) answered.
    pub gets: AtomicU64,
    /// PUTs accepted.
    pub puts: AtomicU64,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Changes the faults in effect.
    pub fn faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.faults.lock().unwrap());
    }

    pub fn object(&self, key: &str) -> Option<Bytes> {
        self.objects.lock().unwrap().get(key).cloned()
    }

    pub fn insert(&self, key: &str, body: impl Into<Bytes>) {
        self.objects.lock().unwrap().insert(key.to_string(), body.into());
    }

    pub fn remove(&self, key: &str) {
        self.objects.lock().unwrap().remove(key);
    }

    /// Keys under a prefix, sorted.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.objects.lock().unwrap().keys().filter(|k| k.starts_with(prefix)).cloned().collect()
    }

    /// Applies latency, failures and hangs; `bytes` of payload sets the transfer time.
    async fn gate(&self, bytes: usize) -> R<()> {
        let f = {
            let mut f = self.faults.lock().unwrap();
            if f.fail_next > 0 {
                f.fail_next -= 1;
                return Err(RemoteError::Injected("request failed"));
            }
            f.clone()
        };
        if f.hang {
            std::future::pending::<()>().await;
        }
        if f.outage {
            return Err(RemoteError::Injected("outage"));
        }
        let mut wait = f.latency;
        if let Some(bw) = f.bandwidth {
            wait += Duration::from_secs_f64(bytes as f64 / bw.max(1) as f64);
        }
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    fn read(&self, key: &str, range: Option<Range<u64>>) -> Option<Bytes> {
        let obj = self.objects.lock().unwrap().get(key).cloned()?;
        let mut out = match range {
            Some(r) => obj.slice((r.start as usize).min(obj.len())..(r.end as usize).min(obj.len())),
            None => obj,
        };
        if self.faults.lock().unwrap().corrupt.iter().any(|k| k == key) && !out.is_empty() {
            let mut v = out.to_vec();
            let mid = v.len() / 2;
            v[mid] ^= 1;
            out = v.into();
        }
        Some(out)
    }
}

impl ObjectStore for MemoryStore {
    fn url(&self) -> String {
        "memory://".into()
    }

    fn get(&self, key: &str, range: Option<Range<u64>>) -> BoxFuture<'_, R<Option<Bytes>>> {
        let key = key.to_string();
        Box::pin(async move {
            let out = self.read(&key, range);
            self.gate(out.as_ref().map_or(0, |b| b.len())).await?;
            self.gets.fetch_add(1, Ordering::Relaxed);
            Ok(out)
        })
    }

    fn get_stream(&self, key: &str) -> BoxFuture<'_, R<Option<BodyStream>>> {
        let key = key.to_string();
        Box::pin(async move {
            let out = self.read(&key, None);
            self.gate(out.as_ref().map_or(0, |b| b.len())).await?;
            self.gets.fetch_add(1, Ordering::Relaxed);
            let Some(body) = out else { return Ok(None) };
            let (tx, rx) = tokio::sync::mpsc::channel(body.len().div_ceil(1 << 20).max(1));
            for i in (0..body.len()).step_by(1 << 20) {
                let _ = tx.try_send(Ok(body.slice(i..(i + (1 << 20)).min(body.len()))));
            }
            Ok(Some(rx))
        })
    }

    fn size(&self, key: &str) -> BoxFuture<'_, R<Option<u64>>> {
        let key = key.to_string();
        Box::pin(async move {
            self.gate(0).await?;
            Ok(self.objects.lock().unwrap().get(&key).map(|b| b.len() as u64))
        })
    }

    fn put(&self, key: &str, body: Bytes, if_absent: bool) -> BoxFuture<'_, R<bool>> {
        let key = key.to_string();
        Box::pin(async move {
            self.gate(body.len()).await?;
            let mut objects = self.objects.lock().unwrap();
            if if_absent && objects.contains_key(&key) {
                return Ok(false);
            }
            objects.insert(key, body);
            self.puts.fetch_add(1, Ordering::Relaxed);
            Ok(true)
        })
    }

    fn put_file(&self, key: &str, path: &Path) -> BoxFuture<'_, R<()>> {
        let (key, path) = (key.to_string(), path.to_path_buf());
        Box::pin(async move {
            let body = std::fs::read(&path).map_err(|e| RemoteError::Transport(format!("{}: {e}", path.display())))?;
            self.put(&key, body.into(), false).await.map(drop)
        })
    }

    fn list(&self, prefix: &str) -> BoxFuture<'_, R<Vec<String>>> {
        let prefix = prefix.to_string();
        Box::pin(async move {
            self.gate(0).await?;
            Ok(self.keys(&prefix))
        })
    }

    fn delete(&self, key: &str) -> BoxFuture<'_, R<()>> {
        let key = key.to_string();
        Box::pin(async move {
            self.gate(0).await?;
            self.objects.lock().unwrap().remove(&key);
            Ok(())
        })
    }
}
