//! Downloading `url` sources: streamed to disk, checked against the manifest's BLAKE3.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

/// Downloads `url` into `dir` (under the URL's last path segment) and checks that the bytes
/// hash to `blake3` (plain BLAKE3, as `b3sum` prints it). Returns an error message naming the
/// URL on any failure; a file with the wrong digest is removed.
pub fn download(url: &str, blake3: &str, dir: &Path) -> Result<(), String> {
    let name = url
        .split(['?', '#'])
        .next()
        .and_then(|u| u.rsplit('/').next())
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .unwrap_or("download");
    let path = dir.join(name);
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder().timeout_connect(Some(std::time::Duration::from_secs(10))).build(),
    );
    let resp = agent.get(url).call().map_err(|e| format!("cannot download {url}: {e}"))?;
    let mut body = resp.into_body().into_reader();
    let mut out = File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = body.read(&mut buf).map_err(|e| format!("cannot download {url}: {e}"))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    out.sync_all().map_err(|e| format!("{}: {e}", path.display()))?;
    let got = h.finalize().to_hex().to_string();
    if got != blake3 {
        let _ = std::fs::remove_file(&path);
        return Err(format!("{url}: digest mismatch: the manifest says {blake3}, the download is {got}"));
    }
    Ok(())
}
