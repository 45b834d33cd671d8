//! `vorpalfs status`: whether the store is mounted, and the daemon's counters.

use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;

use crate::daemon::client;
use crate::settings::Settings;

pub fn run(settings: &Settings) -> Result<ExitCode> {
    let Some(conn) = client::connect(settings) else {
        let stale = vorpalfs_fs::is_mountpoint(&settings.mountpoint);
        if settings.json {
            println!("{}", json!({"mounted": false, "store": settings.store_dir, "stale_mount": stale}));
        } else {
            println!("not mounted (store {})", settings.store_dir.display());
            if stale {
                println!("a stale mount remains at {}: run `vorpalfs umount`", settings.mountpoint.display());
            }
        }
        return Ok(ExitCode::SUCCESS);
    };
    let st = client::status(conn, settings)?;
    if settings.json {
        println!("{}", serde_json::to_string(&st)?);
        return Ok(ExitCode::SUCCESS);
    }
    let (c, f) = (&st.chunk_cache, &st.fs);
    println!("mounted at {} by pid {} (up {}s)", st.mountpoint.display(), st.pid, st.uptime_seconds);
    println!("store        {}", st.store.display());
    println!("chunk cache  {} of {} bytes, {} hits, {} misses", c.bytes, c.budget, c.hits, c.misses);
    println!(
        "reads        {} ({} bytes, {} waited for a fetch, {} failed)",
        f.reads, f.read_bytes, f.reads_deferred, f.read_errors
    );
    println!("lookups      {} ({} inodes held)", f.lookups, f.inodes);
    let m = &st.index_memory;
    println!(
        "index memory {} bytes in memtables, {} in table readers, {} in the block cache ({} pinned)",
        m.memtables, m.table_readers, m.block_cache, m.block_cache_pinned
    );
    if let Some(s3) = &st.s3 {
        let t = &s3.traffic;
        println!(
            "s3           {}: {} GETs ({} bytes), {} PUTs ({} bytes), {} errors; cache {} bytes (budget {})",
            s3.url,
            t.gets,
            t.get_bytes,
            t.puts,
            t.put_bytes,
            t.errors,
            s3.cache_bytes,
            s3.cache_budget.map_or("none".to_string(), |b| b.to_string())
        );
        println!(
            "fetched      {} bytes checked and kept; {} GETs prefetching small roots whole",
            c.fetched_bytes, c.prefetch_gets
        );
        let keys: Vec<&str> = s3.trusted_keys.iter().map(|k| k.split(':').next().unwrap_or(k)).collect();
        println!(
            "trust        signs with {}; accepts {}; {}",
            s3.signing_key.as_deref().unwrap_or("no key"),
            if keys.is_empty() { "any root (no keys set)".to_string() } else { keys.join(", ") },
            if s3.signatures_required { "signatures required" } else { "unsigned roots taken" }
        );
    }
    let p = &st.profiles;
    if p.recorded_roots > 0 || p.profiles_used > 0 {
        println!(
            "profiles     {} chunks of {} roots recorded here; from S3: {} used, prefetching {} bytes in {} GETs",
            p.recorded_chunks, p.recorded_roots, p.profiles_used, p.prefetch_bytes, p.prefetch_gets
        );
    }
    for r in &st.from_s3 {
        let by = r.signed_by.as_deref().map_or("unsigned".to_string(), |k| format!("signed by {k}"));
        println!("from S3      {} ({}): {by}", r.name, r.tree);
        let s = &r.stats;
        let profile =
            if s.profile_chunks > 0 { format!("profile of {} chunks", s.profile_chunks) } else { "no profile".into() };
        println!(
            "             {profile}; prefetched {} bytes in {} GETs; {} demand misses; {} bytes in {} GETs in all",
            s.prefetch_bytes, s.prefetch_gets, s.demand_misses, s.fetched_bytes, s.gets
        );
    }
    Ok(ExitCode::SUCCESS)
}
