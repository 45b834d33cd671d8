//! Append-only pack files of compressed chunks.
//!
//! A pack is `packs/<id as 16 hex>.pack`: an 8-byte magic, then records
//! `id:[u8;32] raw_len:u32 stored_len:u32 codec:u8 bytes[stored_len]`. The index's
//! [`Locator`] points straight at a record's bytes; the record headers make a pack
//! self-describing, so it can be checked or re-indexed without the index.
//!
//! A pack is written by one ingest, fsynced, and only then named in the index; a pack file that
//! the index does not name is the leftover of an interrupted ingest and is removed at open.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::error::{Error, IoContext, Result};
use crate::model::digest::{Digest, Kind};
use crate::model::records::{Codec, Location, Locator};

const MAGIC: &[u8; 8] = b"VPFSPAK1";
/// Bytes before the first record.
pub const PACK_HEADER: u64 = MAGIC.len() as u64;
pub const RECORD_HEADER: u64 = 32 + 4 + 4 + 1;

/// A pack is sealed and a new one started past this size.
pub const PACK_TARGET_SIZE: u64 = 128 << 20;

pub fn pack_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.pack"))
}

/// Parses a pack file name back to its id.
pub fn pack_id(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".pack")?;
    (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok()).flatten()
}

/// The header of one record: `id raw_len stored_len codec`.
pub fn record_header(id: &Digest, raw_len: u32, stored_len: u32, codec: Codec) -> [u8; RECORD_HEADER as usize] {
    let mut header = [0u8; RECORD_HEADER as usize];
    header[..32].copy_from_slice(id.as_bytes());
    header[32..36].copy_from_slice(&raw_len.to_le_bytes());
    header[36..40].copy_from_slice(&stored_len.to_le_bytes());
    header[40] = codec as u8;
    header
}

/// The whole records in `bytes`, a stretch of a pack (local records, or a remote pack's)
/// starting at a record's header: each record's chunk id and where its stored bytes are in
/// `bytes`. Stops at the first record that does not fit. Nothing here is trusted: the caller
/// checks a record against what it knows before it uses it.
pub fn records_in(bytes: &[u8]) -> impl Iterator<Item = (Digest, std::ops::Range<usize>)> + '_ {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let header = bytes.get(at..at.checked_add(RECORD_HEADER as usize)?)?;
        let id = Digest::from_slice(&header[..32])?;
        let stored = u32::from_le_bytes(header[36..40].try_into().ok()?) as usize;
        let data = at + RECORD_HEADER as usize;
        let end = data.checked_add(stored).filter(|e| *e <= bytes.len())?;
        at = end;
        Some((id, data..end))
    })
}

/// Compresses a chunk; keeps it raw when zstd does not make it smaller.
pub fn encode_chunk(z: &mut zstd::bulk::Compressor<'_>, data: &[u8]) -> (Codec, Vec<u8>) {
    match z.compress(data) {
        Ok(c) if c.len() < data.len() => (Codec::Zstd, c),
        _ => (Codec::Raw, data.to_vec()),
    }
}

/// Decodes stored bytes and checks them against the chunk id. Wrong bytes never leave here.
/// `place` names where the bytes came from in an error ("in pack 00…07", "from S3 pack …").
/// The output is bounded by the location's `raw_len` (itself bounded when decoded).
pub fn decode_chunk<P>(id: &Digest, loc: &Location<P>, stored: Bytes, place: &dyn Fn() -> String) -> Result<Bytes> {
    let corrupt = |detail: String| Error::Corrupt { what: "chunk", digest: *id, detail };
    let data: Bytes = match loc.codec {
        Codec::Raw => stored,
        Codec::Zstd => {
            // One decompression context per thread: creating one per chunk cost ~5% of a read.
            thread_local!(static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
                const { std::cell::RefCell::new(None) });
            DCTX.with(|cell| {
                let mut slot = cell.borrow_mut();
                if slot.is_none() {
                    *slot = Some(zstd::bulk::Decompressor::new()?);
                }
                slot.as_mut().unwrap().decompress(&stored, loc.raw_len as usize)
            })
            .map_err(|e| corrupt(format!("{}: zstd: {e}", place())))?
            .into()
        }
    };
    if data.len() != loc.raw_len as usize || Digest::of(Kind::Chunk, &data) != *id {
        return Err(corrupt(format!("{}: content does not match its digest", place())));
    }
    Ok(data)
}

/// A sealed pack file: `size:u64 chunks:u32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackInfo {
    pub size: u64,
    pub chunks: u32,
}

impl PackInfo {
    pub fn encode(&self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[..8].copy_from_slice(&self.size.to_le_bytes());
        out[8..].copy_from_slice(&self.chunks.to_le_bytes());
        out
    }

    pub fn decode(b: &[u8]) -> Option<PackInfo> {
        (b.len() == 12).then(|| PackInfo {
            size: u64::from_le_bytes(b[..8].try_into().unwrap()),
            chunks: u32::from_le_bytes(b[8..].try_into().unwrap()),
        })
    }
}

/// Writes one pack.
pub struct PackWriter {
    id: u64,
    path: PathBuf,
    out: BufWriter<File>,
    len: u64,
    chunks: u32,
}

impl PackWriter {
    pub fn create(dir: &Path, id: u64) -> Result<PackWriter> {
        let path = pack_path(dir, id);
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).at(&path)?
        };
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(MAGIC).at(&path)?;
        Ok(PackWriter { id, path, out, len: MAGIC.len() as u64, chunks: 0 })
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// Appends one chunk and returns where its bytes are.
    pub fn append(&mut self, id: &Digest, raw_len: u32, codec: Codec, stored: &[u8]) -> Result<Locator> {
        let header = record_header(id, raw_len, stored.len() as u32, codec);
        self.out.write_all(&header).at(&self.path)?;
        self.out.write_all(stored).at(&self.path)?;
        let loc = Locator {
            pack: self.id,
            offset: self.len + RECORD_HEADER,
            stored_len: stored.len() as u32,
            raw_len,
            codec,
        };
        self.len += RECORD_HEADER + stored.len() as u64;
        self.chunks += 1;
        Ok(loc)
    }

    /// Appends whole records as they are (a remote pack's bytes: the same records without the
    /// magic). The caller knows, and indexes, what they hold (the sealed info counts no chunks).
    pub fn append_records(&mut self, records: &[u8]) -> Result<()> {
        self.out.write_all(records).at(&self.path)?;
        self.len += records.len() as u64;
        Ok(())
    }

    /// Makes what was appended readable through other handles (no fsync).
    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().at(&self.path)
    }

    /// Flushes and fsyncs the pack (and its directory entry).
    pub fn seal(self) -> Result<(u64, PackInfo)> {
        let file = self.out.into_inner().map_err(|e| Error::io(&self.path, e.into_error()))?;
        file.sync_all().at(&self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).at(dir)?;
        }
        Ok((self.id, PackInfo { size: self.len, chunks: self.chunks }))
    }

    /// Removes an unfinished pack (after an error).
    pub fn discard(self) {
        let path = self.path.clone();
        drop(self);
        let _ = std::fs::remove_file(path);
    }
}

/// The ids of the chunks a pack file holds, from its record headers (a pack describes itself).
pub fn chunk_ids(path: &Path) -> Result<Vec<Digest>> {
    let f = File::open(path).at(path)?;
    let len = f.metadata().at(path)?.len();
    let mut out = Vec::new();
    let mut at = PACK_HEADER;
    let mut h = [0u8; RECORD_HEADER as usize];
    while at + RECORD_HEADER <= len {
        f.read_exact_at(&mut h, at).at(path)?;
        out.push(Digest::from_slice(&h[..32]).expect("32 bytes"));
        let stored = u32::from_le_bytes(h[36..40].try_into().unwrap());
        at += RECORD_HEADER + u64::from(stored);
    }
    Ok(out)
}

/// Read access to sealed packs, keeping file handles open.
pub struct PackReader {
    dir: PathBuf,
    open: Mutex<HashMap<u64, Arc<File>>>,
}

impl PackReader {
    pub fn new(dir: PathBuf) -> PackReader {
        PackReader { dir, open: Mutex::new(HashMap::new()) }
    }

    fn file(&self, pack: u64) -> Result<Arc<File>> {
        let mut open = self.open.lock().unwrap();
        if let Some(f) = open.get(&pack) {
            return Ok(f.clone());
        }
        let path = pack_path(&self.dir, pack);
        let f = Arc::new(File::open(&path).at(&path)?);
        open.insert(pack, f.clone());
        Ok(f)
    }

    /// A chunk's stored (still encoded) bytes, unchecked.
    fn read_raw(&self, id: &Digest, loc: &Locator) -> Result<Bytes> {
        let f = self.file(loc.pack)?;
        let mut stored = vec![0u8; loc.stored_len as usize];
        f.read_exact_at(&mut stored, loc.offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::Corrupt {
                    what: "chunk",
                    digest: *id,
                    detail: format!("pack {:016x} is shorter than the index says", loc.pack),
                }
            } else {
                Error::io(pack_path(&self.dir, loc.pack), e)
            }
        })?;
        Ok(stored.into())
    }

    /// Reads, decodes and verifies one chunk.
    pub fn read_chunk(&self, id: &Digest, loc: &Locator) -> Result<Bytes> {
        let place = || format!("in pack {:016x} at {}", loc.pack, loc.offset);
        decode_chunk(id, loc, self.read_raw(id, loc)?, &place)
    }

    /// A chunk's stored (still encoded) bytes, after checking that they decode to the chunk.
    pub fn read_stored(&self, id: &Digest, loc: &Locator) -> Result<Bytes> {
        let stored = self.read_raw(id, loc)?;
        let place = || format!("in pack {:016x} at {}", loc.pack, loc.offset);
        decode_chunk(id, loc, stored.clone(), &place)?;
        Ok(stored)
    }

    /// Forgets an open handle (after the pack file was removed).
    pub fn forget(&self, pack: u64) {
        self.open.lock().unwrap().remove(&pack);
    }
}
