//! Downloading `url` sources: streamed to disk, checked against the manifest's BLAKE3.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("cannot download {url}: {source}")]
    Request { url: String, source: Box<ureq::Error> },
    #[error("cannot download {url}: {source}")]
    Read { url: String, source: std::io::Error },
    #[error("{}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{url}: digest mismatch: the manifest says {want}, the download is {got}")]
    Mismatch { url: String, want: String, got: String },
    #[error("{url}: larger than the {limit} bytes a download may have (--max-download)")]
    TooLarge { url: String, limit: u64 },
}

/// Downloads `url` into `dir` (under the URL's last path segment) and checks that the bytes
/// hash to `blake3` (plain BLAKE3, as `b3sum` prints it). A file with the wrong digest is
/// removed. A download that goes past `limit` bytes is stopped and removed.
pub fn download(url: &str, blake3: &str, dir: &Path, limit: u64) -> Result<(), DownloadError> {
    let name = url
        .split(['?', '#'])
        .next()
        .and_then(|u| u.rsplit('/').next())
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .unwrap_or("download");
    let path = dir.join(name);
    let write = |source| DownloadError::Write { path: path.clone(), source };
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder().timeout_connect(Some(std::time::Duration::from_secs(10))).build(),
    );
    let resp = agent.get(url).call().map_err(|e| DownloadError::Request { url: url.into(), source: Box::new(e) })?;
    let mut body = resp.into_body().into_reader();
    let mut out = File::create(&path).map_err(write)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = body.read(&mut buf).map_err(|source| DownloadError::Read { url: url.into(), source })?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > limit {
            drop(out);
            let _ = std::fs::remove_file(&path);
            return Err(DownloadError::TooLarge { url: url.into(), limit });
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(write)?;
    }
    out.sync_all().map_err(write)?;
    let got = h.finalize().to_hex().to_string();
    if got != blake3 {
        let _ = std::fs::remove_file(&path);
        return Err(DownloadError::Mismatch { url: url.into(), want: blake3.into(), got });
    }
    Ok(())
}
