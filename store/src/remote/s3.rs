//! The S3 backend: the only module that imports the AWS SDK.
//!
//! Configured from `s3://bucket/prefix`, the standard AWS credential chain and region (default
//! `us-east-1`), and an optional endpoint (`--s3-endpoint` or `AWS_ENDPOINT_URL`) for any
//! S3-compatible service, with path-style addressing. The SDK makes one attempt per call (the
//! [`Remote`](super::Remote) wrapper retries, with deadlines, for every backend alike); connections
//! time out after 2 s. Files over 16 MiB go up multipart, 16 MiB parts, 4 at once, each read
//! from disk when its turn comes.

use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;

use super::{BodyStream, BoxFuture, ObjectStore};
use crate::error::{Error, RemoteError, Result};

const PART: u64 = 16 << 20;
const PARALLEL_PARTS: usize = 4;

type R<T> = std::result::Result<T, RemoteError>;

/// Where a remote store lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix without leading or trailing `/` (may be empty).
    pub prefix: String,
    /// An S3-compatible endpoint (`http://127.0.0.1:9000`); `None` for AWS itself.
    pub endpoint: Option<String>,
}

impl S3Config {
    /// Parses `s3://bucket[/prefix]`.
    pub fn parse(url: &str, endpoint: Option<String>) -> Result<S3Config> {
        let bad = |why| Error::BadRemoteUrl { url: url.to_string(), why };
        let rest = url.strip_prefix("s3://").ok_or_else(|| bad("an S3 location looks like s3://bucket/prefix"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket name"));
        }
        Ok(S3Config {
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

/// A connection to one bucket and prefix.
pub(crate) struct S3 {
    client: Client,
    cfg: S3Config,
}

/// The SDK's Display is terse ("dispatch failure"); its source chain says why.
fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

fn sdk_err<E: std::error::Error + 'static>(e: SdkError<E, HttpResponse>) -> RemoteError {
    match &e {
        SdkError::ServiceError(s) => RemoteError::Status { status: s.raw().status().as_u16(), message: chain(s.err()) },
        SdkError::TimeoutError(_) => RemoteError::Timeout(Duration::ZERO),
        _ => RemoteError::Transport(chain(&e)),
    }
}

impl S3 {
    pub(crate) async fn connect(cfg: S3Config) -> S3 {
        let endpoint =
            cfg.endpoint.clone().or_else(|| std::env::var("AWS_ENDPOINT_URL").ok()).filter(|e| !e.is_empty());
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder().connect_timeout(Duration::from_secs(2)).build(),
            )
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1));
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
        let shared = loader.load().await;
        let mut conf = aws_sdk_s3::config::Builder::from(&shared);
        if shared.region().is_none() {
            conf = conf.region(aws_sdk_s3::config::Region::new("us-east-1"));
        }
        if endpoint.is_some() {
            conf = conf.force_path_style(true);
        }
        S3 { client: Client::from_conf(conf.build()), cfg: S3Config { endpoint, ..cfg } }
    }

    fn key(&self, rel: &str) -> String {
        if self.cfg.prefix.is_empty() { rel.to_string() } else { format!("{}/{rel}", self.cfg.prefix) }
    }

    async fn get_impl(&self, key: String, range: Option<Range<u64>>) -> R<Option<Bytes>> {
        let mut req = self.client.get_object().bucket(&self.cfg.bucket).key(&key);
        let mut cap = 0usize;
        if let Some(r) = &range {
            req = req.range(format!("bytes={}-{}", r.start, r.end.max(r.start + 1) - 1));
            cap = (r.end - r.start) as usize;
        }
        let o = match req.send().await {
            Ok(o) => o,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            // A range from 0 of an empty object: S3 says the range cannot be satisfied.
            Err(e)
                if range.as_ref().is_some_and(|r| r.start == 0)
                    && e.raw_response().is_some_and(|r| r.status().as_u16() == 416) =>
            {
                return Ok(Some(Bytes::new()));
            }
            Err(e) => return Err(sdk_err(e)),
        };
        // Straight into one buffer of the expected size: no aggregate-then-copy (a range past
        // the end of a small object gives fewer bytes than asked for: the length S3 gives).
        let len = o.content_length().and_then(|n| usize::try_from(n).ok()).unwrap_or(cap);
        let mut out = Vec::with_capacity(cap.min(len));
        let mut body = o.body;
        while let Some(part) = body.try_next().await.map_err(|e| RemoteError::Transport(chain(&e)))? {
            // A server that ignores the range is not read past it.
            if range.is_some() && out.len() + part.len() > cap {
                return Err(RemoteError::TooLarge { limit: cap as u64 });
            }
            out.extend_from_slice(&part);
        }
        Ok(Some(out.into()))
    }

    async fn put_file_impl(&self, key: String, path: &Path) -> R<()> {
        let io = |e: std::io::Error| RemoteError::Transport(format!("{}: {e}", path.display()));
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len <= PART {
            let bytes = std::fs::read(path).map_err(io)?;
            return self.put_impl(key, bytes.into(), false).await.map(drop);
        }
        let (client, bucket) = (&self.client, &self.cfg.bucket);
        let up = client.create_multipart_upload().bucket(bucket).key(&key).send().await.map_err(sdk_err)?;
        let id = up.upload_id().unwrap_or_default().to_string();
        let parts = len.div_ceil(PART);
        let result: R<Vec<CompletedPart>> = async {
            let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(PARALLEL_PARTS));
            let mut tasks = Vec::new();
            for n in 0..parts {
                let permit = sem.clone().acquire_owned().await.expect("semaphore open");
                let (client, bucket, key, id, path) =
                    (client.clone(), bucket.clone(), key.clone(), id.clone(), path.to_path_buf());
                tasks.push(tokio::spawn(async move {
                    let _permit = permit;
                    let off = n * PART;
                    let size = PART.min(len - off);
                    let body = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
                        use std::os::unix::fs::FileExt;
                        let f = std::fs::File::open(&path)?;
                        let mut buf = vec![0u8; size as usize];
                        f.read_exact_at(&mut buf, off)?;
                        Ok(buf)
                    })
                    .await
                    .expect("part reader")
                    .map_err(|e| RemoteError::Transport(e.to_string()))?;
                    let part = (n + 1) as i32;
                    let r = client
                        .upload_part()
                        .bucket(&bucket)
                        .key(&key)
                        .upload_id(&id)
                        .part_number(part)
                        .body(ByteStream::from(body))
                        .send()
                        .await
                        .map_err(sdk_err)?;
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
                    .bucket(bucket)
                    .key(&key)
                    .upload_id(&id)
                    .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                    .send()
                    .await
                    .map_err(sdk_err)?;
                Ok(())
            }
            Err(e) => {
                let _ = client.abort_multipart_upload().bucket(bucket).key(&key).upload_id(&id).send().await;
                Err(e)
            }
        }
    }

    async fn put_impl(&self, key: String, body: Bytes, if_absent: bool) -> R<bool> {
        let mut req = self.client.put_object().bucket(&self.cfg.bucket).key(&key).body(ByteStream::from(body));
        if if_absent {
            req = req.if_none_match("*");
        }
        match req.send().await {
            Ok(_) => Ok(true),
            Err(e) if if_absent && e.raw_response().is_some_and(|r| r.status().as_u16() == 412) => Ok(false),
            Err(e) => Err(sdk_err(e)),
        }
    }
}

impl ObjectStore for S3 {
    fn url(&self) -> String {
        self.cfg.url()
    }

    fn get(&self, key: &str, range: Option<Range<u64>>) -> BoxFuture<'_, R<Option<Bytes>>> {
        Box::pin(self.get_impl(self.key(key), range))
    }

    fn get_stream(&self, key: &str) -> BoxFuture<'_, R<Option<BodyStream>>> {
        let key = self.key(key);
        Box::pin(async move {
            let mut body = match self.client.get_object().bucket(&self.cfg.bucket).key(&key).send().await {
                Ok(o) => o.body,
                Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
                Err(e) => return Err(sdk_err(e)),
            };
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            tokio::spawn(async move {
                loop {
                    let part = match body.try_next().await {
                        Ok(Some(part)) => Ok(part),
                        Ok(None) => return,
                        Err(e) => Err(RemoteError::Transport(chain(&e))),
                    };
                    let last = part.is_err();
                    // The receiver is gone when the consumer stopped: stop downloading.
                    if tx.send(part).await.is_err() || last {
                        return;
                    }
                }
            });
            Ok(Some(rx))
        })
    }

    fn size(&self, key: &str) -> BoxFuture<'_, R<Option<u64>>> {
        let key = self.key(key);
        Box::pin(async move {
            match self.client.head_object().bucket(&self.cfg.bucket).key(&key).send().await {
                Ok(h) => Ok(Some(h.content_length().unwrap_or(0).max(0) as u64)),
                Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
                Err(e) => Err(sdk_err(e)),
            }
        })
    }

    fn put(&self, key: &str, body: Bytes, if_absent: bool) -> BoxFuture<'_, R<bool>> {
        Box::pin(self.put_impl(self.key(key), body, if_absent))
    }

    fn put_file(&self, key: &str, path: &Path) -> BoxFuture<'_, R<()>> {
        let (key, path) = (self.key(key), path.to_path_buf());
        Box::pin(async move { self.put_file_impl(key, &path).await })
    }

    fn list(&self, prefix: &str) -> BoxFuture<'_, R<Vec<String>>> {
        let full = self.key(prefix);
        let strip = if self.cfg.prefix.is_empty() { 0 } else { self.cfg.prefix.len() + 1 };
        Box::pin(async move {
            let mut out = Vec::new();
            let mut token = None;
            loop {
                let r = self
                    .client
                    .list_objects_v2()
                    .bucket(&self.cfg.bucket)
                    .prefix(&full)
                    .set_continuation_token(token)
                    .send()
                    .await
                    .map_err(sdk_err)?;
                out.extend(r.contents().iter().filter_map(|o| o.key()).map(|k| k[strip.min(k.len())..].to_string()));
                match r.next_continuation_token() {
                    Some(t) if r.is_truncated() == Some(true) => token = Some(t.to_string()),
                    _ => return Ok(out),
                }
            }
        })
    }

    fn delete(&self, key: &str) -> BoxFuture<'_, R<()>> {
        let key = self.key(key);
        Box::pin(async move {
            self.client.delete_object().bucket(&self.cfg.bucket).key(&key).send().await.map(drop).map_err(sdk_err)
        })
    }
}
