//! The metrics endpoint, off by default: the daemon's counters, per-root S3 counters and FUSE
//! operation latencies in the Prometheus text format, at `GET /metrics` on a loopback TCP port
//! (`--metrics 127.0.0.1:9464`) or a Unix socket (`--metrics unix:/run/vorpalfs/metrics.sock`).
//!
//! One thread answers one connection at a time; a request's head must arrive within 2 s (a
//! client trickling bytes is dropped) and within 8 KiB. Only loopback addresses are accepted: the figures name roots every local user
//! can list anyway, and nothing here is for another host.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use vorpalfs_fs::{FsStats, LATENCY_BUCKETS_US, Latency};

use super::protocol::Status;

/// Where the endpoint listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Endpoint {
    /// `HOST:PORT` with a loopback host, or `unix:PATH`.
    pub fn parse(s: &str) -> Result<Endpoint> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                bail!("--metrics {s:?}: no socket path after unix:");
            }
            return Ok(Endpoint::Unix(PathBuf::from(p)));
        }
        let addr: SocketAddr = s.parse().with_context(|| {
            format!("--metrics {s:?}: not an address (HOST:PORT, e.g. 127.0.0.1:9464, or unix:PATH)")
        })?;
        if !addr.ip().is_loopback() {
            bail!("--metrics {s:?}: only a loopback address (127.0.0.1, ::1) or a unix: socket may serve metrics");
        }
        Ok(Endpoint::Tcp(addr))
    }
}

/// Listens on `at` and serves `render()` to each request, on a thread of its own.
pub fn serve(at: &Endpoint, render: impl Fn() -> String + Send + 'static) -> Result<()> {
    let t = Some(Duration::from_secs(2));
    match at {
        Endpoint::Tcp(addr) => {
            let l = TcpListener::bind(addr).with_context(|| format!("cannot listen for metrics on {addr}"))?;
            answer_each(
                std::iter::from_fn(move || Some(l.accept().map(|(c, _)| c)))
                    .flatten()
                    .filter(move |c| c.set_read_timeout(t).and(c.set_write_timeout(t)).is_ok()),
                render,
            )
        }
        Endpoint::Unix(path) => {
            let _ = std::fs::remove_file(path);
            let l =
                UnixListener::bind(path).with_context(|| format!("cannot listen for metrics on {}", path.display()))?;
            answer_each(
                std::iter::from_fn(move || Some(l.accept().map(|(c, _)| c)))
                    .flatten()
                    .filter(move |c| c.set_read_timeout(t).and(c.set_write_timeout(t)).is_ok()),
                render,
            )
        }
    }
}

/// Answers each connection of `conns` in turn, on a thread of its own.
fn answer_each<C: ReadWrite + 'static>(
    conns: impl Iterator<Item = C> + Send + 'static,
    render: impl Fn() -> String + Send + 'static,
) -> Result<()> {
    std::thread::Builder::new().name("vorpalfs-metrics".into()).spawn(move || {
        for mut c in conns {
            let _ = answer_one(&mut c, &render);
        }
    })?;
    Ok(())
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn answer_one(conn: &mut dyn ReadWrite, render: &dyn Fn() -> String) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    // Each read waits at most 2 s, and the whole head may take no longer: a client trickling
    // bytes cannot hold the thread.
    let t = std::time::Instant::now();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        if t.elapsed() > Duration::from_secs(2) {
            return Ok(());
        }
        let n = conn.read(&mut buf)?;
        if n == 0 || head.len() + n > 8 << 10 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let (status, body) = match line.split(|&b| b == b' ').collect::<Vec<_>>()[..] {
        [b"GET", b"/metrics" | b"/", ..] => ("200 OK", render()),
        [b"GET", ..] => ("404 Not Found", "not found: the metrics are at /metrics\n".to_string()),
        _ => ("405 Method Not Allowed", "only GET /metrics\n".to_string()),
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

/// The Prometheus text for `st` and the mount's latencies.
pub fn render(st: &Status, fs: &FsStats) -> String {
    let mut o = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(o, "# HELP vorpalfs_{name} {help}\n# TYPE vorpalfs_{name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(o, "vorpalfs_{name}{labels} {v}");
        }
    };
    let one = |v: u64| vec![(String::new(), v)];
    let f = &st.fs;
    metric("uptime_seconds", "gauge", "Seconds since the daemon started.", &one(st.uptime_seconds));
    metric("fs_lookups_total", "counter", "Lookups the mount answered.", &one(f.lookups));
    metric("fs_reads_total", "counter", "Reads the mount answered.", &one(f.reads));
    metric("fs_read_bytes_total", "counter", "Bytes the mount's reads returned.", &one(f.read_bytes));
    metric("fs_reads_deferred_total", "counter", "Reads that waited for S3.", &one(f.reads_deferred));
    metric("fs_read_errors_total", "counter", "Reads that failed.", &one(f.read_errors));
    metric("fs_inodes", "gauge", "Inodes the kernel holds.", &one(f.inodes));
    let c = &st.chunk_cache;
    metric("chunk_cache_bytes", "gauge", "Bytes in the memory chunk cache.", &one(c.bytes));
    metric("chunk_cache_budget_bytes", "gauge", "The memory chunk cache's budget.", &one(c.budget));
    metric("chunk_cache_hits_total", "counter", "Chunks found in the memory cache.", &one(c.hits));
    metric("chunk_cache_misses_total", "counter", "Chunks not in the memory cache.", &one(c.misses));
    metric("fetched_bytes_total", "counter", "Bytes fetched from S3 and checked.", &one(c.fetched_bytes));
    let m = &st.index_memory;
    let mem: Vec<(String, u64)> =
        [("memtables", m.memtables), ("table_readers", m.table_readers), ("block_cache", m.block_cache)]
            .iter()
            .map(|(k, v)| (format!("{{kind=\"{k}\"}}"), *v))
            .collect();
    metric("index_memory_bytes", "gauge", "What the index (RocksDB) holds in memory.", &mem);
    if let Some(s3) = &st.s3 {
        let t = &s3.traffic;
        metric("s3_gets_total", "counter", "GET requests to S3.", &one(t.gets));
        metric("s3_get_bytes_total", "counter", "Bytes GET from S3.", &one(t.get_bytes));
        metric("s3_puts_total", "counter", "PUT requests to S3.", &one(t.puts));
        metric("s3_put_bytes_total", "counter", "Bytes PUT to S3.", &one(t.put_bytes));
        metric("s3_errors_total", "counter", "S3 requests that failed.", &one(t.errors));
        metric("s3_cache_bytes", "gauge", "Bytes of data fetched from S3 kept on disk.", &one(s3.cache_bytes));
    }
    let p = &st.profiles;
    metric("profile_recorded_roots", "gauge", "Roots with access recorded here.", &one(p.recorded_roots));
    metric("profile_recorded_chunks", "gauge", "Chunks recorded here, all roots.", &one(p.recorded_chunks));
    metric("profiles_used_total", "counter", "Profiles from S3 used.", &one(p.profiles_used));
    let per_root = |get: fn(&vorpalfs_store::RootStats) -> u64| -> Vec<(String, u64)> {
        st.from_s3.iter().map(|r| (format!("{{root=\"{}\"}}", r.tree), get(&r.stats))).collect()
    };
    metric(
        "root_profile_chunks",
        "gauge",
        "Chunks of the profile used for a root (0: none).",
        &per_root(|s| s.profile_chunks),
    );
    metric("root_prefetch_gets_total", "counter", "Prefetch GETs for a root.", &per_root(|s| s.prefetch_gets));
    metric(
        "root_prefetch_bytes_total",
        "counter",
        "Bytes prefetch asked for, for a root.",
        &per_root(|s| s.prefetch_bytes),
    );
    metric("root_demand_misses_total", "counter", "Chunks readers waited for S3 for.", &per_root(|s| s.demand_misses));
    metric("root_gets_total", "counter", "GETs that landed for a root.", &per_root(|s| s.gets));
    metric("root_fetched_bytes_total", "counter", "Bytes that landed for a root.", &per_root(|s| s.fetched_bytes));
    let _ = writeln!(
        o,
        "# HELP vorpalfs_fuse_op_duration_seconds FUSE operations, from the request to the reply.\n# TYPE vorpalfs_fuse_op_duration_seconds histogram"
    );
    for (op, l) in [
        ("lookup", &fs.lookup_latency),
        ("getattr", &fs.getattr_latency),
        ("readdir", &fs.readdir_latency),
        ("read", &fs.read_latency),
    ] {
        histogram(&mut o, op, l);
    }
    o
}

fn histogram(o: &mut String, op: &str, l: &Latency) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut cumulative = 0;
    for (i, b) in l.buckets.iter().enumerate() {
        cumulative += b.load(Relaxed);
        let le = match LATENCY_BUCKETS_US.get(i) {
            Some(us) => format!("{}", *us as f64 / 1e6),
            None => "+Inf".into(),
        };
        let _ = writeln!(o, "vorpalfs_fuse_op_duration_seconds_bucket{{op=\"{op}\",le=\"{le}\"}} {cumulative}");
    }
    let _ =
        writeln!(o, "vorpalfs_fuse_op_duration_seconds_sum{{op=\"{op}\"}} {}", l.sum_micros.load(Relaxed) as f64 / 1e6);
    let _ = writeln!(o, "vorpalfs_fuse_op_duration_seconds_count{{op=\"{op}\"}} {}", l.count.load(Relaxed));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_or_a_unix_socket_serves_metrics() {
        assert_eq!(Endpoint::parse("127.0.0.1:9464").unwrap(), Endpoint::Tcp("127.0.0.1:9464".parse().unwrap()));
        assert!(Endpoint::parse("[::1]:9").is_ok());
        assert_eq!(Endpoint::parse("unix:/run/m.sock").unwrap(), Endpoint::Unix("/run/m.sock".into()));
        let e = Endpoint::parse("0.0.0.0:9464").unwrap_err().to_string();
        assert!(e.contains("only a loopback address"), "{e}");
        assert!(Endpoint::parse("localhost").is_err());
        assert!(Endpoint::parse("unix:").is_err());
    }

    #[test]
    fn latencies_fall_in_cumulative_buckets() {
        let l = Latency::default();
        l.observe(Duration::from_micros(5));
        l.observe(Duration::from_micros(700));
        l.observe(Duration::from_secs(3));
        let mut o = String::new();
        histogram(&mut o, "read", &l);
        assert!(o.contains("le=\"0.00001\"} 1\n"), "{o}");
        assert!(o.contains("le=\"0.001\"} 2\n"), "{o}");
        assert!(o.contains("le=\"1\"} 2\n"), "{o}");
        assert!(o.contains("le=\"+Inf\"} 3\n"), "{o}");
        assert!(o.contains("_count{op=\"read\"} 3\n"), "{o}");
    }
}
