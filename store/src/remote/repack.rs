//! Repack: a root's hot chunks laid out back to back in S3, in the order of its profile.
//!
//! A profile names the chunks a program read first, but a push laid them out in walk order, so
//! they lie scattered over the root's packs and a host prefetching them makes one GET per
//! stretch. [`Store::repack`] writes the profile's chunks, in profile order, into new packs
//! (cut at the push size), then a new index placing them there (the other chunks keep their
//! places), then the root object(s) naming the new index. A host that looks the root up later
//! prefetches the hot set in a few large GETs, and its reads meet the chunks in the order they
//! come.
//!
//! What stays valid: the root object's signatures cover the name, kind and tree, not the index,
//! so they are kept (and this host's is added or renewed); the old packs and index are left as
//! they are, so a host that applied the old index reads on from the old places. The hot chunks
//! are then twice in S3 (nothing in this project deletes packs from S3). A root whose hot set
//! already lies back to back is left alone.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::local::index::{Batch, Meta, Place};
use crate::local::pack::RECORD_HEADER;
use crate::model::digest::Digest;
use crate::model::records::RemoteLocator;
use crate::remote::format;
use crate::remote::profile::{self, MAX_PROFILE_OBJECT};
use crate::store::Store;

/// What a repack did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepackReport {
    pub name: String,
    pub tree: Digest,
    /// Chunks of the profile (those of this root's closure).
    pub hot_chunks: u64,
    /// Their stored bytes.
    pub hot_bytes: u64,
    /// Stretches of back-to-back chunks the hot set lay in before (and after, when repacked).
    pub runs_before: u64,
    pub runs_after: u64,
    /// True when the hot set already lay back to back: nothing was written.
    pub already: bool,
    /// Bytes fetched from S3 to have the hot chunks here, and bytes written to S3.
    pub fetched_bytes: u64,
    pub uploaded_bytes: u64,
    /// The index the root object now names.
    pub index: Digest,
}

/// How many stretches of back-to-back records `places` (in this order) lie in.
fn runs<'a>(places: impl IntoIterator<Item = &'a RemoteLocator>) -> u64 {
    let mut n = 0;
    let mut end: Option<(Digest, u64)> = None;
    for l in places {
        if end != Some((l.pack, l.offset)) {
            n += 1;
        }
        end = Some((l.pack, l.offset + u64::from(l.stored_len) + RECORD_HEADER));
    }
    n
}

impl Store {
    /// Lays the hot chunks of root `what` (a name or digest S3 has; its profile in S3 says which
    /// they are) out back to back in new packs, in profile order, and points the root's index
    /// there. Idempotent: a root already laid out so is left alone.
    pub fn repack(&self, what: &str, progress: &(dyn Fn(u64, u64) + Sync)) -> Result<RepackReport> {
        let remote = self.remote_or_err()?;
        let r = self.resolve(what)?;
        let (name, tree) = (r.root, r.tree);
        let refuse = |why: String| Error::NotRepacked { name: name.clone(), why };
        let _pin = self.pin(&tree)?;
        let there = match self.root_object_in_s3(remote, &name)? {
            Some(o) if o.tree == tree => o,
            Some(o) => return Err(refuse(format!("S3 names tree {} under it, not {tree}", o.tree))),
            None => return Err(refuse("S3 has no root object of that name (push it first)".into())),
        };
        let key = profile::profile_key(&tree);
        let hot = match remote.wait(remote.get(key.clone(), MAX_PROFILE_OBJECT))? {
            Some(b) => {
                profile::accept(&b, &tree, &self.opts.trust)
                    .map_err(|why| refuse(format!("{}/{key}: {why}", remote.url())))?
                    .chunks
            }
            None => return Err(refuse(format!("S3 has no profile of tree {tree} (`vorpalfs profile push` one)"))),
        };
        // Where the index S3 names now puts each chunk: what readers of it fetch.
        let mut places: HashMap<Digest, RemoteLocator> = HashMap::new();
        let index = remote.wait(super::fetch::fetch_index(remote.clone(), there.index, there.index_size))?;
        format::decode_index(&index, &there.index, |e| {
            if let format::IndexEntry::Chunk(id, l) = e {
                places.insert(id, l);
            }
            Ok(())
        })?;
        drop(index);
        let c = self.closure(&tree)?;
        if let Some(id) = c.chunks.iter().find(|id| !places.contains_key(id)) {
            return Err(refuse(format!("index {} in S3 has no place for chunk {id}", there.index)));
        }
        let hot: Vec<Digest> = hot.into_iter().filter(|id| places.contains_key(id)).collect();
        let hot_places = || hot.iter().map(|id| &places[id]);
        let mut report = RepackReport {
            name: name.clone(),
            tree,
            hot_chunks: hot.len() as u64,
            hot_bytes: hot_places().map(|l| u64::from(l.stored_len)).sum(),
            runs_before: runs(hot_places()),
            index: there.index,
            ..Default::default()
        };
        // Back to back already: one stretch per pack a push would cut.
        let packs_needed =
            (report.hot_bytes + hot.len() as u64 * RECORD_HEADER).div_ceil(super::push::REMOTE_PACK_SIZE);
        if hot.is_empty() || report.runs_before <= packs_needed.max(1) {
            report.already = true;
            report.runs_after = report.runs_before;
            return Ok(report);
        }
        report.fetched_bytes = self.fetch_missing(&hot, &|_, _| {})?.1;
        let mut locals = Vec::with_capacity(hot.len());
        for id in &hot {
            locals.push((*id, self.index.locator(id)?.ok_or(Error::Missing { what: "chunk", digest: *id })?));
        }
        let uploaded = self.upload_packs(remote, &tree, &locals, progress);
        let mut batch = Batch::default();
        for (id, rl) in &uploaded.placed {
            batch.put_remote(id, rl, Place::Verified);
        }
        report.uploaded_bytes = uploaded.bytes;
        if let Some(e) = uploaded.error {
            self.commit(batch)?;
            return Err(e);
        }
        let moved: HashMap<Digest, RemoteLocator> = uploaded.placed.into_iter().collect();
        report.runs_after = runs(hot.iter().map(|id| &moved[id]));
        let chunks: Vec<(Digest, RemoteLocator)> =
            c.chunks.iter().map(|id| (*id, *moved.get(id).unwrap_or(&places[id]))).collect();
        let (index_digest, index_size, sent) = super::push::put_index(remote, &c, &chunks)?;
        report.uploaded_bytes += sent;
        // The same object with the new index: its signatures still hold (they do not cover the
        // index). The tree-digest alias is moved too when it names this tree.
        let kind = there.kind.unwrap_or(self.kind_of(&name)?);
        let mut names = vec![(name.clone(), there)];
        let alias = tree.to_hex();
        if alias != name
            && let Some(o) = self.root_object_in_s3(remote, &alias)?.filter(|o| o.tree == tree)
        {
            names.push((alias, o));
        }
        for (n, mut obj) in names {
            // Another host may have pushed a new version meanwhile: that one is not undone (the
            // window left is one round trip, as for a push).
            if self.root_object_in_s3(remote, &n)?.is_none_or(|now| (now.tree, now.index) != (obj.tree, obj.index)) {
                return Err(refuse(format!("the root object {n} in S3 changed during the repack; run it again")));
            }
            (obj.index, obj.index_size) = (index_digest, Some(index_size));
            obj.kind = Some(obj.kind.unwrap_or(kind));
            if let Some(k) = &self.opts.trust.signer {
                obj.sign(&n, k);
            }
            let bytes = obj.encode();
            if self.index.meta(Meta::RootObject(&n))?.is_some() {
                batch.put_meta(Meta::RootObject(&n), &bytes);
            }
            remote.wait(remote.put(format::root_key(&n), bytes.into()))?;
        }
        batch.put_meta(Meta::AppliedIndex(&index_digest), b"");
        self.commit(batch)?;
        report.index = index_digest;
        tracing::info!(name, tree = %tree, hot = report.hot_chunks, runs_before = report.runs_before,
            runs_after = report.runs_after, "repacked");
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::records::Codec;

    #[test]
    fn runs_count_stretches_of_back_to_back_records() {
        let at = |pack: u8, offset: u64, len: u32| RemoteLocator {
            pack: Digest([pack; 32]),
            offset,
            stored_len: len,
            raw_len: len,
            codec: Codec::Raw,
        };
        let h = RECORD_HEADER;
        let a = [at(1, h, 10), at(1, 2 * h + 10, 5), at(1, 3 * h + 15, 1)];
        assert_eq!(runs(&a), 1);
        // Out of order, a gap, another pack: each starts a stretch.
        assert_eq!(runs(&[a[1], a[0]]), 2);
        assert_eq!(runs(&[a[0], a[2]]), 2);
        assert_eq!(runs(&[a[0], at(2, 2 * h + 10, 5)]), 2);
        assert_eq!(runs(&[]), 0);
    }
}
