//! `vorpalfs store …`: add, ls, cat, export, verify, stats, rm.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde_json::json;
use vorpalfs_store::{EntryKind, Store};

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

fn open(s: &Settings) -> Result<Store> {
    Ok(Store::open(&s.store_dir)?)
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 1.0 } else { a as f64 / b as f64 }
}

pub fn run(s: &Settings, cmd: StoreCommand) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match cmd {
        StoreCommand::Add { dir, name } => {
            let store = open(s)?;
            let t = Instant::now();
            let r = store
                .ingest(&dir, name.as_deref())
                .with_context(|| format!("cannot add {}", dir.display()))?;
            let name = name.unwrap_or_else(|| r.root.to_hex());
            let secs = t.elapsed().as_secs_f64();
            if s.json {
                let v = json!({"digest": r.root.to_hex(), "name": name, "files": r.files, "dirs": r.dirs,
                    "symlinks": r.symlinks, "bytes": r.bytes, "new_chunks": r.new_chunks,
                    "new_bytes": r.new_bytes, "stored_bytes": r.stored_bytes, "seconds": secs});
                writeln!(out, "{v}")?;
            } else {
                writeln!(out, "{}", r.root)?;
                eprintln!(
                    "added {} files, {} dirs, {} symlinks, {} bytes in {secs:.2}s ({:.0} MB/s); new: {} chunks, {} bytes stored as {}",
                    r.files,
                    r.dirs,
                    r.symlinks,
                    r.bytes,
                    r.bytes as f64 / secs / 1e6,
                    r.new_chunks,
                    r.new_bytes,
                    r.stored_bytes
                );
            }
        }
        StoreCommand::Ls => {
            let store = open(s)?;
            for root in store.roots()? {
                let size = store.tree(&root.digest)?.size();
                if s.json {
                    writeln!(
                        out,
                        "{}",
                        json!({"name": root.name, "digest": root.digest.to_hex(), "bytes": size})
                    )?;
                } else {
                    writeln!(out, "{}  {:>14}  {}", root.digest, size, root.name)?;
                }
            }
        }
        StoreCommand::Cat { path } => {
            let store = open(s)?;
            let (root, inner) = path.split_once('/').unwrap_or((&path, ""));
            let digest = store.resolve(root)?;
            let entry = store.lookup(&digest, inner)?;
            match entry.kind {
                EntryKind::File { digest: f, .. } => {
                    let mut w = std::io::BufWriter::with_capacity(1 << 20, out);
                    store.write_file_to(&f, &mut w, std::path::Path::new("<stdout>"))?;
                    w.flush()?;
                    return Ok(ExitCode::SUCCESS);
                }
                _ => bail!("{path}: is a {}, not a file", entry.kind_name()),
            }
        }
        StoreCommand::Export { root, dir } => {
            let store = open(s)?;
            let digest = store.resolve(&root)?;
            let t = Instant::now();
            let bytes = store
                .export(&digest, &dir)
                .with_context(|| format!("cannot export {root} to {}", dir.display()))?;
            eprintln!(
                "exported {bytes} bytes to {} in {:.2}s",
                dir.display(),
                t.elapsed().as_secs_f64()
            );
            writeln!(out, "{}", dir.display())?;
        }
        StoreCommand::Verify => {
            let store = open(s)?;
            let r = store.verify()?;
            for p in &r.problems {
                if s.json {
                    writeln!(
                        out,
                        "{}",
                        json!({"root": p.root, "path": p.path, "digest": p.digest.to_hex(), "problem": p.detail})
                    )?;
                } else {
                    writeln!(
                        out,
                        "CORRUPT {}  {}/{}: {}",
                        p.digest, p.root, p.path, p.detail
                    )?;
                }
            }
            eprintln!(
                "verified {} roots, {} trees, {} files, {} bytes: {} problems",
                r.roots,
                r.trees,
                r.files,
                r.bytes,
                r.problems.len()
            );
            if !r.problems.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        StoreCommand::Stats => {
            let st = open(s)?.stats()?;
            let dedup = ratio(st.logical_bytes, st.unique_bytes);
            let comp = ratio(st.unique_bytes, st.stored_bytes);
            if s.json {
                writeln!(
                    out,
                    "{}",
                    json!({"roots": st.roots, "trees": st.trees, "files": st.files, "chunks": st.chunks,
                    "packs": st.packs, "logical_bytes": st.logical_bytes, "unique_bytes": st.unique_bytes,
                    "stored_bytes": st.stored_bytes, "pack_bytes": st.pack_bytes, "dedup_ratio": dedup, "compression_ratio": comp})
                )?;
            } else {
                writeln!(out, "roots          {}", st.roots)?;
                writeln!(out, "trees          {}", st.trees)?;
                writeln!(out, "files          {}", st.files)?;
                writeln!(out, "chunks         {}", st.chunks)?;
                writeln!(
                    out,
                    "packs          {}  ({} bytes)",
                    st.packs, st.pack_bytes
                )?;
                writeln!(out, "logical bytes  {}", st.logical_bytes)?;
                writeln!(
                    out,
                    "unique bytes   {}  (dedup ratio {dedup:.2})",
                    st.unique_bytes
                )?;
                writeln!(
                    out,
                    "stored bytes   {}  (compression ratio {comp:.2})",
                    st.stored_bytes
                )?;
            }
        }
        StoreCommand::Rm { name } => {
            if !open(s)?.remove_root(&name)? {
                bail!("no root named {name:?}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
