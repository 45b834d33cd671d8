//! The bodies of the fuzz targets (`fuzz/`) for the decoders of bytes from disk and from S3,
//! shared with the stable "arbitrary bytes" property tests (`store/tests/decoders.rs`), so both
//! check the same thing: no input panics or allocates past a decoder's cap, and what decodes
//! re-encodes to the same bytes (the encodings are canonical). Not part of the API.

use crate::model::digest::{Digest, Kind};
use crate::model::records::{FileRecord, Locator, RemoteLocator};
use crate::model::tree::Tree;
use crate::remote::format::{self, IndexEntry, RootObject};

/// A tree encoding (named by its own digest, so decoding gets past the name check).
pub fn tree(data: &[u8]) {
    let d = Digest::of(Kind::Tree, data);
    if let Ok(t) = Tree::decode(data, &d) {
        assert_eq!(t.encode(), data, "a decoded tree re-encodes to other bytes");
    }
}

/// A file record (named by its own digest).
pub fn file_record(data: &[u8]) {
    let d = Digest::of(Kind::File, data);
    if let Ok(f) = FileRecord::decode(data, &d) {
        assert_eq!(f.encode(), data, "a decoded file record re-encodes to other bytes");
        assert_eq!(f.chunks.iter().map(|c| u64::from(c.len)).sum::<u64>(), f.size);
    }
}

/// A chunk locator (local and remote) followed by the stored bytes of a pack record: decoding
/// never yields more than the locator's (bounded) length, nor bytes that do not hash to the id.
pub fn chunk(data: &[u8]) {
    if data.len() < 32 + Locator::LEN {
        return;
    }
    let id = Digest::from_slice(&data[..32]).expect("32 bytes");
    let Ok(loc) = Locator::decode(&data[32..32 + Locator::LEN], &id) else { return };
    let _ = RemoteLocator::decode(&data[..RemoteLocator::LEN.min(data.len())], &id);
    let stored = bytes::Bytes::copy_from_slice(&data[32 + Locator::LEN..]);
    if let Ok(out) = crate::local::pack::decode_chunk(&id, &loc, stored, &|| "fuzz".into()) {
        assert_eq!(out.len(), loc.raw_len as usize);
        assert_eq!(Digest::of(Kind::Chunk, &out), id);
    }
}

/// A stretch of pack bytes read blind (a lazy read's neighbours): the records found lie inside
/// the input, back to back, in order, and decoding any of them against a locator built from its
/// own header stays within its bounds.
pub fn pack_records(data: &[u8]) {
    let mut next = 0usize;
    for (id, range) in crate::local::pack::records_in(data) {
        assert_eq!(range.start, next + crate::local::pack::RECORD_HEADER as usize);
        assert!(range.end <= data.len());
        next = range.end;
        let h = &data[range.start - crate::local::pack::RECORD_HEADER as usize..range.start];
        let raw_len = u32::from_le_bytes(h[32..36].try_into().unwrap()).min(crate::model::chunker::MAX_SIZE as u32);
        let Some(codec) = crate::model::records::Codec::from_u8(h[40]) else { continue };
        let loc = Locator { pack: 0, offset: 0, stored_len: range.len() as u32, raw_len, codec };
        let stored = bytes::Bytes::copy_from_slice(&data[range]);
        if let Ok(out) = crate::local::pack::decode_chunk(&id, &loc, stored, &|| "fuzz".into()) {
            assert_eq!(Digest::of(Kind::Chunk, &out), id);
        }
    }
}

/// A remote index: the input as the object itself, and (with the first byte odd) the input as
/// the decompressed stream, compressed first so that the record parser is reached. Decoding is
/// capped at 64 MiB of output here.
pub fn remote_index(data: &[u8]) {
    let compressed;
    let object = match data.first() {
        Some(b) if b & 1 == 1 => {
            compressed = zstd::bulk::compress(&data[1..], 1).expect("zstd compresses from memory");
            &compressed[..]
        }
        _ => data,
    };
    let d = Digest(*blake3::hash(object).as_bytes());
    let mut seen = 0usize;
    let _ = format::decode_index_capped(object, &d, 64 << 20, |e| {
        seen += match &e {
            IndexEntry::Tree(_, b) | IndexEntry::File(_, b) => b.len(),
            IndexEntry::Chunk(..) => 1,
        };
        assert!(seen <= 64 << 20, "an index handed out more than it may decompress to");
        Ok(())
    });
}

/// A root object: what parses prints back the same.
pub fn root_object(data: &[u8]) {
    if let Some(r) = RootObject::parse(data) {
        assert_eq!(RootObject::parse(&r.encode()), Some(r));
    }
}

/// An access profile: what parses prints back the same.
pub fn profile(data: &[u8]) {
    if let Some(p) = crate::remote::profile::Profile::parse(data) {
        assert!(p.chunks.len() <= crate::remote::profile::MAX_PROFILE_CHUNKS);
        assert_eq!(crate::remote::profile::Profile::parse(&p.encode()), Some(p));
    }
}

/// The first bytes of a file, read as an ELF file's headers for a loader's reads: every range
/// found lies within the file, and the tables are few.
pub fn elf_hints(data: &[u8]) {
    use crate::remote::elf;
    let size = data.len() as u64;
    let Some(ph) = elf::program_headers(data, size) else { return };
    assert!(ph.end <= size);
    let segs = elf::segments(&data[ph.start as usize..ph.end as usize], size);
    for r in segs.writable.iter().chain(&segs.dynamic).chain(&segs.mapped()) {
        assert!(r.start <= r.end && r.end <= size, "{r:?} outside a file of {size} bytes");
    }
    if let Some(d) = &segs.dynamic {
        let tables = elf::tables(&data[d.start as usize..d.end as usize], &segs);
        assert!(tables.len() <= 16);
        for w in tables.windows(2) {
            assert!(w[0].end < w[1].start, "tables not merged and in order: {tables:?}");
        }
        for r in &tables {
            assert!(r.start < r.end && r.end <= size, "{r:?} outside a file of {size} bytes");
        }
    }
}
