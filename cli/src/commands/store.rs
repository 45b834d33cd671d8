//! `vorpalfs store …`: add, ls, cat, export, verify, repair, stats, rm.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::json;
use vorpalfs_store::EntryKind;

use super::Ctx;
use crate::args::StoreCommand;

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 1.0 } else { a as f64 / b as f64 }
}

/// Verify's findings: one line per use of a damaged object, and a summary on stderr.
fn print_verify(ctx: &mut Ctx<'_>, r: &vorpalfs_store::VerifyReport) -> Result<()> {
    for p in &r.problems {
        if ctx.settings.json {
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
    Ok(())
}

pub fn run(ctx: &mut Ctx<'_>, cmd: StoreCommand) -> Result<ExitCode> {
    let (store, s) = (ctx.store, ctx.settings);
    match cmd {
        StoreCommand::Add { dir, name } => {
            let dir = s.abs(&dir);
            let t = Instant::now();
            // Read with the client's rights, never the daemon's.
            let src = vorpalfs_store::Source { path: &dir, keep: None, creds: s.creds.as_ref(), public_only: false };
            let r =
                store.ingest_source(src, name.as_deref()).with_context(|| format!("cannot add {}", dir.display()))?;
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
                // A root found in S3: the trusted key that signed it.
                let signer = store.signer(&root.name)?.map(|s| s.key);
                if s.json {
                    writeln!(
                        ctx.out,
                        "{}",
                        json!({"name": root.name, "digest": root.digest.to_hex(), "bytes": size, "signed_by": signer})
                    )?;
                } else {
                    let signed = signer.map_or(String::new(), |k| format!("  (signed by {k})"));
                    writeln!(ctx.out, "{}  {:>14}  {}{signed}", root.digest, size, root.name)?;
                }
            }
        }
        StoreCommand::Cat { path } => {
            let (root, inner) = path.split_once('/').unwrap_or((&path, ""));
            let digest = store.resolve(root)?.tree;
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
            let digest = store.resolve(&root)?.tree;
            let t = Instant::now();
            let bytes = store
                .export_as(&digest, &dir, s.creds.as_ref())
                .with_context(|| format!("cannot export {root} to {}", dir.display()))?;
            writeln!(ctx.err, "exported {bytes} bytes to {} in {:.2}s", dir.display(), t.elapsed().as_secs_f64())?;
            writeln!(ctx.out, "{}", dir.display())?;
        }
        StoreCommand::Verify => {
            let r = store.verify()?;
            print_verify(ctx, &r)?;
            if !r.problems.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        StoreCommand::Repair => {
            let r = store.repair()?;
            print_verify(ctx, &r.verify)?;
            for (what, list) in [("refetched", &r.refetched), ("dropped", &r.dropped), ("missing", &r.missing)] {
                for d in list {
                    if s.json {
                        writeln!(ctx.out, "{}", json!({"repair": what, "digest": d.to_hex()}))?;
                    } else {
                        writeln!(ctx.out, "{what} {d}")?;
                    }
                }
            }
            writeln!(
                ctx.err,
                "repair: {} fetched again from S3, {} dropped from the index, {} missing",
                r.refetched.len(),
                r.dropped.len(),
                r.missing.len()
            )?;
            if !r.dropped.is_empty() || !r.missing.is_empty() {
                writeln!(
                    ctx.err,
                    "re-add the sources of the roots named above (or pull them from S3) to restore what was dropped or missing"
                )?;
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
            let Some(tree) = store.remove_root(&name)? else { bail!("no root named {name:?}") };
            // The mount shows a root named by a digest under its name, any other under its tree.
            (ctx.root_changed)(&name.parse().unwrap_or(tree));
        }
    }
    Ok(ExitCode::SUCCESS)
}
