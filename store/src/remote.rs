//! The S3 client: the only module that imports the AWS SDK.
//!
//! A small blocking facade over `aws-sdk-s3` running on its own two-thread tokio runtime, so the
//! rest of the store stays synchronous (FUSE misses already run on a blocking pool). Requests are
//! sent to that runtime and waited for on a std channel, which is safe from any thread, inside
//! another runtime or not.
//!
//! Configured from `s3://bucket/prefix`, the standard AWS credential chain and region (default
//! `us-east-1`), and an optional endpoint (`--s3-endpoint` or `AWS_ENDPOINT_URL`) for any
//! S3-compatible service, with path-style addressing. The SDK retries throttling and 5xx errors
//! with exponential backoff and jitter (3 attempts); connections time out after 2 s and each
//! attempt after 60 s, so an unreachable endpoint fails fast. Uploads over 16 MiB go multipart,
//! 16 MiB parts, 4 at once, read from disk part by part.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};

use crate::error::{Error, Result};

const PART: u64 = 16 << 20;
const PARALLEL_PARTS: usize = 4;

/// Where a remote store lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteConfig {
    pub bucket: String,
    /// Key prefix without leading or trailing `/` (may be empty).
    pub prefix: String,
    /// An S3-compatible endpoint (`http://127.0.0.1:9000`); `None` for AWS itself.
    pub endpoint: Option<String>,
}

impl RemoteConfig {
    /// Parses `s3://bucket[/prefix]`.
    pub fn parse(url: &str, endpoint: Option<String>) -> Result<RemoteConfig> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| Error::Invalid(format!("{url:?}: an S3 location looks like s3://bucket/prefix")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::Invalid(format!("{url:?}: no bucket name")));
        }
        Ok(RemoteConfig {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint: endpoint.filter(|e| !e.is_empty()),
        })
    }

    /// `s3://bucket/prefix`, for messages.
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// Request and byte counters (for `vorpalfs status` and the tests).
#[derive(Debug, Default)]
pub struct RemoteStats {
    pub gets: AtomicU64,
    pub get_bytes: AtomicU64,
    pub puts: AtomicU64,
    pub put_bytes: AtomicU64,
    pub errors: AtomicU64,
}

/// A connection to one bucket and prefix.
pub struct Remote {
    rt: tokio::runtime::Runtime,
    client: Client,
    cfg: RemoteConfig,
    pub stats: RemoteStats,
}

fn s3_err(cfg: &RemoteConfig, key: &str, e: impl std::error::Error) -> Error {
    // The SDK's Display is terse ("dispatch failure"); its source chain says why.
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    Error::Remote { url: format!("s3://{}/{key}", cfg.bucket), message: msg }
}

impl Remote {
    pub fn connect(cfg: RemoteConfig) -> Result<Remote> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("vorpalfs-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::Invalid(format!("cannot start the S3 runtime: {e}")))?;
        let endpoint =
            cfg.endpoint.clone().or_else(|| std::env::var("AWS_ENDPOINT_URL").ok()).filter(|e| !e.is_empty());
        let shared = rt.block_on(async {
            let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .timeout_config(
                    aws_config::timeout::TimeoutConfig::builder()
                        .connect_timeout(Duration::from_secs(2))
                        .operation_attempt_timeout(Duration::from_secs(60))
                        .build(),
                )
                .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3));
            if let Some(e) = &endpoint {
                // An S3-compatible service: the region is only a signing label, taken from the
                // environment or the profile, else us-east-1. The default chain would also ask
                // the EC2 metadata service, logging a warning per failed try.
                let region = aws_config::meta::region::RegionProviderChain::first_try(
                    aws_config::environment::EnvironmentVariableRegionProvider::new(),
                )
                .or_else(aws_config::profile::ProfileFileRegionProvider::new())
                .or_else("us-east-1");
                loader = loader.endpoint_url(e).region(region);
            }
            loader.load().await
        });
        let mut conf = aws_sdk_s3::config::Builder::from(&shared);
        if shared.region().is_none() {
            conf = conf.region(aws_sdk_s3::config::Region::new("us-east-1"));
        }
        if endpoint.is_some() {
            conf = conf.force_path_style(true);
        }
        let client = Client::from_conf(conf.build());
        Ok(Remote { rt, client, cfg: RemoteConfig { endpoint, ..cfg }, stats: RemoteStats::default() })
    }

    pub fn config(&self) -> &RemoteConfig {
        &self.cfg
    }

    /// The object key of `rel` under the prefix.
    pub fn key(&self, rel: &str) -> String {
        if self.cfg.prefix.is_empty() { rel.to_string() } else { format!("{}/{rel}", self.cfg.prefix) }
    }

    /// Runs a future on our runtime and waits for it from this (any) thread.
    fn run<T: Send + 'static>(&self, fut: impl std::future::Future<Output = T> + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().expect("the S3 runtime dropped a request")
    }

    fn failed<T>(&self, r: Result<T>) -> Result<T> {
        if r.is_err() {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// A whole object; `None` when it does not exist.
    pub fn get(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        let (client, key, cfg) = (self.client.clone(), self.key(rel), self.cfg.clone());
        let r = self.run(async move {
            match client.get_object().bucket(&cfg.bucket).key(&key).send().await {
                Ok(o) => {
                    let b = o.body.collect().await.map_err(|e| s3_err(&cfg, &key, e))?;
                    Ok(Some(b.into_bytes().to_vec()))
                }
                Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
                Err(e) => Err(s3_err(&cfg, &key, e)),
            }
        });
        if let Ok(Some(b)) = &r {
            self.stats.gets.fetch_add(1, Ordering::Relaxed);
            self.stats.get_bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
        }
        self.failed(r)
    }

    /// A whole object, handed to `sink` part by part as it arrives (memory: a few parts).
    /// Returns its length. An error from `sink` stops the download and is returned.
    pub fn get_streamed(&self, rel: &str, sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<u64> {
        let (client, key, cfg) = (self.client.clone(), self.key(rel), self.cfg.clone());
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        self.rt.spawn(async move {
            let mut body = match client.get_object().bucket(&cfg.bucket).key(&key).send().await {
                Ok(o) => o.body,
                Err(e) => return drop(tx.send(Err(s3_err(&cfg, &key, e))).await),
            };
            loop {
                let part = match body.try_next().await {
                    Ok(Some(part)) => Ok(part),
                    Ok(None) => return,
                    Err(e) => Err(s3_err(&cfg, &key, e)),
                };
                let last = part.is_err();
                // The receiver is gone when the sink failed: stop downloading.
                if tx.send(part).await.is_err() || last {
                    return;
                }
            }
        });
        let mut n = 0u64;
        let r = (|| {
            while let Some(part) = rx.blocking_recv() {
                let part = part?;
                sink(&part)?;
                n += part.len() as u64;
            }
            Ok(n)
        })();
        if r.is_ok() {
            self.stats.gets.fetch_add(1, Ordering::Relaxed);
            self.stats.get_bytes.fetch_add(n, Ordering::Relaxed);
        }
        self.failed(r)
    }

    /// Bytes `offset .. offset + len` of an object (a ranged GET).
    pub fn get_range(&self, rel: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let (client, key, cfg) = (self.client.clone(), self.key(rel), self.cfg.clone());
        let range = format!("bytes={}-{}", offset, offset + len.max(1) - 1);
        let r = self.run(async move {
            let o = client
                .get_object()
                .bucket(&cfg.bucket)
                .key(&key)
                .range(range)
                .send()
                .await
                .map_err(|e| s3_err(&cfg, &key, e))?;
            // Straight into one buffer of the expected size: no aggregate-then-copy.
            let mut out = Vec::with_capacity(len as usize);
            let mut body = o.body;
            while let Some(part) = body.try_next().await.map_err(|e| s3_err(&cfg, &key, e))? {
                out.extend_from_slice(&part);
            }
            Ok(out)
        });
        let r = r.and_then(|b: Vec<u8>| {
            if b.len() as u64 != len {
                return Err(Error::Remote {
                    url: format!("s3://{}/{}", self.cfg.bucket, self.key(rel)),
                    message: format!("asked for {len} bytes at {offset}, got {}", b.len()),
                });
            }
            Ok(b)
        });
        if let Ok(b) = &r {
            self.stats.gets.fetch_add(1, Ordering::Relaxed);
            self.stats.get_bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
        }
        self.failed(r)
    }

    pub fn exists(&self, rel: &str) -> Result<bool> {
        let (client, key, cfg) = (self.client.clone(), self.key(rel), self.cfg.clone());
        let r = self.run(async move {
            match client.head_object().bucket(&cfg.bucket).key(&key).send().await {
                Ok(_) => Ok(true),
                Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
                Err(e) => Err(s3_err(&cfg, &key, e)),
            }
        });
        self.failed(r)
    }

    /// Stores a small object. With `only_if_absent`, a conditional put (`If-None-Match: *`):
    /// returns false, writing nothing, when the key exists.
    pub fn put(&self, rel: &str, bytes: Vec<u8>, only_if_absent: bool) -> Result<bool> {
        let (client, key, cfg) = (self.client.clone(), self.key(rel), self.cfg.clone());
        let n = bytes.len() as u64;
        let r = self.run(async move {
            let mut req = client.put_object().bucket(&cfg.bucket).key(&key).body(ByteStream::from(bytes));
            if only_if_absent {
                req = req.if_none_match("*");
            }
            match req.send().await {
                Ok(_) => Ok(true),
                Err(e) if only_if_absent && e.raw_response().is_some_and(|r| r.status().as_u16() == 412) => Ok(false),
                Err(e) => Err(s3_err(&cfg, &key, e)),
            }
        });
        if let Ok(true) = r {
            self.stats.puts.fetch_add(1, Ordering::Relaxed);
            self.stats.put_bytes.fetch_add(n, Ordering::Relaxed);
        }
        self.failed(r)
    }

    pub fn delete(&self, rel: &str) -> Result<()> {
        let (client, key, cfg) = (self.client.clone(), self.key(rel), self.cfg.clone());
        let r = self.run(async move {
            client
                .delete_object()
                .bucket(&cfg.bucket)
                .key(&key)
                .send()
                .await
                .map(drop)
                .map_err(|e| s3_err(&cfg, &key, e))
        });
        self.failed(r)
    }

    /// Uploads a file: one PUT up to 16 MiB, else a multipart upload of 16 MiB parts, 4 in
    /// flight, each read from disk when its turn comes (memory: 4 parts).
    pub fn put_file(&self, rel: &str, path: &Path) -> Result<()> {
        let len = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
        if len <= PART {
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            return self.put(rel, bytes, false).map(drop);
        }
        let (client, key, cfg) = (self.client.clone(), self.key(rel), self.cfg.clone());
        let path = path.to_path_buf();
        let r = self.run(async move {
            let up = client
                .create_multipart_upload()
                .bucket(&cfg.bucket)
                .key(&key)
                .send()
                .await
                .map_err(|e| s3_err(&cfg, &key, e))?;
            let id = up.upload_id().unwrap_or_default().to_string();
            let parts = len.div_ceil(PART);
            let result: Result<Vec<CompletedPart>> = async {
                let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(PARALLEL_PARTS));
                let mut tasks = Vec::new();
                for n in 0..parts {
                    let permit = sem.clone().acquire_owned().await.expect("semaphore open");
                    let (client, key, cfg, id, path) =
                        (client.clone(), key.clone(), cfg.clone(), id.clone(), path.clone());
                    tasks.push(tokio::spawn(async move {
                        let _permit = permit;
                        let off = n * PART;
                        let size = PART.min(len - off);
                        let body = tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
                            use std::os::unix::fs::FileExt;
                            let f = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
                            let mut buf = vec![0u8; size as usize];
                            f.read_exact_at(&mut buf, off).map_err(|e| Error::io(&path, e))?;
                            Ok(buf)
                        })
                        .await
                        .expect("part reader")?;
                        let part = (n + 1) as i32;
                        let r = client
                            .upload_part()
                            .bucket(&cfg.bucket)
                            .key(&key)
                            .upload_id(&id)
                            .part_number(part)
                            .body(ByteStream::from(body))
                            .send()
                            .await
                            .map_err(|e| s3_err(&cfg, &key, e))?;
                        Ok(CompletedPart::builder().part_number(part).set_e_tag(r.e_tag).build())
                    }));
                }
                let mut done = Vec::new();
                for t in tasks {
                    done.push(t.await.expect("part task")?);
                }
                Ok(done)
            }
            .await;
            match result {
                Ok(parts) => {
                    client
                        .complete_multipart_upload()
                        .bucket(&cfg.bucket)
                        .key(&key)
                        .upload_id(&id)
                        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                        .send()
                        .await
                        .map_err(|e| s3_err(&cfg, &key, e))?;
                    Ok(())
                }
                Err(e) => {
                    let _ = client.abort_multipart_upload().bucket(&cfg.bucket).key(&key).upload_id(&id).send().await;
                    Err(e)
                }
            }
        });
        if r.is_ok() {
            self.stats.puts.fetch_add(1, Ordering::Relaxed);
            self.stats.put_bytes.fetch_add(len, Ordering::Relaxed);
        }
        self.failed(r)
    }
}
