//! `vorpalfs store …`: add, ls, cat, export, verify, stats, rm.
//!
//! These run against an open [`Store`] through a [`Ctx`], so the same code serves a command run
//! directly and one the daemon runs on a client's behalf.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde_json::json;
use vorpalfs_store::{Digest, EntryKind, Store};

use crate::settings::Settings;

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Ingest a directory; prints its root digest.
    Add {
        dir: PathBuf,
        /// Also record the root under this name (a GC root).
        #[arg(long)]
        name: Option<String>,
    },
    /// List the named roots.
    Ls,
    /// Write a stored file to stdout: `<digest|name>/<path>`.
    Cat { path: String },
    /// Materialize a stored tree into a new or empty directory.
    Export { root: String, dir: PathBuf },
    /// Re-hash everything reachable from the roots; exits non-zero on any damage.
    Verify,
    /// Object counts, logical vs stored bytes, dedup ratio.
    Stats,
    /// Remove a root name (its data stays until garbage collection).
    Rm { name: String },
}

/// What a command runs against: the store, the caller's settings and output streams, and a
/// hook telling the mount (if any) that a root appeared or went away.
pub struct Ctx<'a> {
    pub store: &'a Store,
    pub settings: &'a Settings,
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
    pub root_changed: &'a dyn Fn(&Digest),
    /// Run by this process (not the daemon on a client's behalf): it may draw on the terminal.
    pub local: bool,
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 1.0 } else { a as f64 / b as f64 }
}

pub fn run(ctx: &mut Ctx<'_>, cmd: StoreCommand) -> Result<ExitCode> {
    let (store, s) = (ctx.store, ctx.settings);
    match cmd {
        StoreCommand::Add { dir, name } => {
            let dir = s.abs(&dir);
            let t = Instant::now();
            let r = store.ingest(&dir, name.as_deref()).with_context(|| format!("cannot add {}", dir.display()))?;
            (ctx.root_changed)(&r.root);
            let name = name.unwrap_or_else(|| r.root.to_hex());
            let secs = t.elapsed().as_secs_f64();
            if s.json {
                let v = json!({"digest": r.root.to_hex(), "name": name, "files": r.files, "dirs": r.dirs,
                    "symlinks": r.symlinks, "bytes": r.bytes, "new_chunks": r.new_chunks,
                    "new_bytes": r.new_bytes, "stored_bytes": r.stored_bytes, "seconds": secs});
                writeln!(ctx.out, "{v}")?;
            } else {
                writeln!(ctx.out, "{}", r.root)?;
                writeln!(
                    ctx.err,
                    "added {} files, {} dirs, {} symlinks, {} bytes in {secs:.2}s ({:.0} MB/s); new: {} chunks, {} bytes stored as {}",
                    r.files,
                    r.dirs,
                    r.symlinks,
                    r.bytes,
                    r.bytes as f64 / secs / 1e6,
                    r.new_chunks,
                    r.new_bytes,
                    r.stored_bytes
                )?;
            }
        }
        StoreCommand::Ls => {
            for root in store.roots()? {
                let size = store.tree(&root.digest)?.size();
                if s.json {
                    writeln!(ctx.out, "{}", json!({"name": root.name, "digest": root.digest.to_hex(), "bytes": size}))?;
                } else {
                    writeln!(ctx.out, "{}  {:>14}  {}", root.digest, size, root.name)?;
                }
            }
        }
        StoreCommand::Cat { path } => {
            let (root, inner) = path.split_once('/').unwrap_or((&path, ""));
            let digest = store.resolve(root)?;
            let entry = store.lookup(&digest, inner)?;
            match entry.kind {
                EntryKind::File { digest: f, .. } => {
                    let mut w = std::io::BufWriter::with_capacity(1 << 20, &mut *ctx.out);
                    store.write_file_to(&f, &mut w, std::path::Path::new("<stdout>"))?;
                    w.flush()?;
                }
                _ => bail!("{path}: is a {}, not a file", entry.kind_name()),
            }
        }
        StoreCommand::Export { root, dir } => {
            let dir = s.abs(&dir);
            let digest = store.resolve(&root)?;
            let t = Instant::now();
            let bytes =
                store.export(&digest, &dir).with_context(|| format!("cannot export {root} to {}", dir.display()))?;
            writeln!(ctx.err, "exported {bytes} bytes to {} in {:.2}s", dir.display(), t.elapsed().as_secs_f64())?;
            writeln!(ctx.out, "{}", dir.display())?;
        }
        StoreCommand::Verify => {
            let r = store.verify()?;
            for p in &r.problems {
                if s.json {
                    let v = json!({"root": p.root, "path": p.path, "digest": p.digest.to_hex(), "problem": p.detail});
                    writeln!(ctx.out, "{v}")?;
                } else {
                    writeln!(ctx.out, "CORRUPT {}  {}/{}: {}", p.digest, p.root, p.path, p.detail)?;
                }
            }
            writeln!(
                ctx.err,
                "verified {} roots, {} trees, {} files, {} bytes: {} problems",
                r.roots,
                r.trees,
                r.files,
                r.bytes,
                r.problems.len()
            )?;
            if !r.problems.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        StoreCommand::Stats => {
            let st = store.stats()?;
            let dedup = ratio(st.logical_bytes, st.unique_bytes);
            let comp = ratio(st.unique_bytes, st.stored_bytes);
            if s.json {
                let v = json!({"roots": st.roots, "trees": st.trees, "files": st.files, "chunks": st.chunks,
                    "packs": st.packs, "logical_bytes": st.logical_bytes, "unique_bytes": st.unique_bytes,
                    "stored_bytes": st.stored_bytes, "pack_bytes": st.pack_bytes, "dedup_ratio": dedup,
                    "compression_ratio": comp});
                writeln!(ctx.out, "{v}")?;
            } else {
                let o = &mut *ctx.out;
                writeln!(o, "roots          {}", st.roots)?;
                writeln!(o, "trees          {}", st.trees)?;
                writeln!(o, "files          {}", st.files)?;
                writeln!(o, "chunks         {}", st.chunks)?;
                writeln!(o, "packs          {}  ({} bytes)", st.packs, st.pack_bytes)?;
                writeln!(o, "logical bytes  {}", st.logical_bytes)?;
                writeln!(o, "unique bytes   {}  (dedup ratio {dedup:.2})", st.unique_bytes)?;
                writeln!(o, "stored bytes   {}  (compression ratio {comp:.2})", st.stored_bytes)?;
            }
        }
        StoreCommand::Rm { name } => {
            let digest = store.resolve(&name).ok();
            if !store.remove_root(&name)? {
                bail!("no root named {name:?}");
            }
            if let Some(d) = digest {
                (ctx.root_changed)(&d);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `vorpalfs push`, `pull` and `gc`.
#[derive(Debug, Clone)]
pub enum SyncCommand {
    Push(Vec<String>),
    Pull(Vec<String>),
    Gc,
}

/// A progress bar on a terminal (only when this process owns the terminal: not in the daemon).
fn bar(ctx: &Ctx<'_>, what: &str) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !ctx.local || !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = indicatif::ProgressBar::new(0);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    Some(pb)
}

/// Runs `op` with a progress bar labelled `what` on a terminal (none otherwise).
fn with_progress<T>(
    ctx: &Ctx<'_>,
    what: &str,
    op: impl FnOnce(&(dyn Fn(u64, u64) + Sync)) -> vorpalfs_store::Result<T>,
) -> vorpalfs_store::Result<T> {
    let pb = bar(ctx, what);
    let r = op(&|done, total| {
        if let Some(pb) = &pb {
            pb.set_length(total);
            pb.set_position(done);
        }
    });
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    r
}

pub fn run_sync(ctx: &mut Ctx<'_>, cmd: SyncCommand) -> Result<ExitCode> {
    let store = ctx.store;
    match cmd {
        SyncCommand::Push(names) => {
            for n in names {
                let t = Instant::now();
                let r = with_progress(ctx, &format!("push {n}"), |p| store.push(&n, p))
                    .with_context(|| format!("cannot push {n}"))?;
                if ctx.settings.json {
                    writeln!(
                        ctx.out,
                        "{}",
                        json!({"name": r.name, "tree": r.tree, "already": r.already, "chunks": r.chunks,
                               "new_chunks": r.new_chunks, "uploaded_bytes": r.uploaded_bytes,
                               "seconds": t.elapsed().as_secs_f64()})
                    )?;
                } else if r.already {
                    writeln!(ctx.err, "{n}: already in S3")?;
                } else {
                    writeln!(
                        ctx.err,
                        "{n}: pushed {} of {} chunks, {} bytes, in {:.2}s",
                        r.new_chunks,
                        r.chunks,
                        r.uploaded_bytes,
                        t.elapsed().as_secs_f64()
                    )?;
                }
            }
        }
        SyncCommand::Pull(names) => {
            for n in names {
                let t = Instant::now();
                let r = with_progress(ctx, &format!("pull {n}"), |p| store.pull(&n, p))
                    .with_context(|| format!("cannot pull {n}"))?;
                (ctx.root_changed)(&r.tree);
                if ctx.settings.json {
                    writeln!(
                        ctx.out,
                        "{}",
                        json!({"name": n, "tree": r.tree, "chunks": r.chunks, "fetched_chunks": r.fetched_chunks,
                               "fetched_bytes": r.fetched_bytes, "seconds": t.elapsed().as_secs_f64()})
                    )?;
                } else {
                    writeln!(
                        ctx.err,
                        "{n}: fetched {} of {} chunks ({} bytes) in {:.2}s",
                        r.fetched_chunks,
                        r.chunks,
                        r.fetched_bytes,
                        t.elapsed().as_secs_f64()
                    )?;
                }
            }
        }
        SyncCommand::Gc => {
            let r = store.gc()?;
            if ctx.settings.json {
                writeln!(
                    ctx.out,
                    "{}",
                    json!({"packs_removed": r.packs_removed, "bytes_freed": r.bytes_freed, "chunks_dropped": r.chunks_dropped,
                           "files_dropped": r.files_dropped, "trees_dropped": r.trees_dropped})
                )?;
            } else {
                writeln!(
                    ctx.out,
                    "freed {} bytes: {} packs removed; unreachable: {} chunks, {} files, {} trees dropped",
                    r.bytes_freed, r.packs_removed, r.chunks_dropped, r.files_dropped, r.trees_dropped
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
