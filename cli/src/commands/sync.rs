//! `vorpalfs push`, `pull` and `gc`: moving roots between this store and S3, and collecting
//! garbage. Progress bars only where this process owns the terminal (not in the daemon).

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;

use super::Ctx;

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

/// `vorpalfs push`, `pull` and `gc`.
#[derive(Debug, Clone)]
pub enum SyncCommand {
    Push(Vec<String>),
    Pull(Vec<String>),
    Profile(crate::args::ProfileCommand),
    Gc,
}

pub fn run(ctx: &mut Ctx<'_>, cmd: SyncCommand) -> Result<ExitCode> {
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
                               "signed_by": r.signed_by, "seconds": t.elapsed().as_secs_f64()})
                    )?;
                } else {
                    let signed = r.signed_by.as_ref().map_or(String::new(), |k| format!(", signed by {k}"));
                    if r.already {
                        writeln!(ctx.err, "{n}: already in S3{signed}")?;
                    } else {
                        writeln!(
                            ctx.err,
                            "{n}: pushed {} of {} chunks, {} bytes, in {:.2}s{signed}",
                            r.new_chunks,
                            r.chunks,
                            r.uploaded_bytes,
                            t.elapsed().as_secs_f64()
                        )?;
                    }
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
        SyncCommand::Profile(crate::args::ProfileCommand::Push { names }) => {
            for n in names {
                let r = store.push_profile(&n).with_context(|| format!("cannot push the profile of {n}"))?;
                let signed = r.signed_by.as_ref().map_or(String::new(), |k| format!(", signed by {k}"));
                if ctx.settings.json {
                    writeln!(
                        ctx.out,
                        "{}",
                        json!({"name": n, "tree": r.tree, "recorded": r.recorded, "there": r.there,
                               "written": r.written, "signed_by": r.signed_by})
                    )?;
                } else if r.written == 0 {
                    writeln!(
                        ctx.err,
                        "{n}: the profile in S3 ({} chunks) already has the {} read here",
                        r.there, r.recorded
                    )?;
                } else {
                    writeln!(
                        ctx.err,
                        "{n}: profile of {} chunks pushed ({} read here, {} in S3 before){signed}",
                        r.written, r.recorded, r.there
                    )?;
                }
            }
        }
        SyncCommand::Profile(crate::args::ProfileCommand::Repack { names }) => {
            for n in names {
                let t = Instant::now();
                let r = with_progress(ctx, &format!("repack {n}"), |p| store.repack(&n, p))
                    .with_context(|| format!("cannot repack {n}"))?;
                if ctx.settings.json {
                    writeln!(
                        ctx.out,
                        "{}",
                        json!({"name": r.name, "tree": r.tree, "already": r.already, "hot_chunks": r.hot_chunks,
                               "hot_bytes": r.hot_bytes, "runs_before": r.runs_before, "runs_after": r.runs_after,
                               "fetched_bytes": r.fetched_bytes, "uploaded_bytes": r.uploaded_bytes,
                               "index": r.index, "seconds": t.elapsed().as_secs_f64()})
                    )?;
                } else if r.already {
                    writeln!(
                        ctx.err,
                        "{n}: the {} hot chunks ({} bytes) already lie in {} stretch(es); left as it is",
                        r.hot_chunks, r.hot_bytes, r.runs_before
                    )?;
                } else {
                    writeln!(
                        ctx.err,
                        "{n}: {} hot chunks ({} bytes) moved from {} stretches to {}; {} bytes uploaded in {:.2}s",
                        r.hot_chunks,
                        r.hot_bytes,
                        r.runs_before,
                        r.runs_after,
                        r.uploaded_bytes,
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
