//! `vorpalfs-load`: a load generator for a mounted store (run by `scripts/bench/load.sh`).
//!
//! For a bounded time, N reader threads read 128 KiB at random offsets of random files of a
//! tree in the mount (small and large), M stat threads `lstat` random paths, and a dropper
//! empties the kernel's page, dentry and inode caches every few seconds so that requests keep
//! reaching the daemon (the kernel otherwise answers repeats itself). Every call is timed. A
//! sampler records the daemon's RSS and open file descriptors every second.
//!
//! Reads fall in three classes: the first read of a file (from the packs); a re-read, after the
//! kernel's caches were dropped, of a range this reader read before (from the daemon's memory:
//! its chunk cache); any other read (a new range of a file seen before: packs or memory). The
//! `open` before each read is timed on its own (after a drop it walks the path, a lookup round
//! trip per component), so read latencies are of the read alone. Prints
//! per-class latency percentiles and the RSS (anonymous and file-backed) and fd series as JSON
//! lines on stdout, a table on stderr.
//!
//!     vorpalfs-load --tree DIR --pid DAEMON_PID [--readers 8] [--stats 2] [--seconds 600]

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn walk(dir: &Path, out: &mut Vec<(PathBuf, u64)>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            walk(&e.path(), out);
        } else if ft.is_file() {
            out.push((e.path(), e.metadata().map(|m| m.len()).unwrap_or(0)));
        }
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// What a timed read was (see the top of this file).
#[derive(Clone, Copy, PartialEq)]
enum Class {
    First,
    Warm,
    Other,
}

/// Latencies in microseconds, by class.
#[derive(Default)]
struct Lat {
    first_read: Vec<u32>,
    warm: Vec<u32>,
    read: Vec<u32>,
    open: Vec<u32>,
    stat: Vec<u32>,
    errors: u64,
    bytes: u64,
}

fn pct(v: &mut [u32], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    f64::from(v[i]) / 1000.0
}

fn micros(since: Instant) -> u32 {
    since.elapsed().as_micros().min(u128::from(u32::MAX)) as u32
}

/// The daemon's RSS, its anonymous part (KiB) and its open fds.
fn status(pid: u32) -> (u64, u64, u64) {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        st.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0);
    (kib("VmRSS:"), kib("RssAnon:"), fds)
}

fn main() {
    let tree = PathBuf::from(arg("--tree").expect("--tree DIR"));
    let pid: u32 = arg("--pid").expect("--pid DAEMON_PID").parse().expect("a pid");
    let readers: usize = arg("--readers").map_or(8, |v| v.parse().expect("a number"));
    let stats: usize = arg("--stats").map_or(2, |v| v.parse().expect("a number"));
    let seconds: u64 = arg("--seconds").map_or(600, |v| v.parse().expect("a number"));
    let drop_every: u64 = arg("--drop-every").map_or(3, |v| v.parse().expect("a number"));

    let mut files = Vec::new();
    walk(&tree, &mut files);
    assert!(!files.is_empty(), "no files under {}", tree.display());
    let files = Arc::new(files);
    eprintln!("{} files under {}; {readers} readers, {stats} stat threads, {seconds} s", files.len(), tree.display());
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(HashSet::new()));
    // Bumped each time the caches are dropped: a range read in an earlier epoch is no longer
    // in the page cache, so its re-read reaches the daemon.
    let epoch = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(Lat::default()));
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for r in 0..readers {
        let (files, stop, seen, lat, epoch) = (files.clone(), stop.clone(), seen.clone(), lat.clone(), epoch.clone());
        handles.push(std::thread::spawn(move || {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (r as u64 + 1));
            let mut buf = vec![0u8; 128 << 10];
            let mut mine = Lat::default();
            // This reader's recent reads (file, offset, epoch): every other read re-reads one
            // of them once the caches were dropped since.
            let mut recent: Vec<(usize, u64, u64)> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let now = epoch.load(Ordering::Relaxed);
                let again = rng.next().is_multiple_of(2);
                let pick = recent.iter().position(|r| r.2 < now).filter(|_| again);
                let (i, off, class) = match pick {
                    Some(p) => {
                        let (i, off, _) = recent.swap_remove(p);
                        (i, off, Class::Warm)
                    }
                    None => {
                        let i = rng.below(files.len());
                        let size = files[i].1;
                        let off = if size > buf.len() as u64 { rng.next() % (size - buf.len() as u64) } else { 0 };
                        (i, off, if seen.lock().unwrap().insert(i) { Class::First } else { Class::Other })
                    }
                };
                // The open (a path walk: after a drop, a lookup round trip per component) and
                // the read are timed apart: the read targets are for the read.
                let t = Instant::now();
                let f = match File::open(&files[i].0) {
                    Ok(f) => f,
                    Err(_) => {
                        mine.errors += 1;
                        continue;
                    }
                };
                mine.open.push(micros(t));
                let t = Instant::now();
                let r = f.read_at(&mut buf, off);
                let us = micros(t);
                match r {
                    Ok(n) => {
                        mine.bytes += n as u64;
                        match class {
                            Class::First => mine.first_read.push(us),
                            Class::Warm => mine.warm.push(us),
                            Class::Other => mine.read.push(us),
                        }
                        if class != Class::Warm && recent.len() < 64 {
                            recent.push((i, off, now));
                        }
                    }
                    Err(_) => mine.errors += 1,
                }
            }
            let mut l = lat.lock().unwrap();
            l.first_read.extend(mine.first_read);
            l.warm.extend(mine.warm);
            l.read.extend(mine.read);
            l.open.extend(mine.open);
            l.errors += mine.errors;
            l.bytes += mine.bytes;
        }));
    }
    for s in 0..stats {
        let (files, stop, lat) = (files.clone(), stop.clone(), lat.clone());
        handles.push(std::thread::spawn(move || {
            let mut rng = Rng(0x2545_F491_4F6C_DD1D ^ (s as u64 + 1));
            let mut mine = Vec::new();
            let mut errors = 0;
            while !stop.load(Ordering::Relaxed) {
                let (path, _) = &files[rng.below(files.len())];
                let t = Instant::now();
                match std::fs::symlink_metadata(path) {
                    Ok(_) => mine.push(micros(t)),
                    Err(_) => errors += 1,
                }
            }
            let mut l = lat.lock().unwrap();
            l.stat.extend(mine);
            l.errors += errors;
        }));
    }
    {
        let (stop, epoch) = (stop.clone(), epoch.clone());
        handles.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(drop_every));
                let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
                epoch.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut samples = Vec::new();
    while t0.elapsed() < Duration::from_secs(seconds) {
        let (rss, anon, fds) = status(pid);
        samples.push((t0.elapsed().as_secs(), rss, anon, fds));
        println!(
            r#"{{"t":{},"daemon_rss_kib":{rss},"daemon_rss_anon_kib":{anon},"daemon_fds":{fds}}}"#,
            t0.elapsed().as_secs()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    let secs = t0.elapsed().as_secs_f64();
    let mut l = lat.lock().unwrap();
    let reads = l.first_read.len() + l.warm.len() + l.read.len();
    eprintln!(
        "{reads} reads ({:.0}/s, {:.0} MB/s), {} stats ({:.0}/s), {} errors",
        reads as f64 / secs,
        l.bytes as f64 / secs / 1e6,
        l.stat.len(),
        l.stat.len() as f64 / secs,
        l.errors
    );
    eprintln!("{:<28} {:>8} {:>9} {:>9} {:>9} {:>9}", "latency (ms)", "count", "p50", "p95", "p99", "max");
    let errors = l.errors;
    let Lat { first_read, warm, read, open, stat, .. } = &mut *l;
    let classes = [
        ("first read of a file", first_read),
        ("warm re-read 128 KiB", warm),
        ("other read 128 KiB", read),
        ("open before a read", open),
        ("lstat", stat),
    ];
    for (name, v) in classes {
        let (p50, p95, p99, max) = (pct(v, 0.5), pct(v, 0.95), pct(v, 0.99), pct(v, 1.0));
        eprintln!("{name:<28} {:>8} {p50:>9.3} {p95:>9.3} {p99:>9.3} {max:>9.3}", v.len());
        let key = name.replace(' ', "_");
        println!(
            r#"{{"class":"{key}","count":{},"p50_ms":{p50},"p95_ms":{p95},"p99_ms":{p99},"max_ms":{max}}}"#,
            v.len()
        );
    }
    // RSS after the first minute (caches warm) against the end: growth means a leak.
    let warm = samples.iter().find(|s| s.0 >= 60).or(samples.first()).copied().unwrap_or_default();
    let last = samples.last().copied().unwrap_or_default();
    // And half way: a cache still filling grows early and stops; a leak keeps growing.
    let half = samples.get(samples.len() / 2).copied().unwrap_or_default();
    let max_fds = samples.iter().map(|s| s.3).max().unwrap_or(0);
    eprintln!(
        "daemon RSS: {} MiB ({} anonymous) at {} s, {} MiB ({} anonymous) at {} s, {} MiB ({} anonymous) at the end ({} s); open fds at most {max_fds}, {} at the end",
        warm.1 / 1024,
        warm.2 / 1024,
        warm.0,
        half.1 / 1024,
        half.2 / 1024,
        half.0,
        last.1 / 1024,
        last.2 / 1024,
        last.0,
        last.3
    );
    println!(
        r#"{{"summary":true,"seconds":{secs:.1},"reads":{reads},"errors":{errors},"rss_warm_kib":{},"rss_end_kib":{},"anon_warm_kib":{},"anon_end_kib":{},"rss_half_kib":{},"anon_half_kib":{},"fds_max":{max_fds},"fds_end":{}}}"#,
        warm.1, last.1, warm.2, last.2, half.1, half.2, last.3
    );
}
