//! Fixed-layout binary records kept in the index: file chunk lists, chunk locators, packs.
//! All integers little-endian; every decoder checks lengths and reports the digest it was
//! decoding when the bytes do not fit.

use crate::digest::{Digest, Kind};
use crate::error::{Error, Result};

/// One chunk of a file: where it sits in the file and what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    pub offset: u64,
    pub len: u32,
    pub id: Digest,
}

/// A regular file's content: its size and ordered chunks.
/// Encoding: `size:u64 count:u32 (len:u32 id:[u8;32])*`; offsets are the running sum of lengths.
/// The file's digest is the [`Kind::File`] hash of this encoding, checked whenever it is decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRecord {
    pub size: u64,
    pub chunks: Vec<ChunkRef>,
}

impl FileRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + 36 * self.chunks.len());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&(self.chunks.len() as u32).to_le_bytes());
        for c in &self.chunks {
            out.extend_from_slice(&c.len.to_le_bytes());
            out.extend_from_slice(c.id.as_bytes());
        }
        out
    }

    /// The file's digest.
    pub fn digest(&self) -> Digest {
        Digest::of(Kind::File, &self.encode())
    }

    /// Decodes the record of the file `digest`, checking that it is that file's.
    pub fn decode(b: &[u8], digest: &Digest) -> Result<FileRecord> {
        let bad = |detail: &str| Error::Corrupt { what: "file record", digest: *digest, detail: detail.into() };
        if Digest::of(Kind::File, b) != *digest {
            return Err(bad("record does not match its digest"));
        }
        if b.len() < 12 {
            return Err(bad("truncated"));
        }
        let size = u64::from_le_bytes(b[..8].try_into().unwrap());
        let count = u32::from_le_bytes(b[8..12].try_into().unwrap()) as usize;
        if b.len() != 12 + 36 * count {
            return Err(bad("length does not match the chunk count"));
        }
        let mut offset = 0u64;
        let chunks = b[12..]
            .chunks_exact(36)
            .map(|r| {
                let len = u32::from_le_bytes(r[..4].try_into().unwrap());
                let c = ChunkRef { offset, len, id: Digest::from_slice(&r[4..]).unwrap() };
                offset += u64::from(len);
                c
            })
            .collect();
        if offset != size {
            return Err(bad("chunk lengths do not add up to the file size"));
        }
        Ok(FileRecord { size, chunks })
    }

    /// Index of the chunk covering byte `offset` (which must be below `size`).
    pub fn chunk_at(&self, offset: u64) -> usize {
        self.chunks.partition_point(|c| c.offset + u64::from(c.len) <= offset)
    }
}

/// How a chunk's bytes are stored in its pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    /// Stored as is (compression did not make it smaller).
    Raw = 0,
    Zstd = 1,
}

impl Codec {
    pub fn from_u8(v: u8) -> Option<Codec> {
        match v {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Zstd),
            _ => None,
        }
    }
}

/// Where a chunk's stored bytes are: `pack:u64 offset:u64 stored_len:u32 raw_len:u32 codec:u8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Locator {
    pub pack: u64,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub codec: Codec,
}

impl Locator {
    pub const LEN: usize = 25;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..8].copy_from_slice(&self.pack.to_le_bytes());
        out[8..16].copy_from_slice(&self.offset.to_le_bytes());
        out[16..20].copy_from_slice(&self.stored_len.to_le_bytes());
        out[20..24].copy_from_slice(&self.raw_len.to_le_bytes());
        out[24] = self.codec as u8;
        out
    }

    pub fn decode(b: &[u8], id: &Digest) -> Result<Locator> {
        let bad = || Error::Corrupt { what: "chunk locator", digest: *id, detail: "malformed".into() };
        if b.len() != Self::LEN {
            return Err(bad());
        }
        Ok(Locator {
            pack: u64::from_le_bytes(b[..8].try_into().unwrap()),
            offset: u64::from_le_bytes(b[8..16].try_into().unwrap()),
            stored_len: u32::from_le_bytes(b[16..20].try_into().unwrap()),
            raw_len: u32::from_le_bytes(b[20..24].try_into().unwrap()),
            codec: Codec::from_u8(b[24]).ok_or_else(bad)?,
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_record_round_trip_and_lookup() {
        let id = Digest([1; 32]);
        let f = FileRecord {
            size: 30,
            chunks: vec![
                ChunkRef { offset: 0, len: 10, id },
                ChunkRef { offset: 10, len: 15, id },
                ChunkRef { offset: 25, len: 5, id },
            ],
        };
        let back = FileRecord::decode(&f.encode(), &f.digest()).unwrap();
        assert!(FileRecord::decode(&f.encode(), &id).unwrap_err().is_corruption());
        assert_eq!(back, f);
        assert_eq!(f.chunk_at(0), 0);
        assert_eq!(f.chunk_at(9), 0);
        assert_eq!(f.chunk_at(10), 1);
        assert_eq!(f.chunk_at(29), 2);
        let mut bad = f.encode();
        bad[0] = 31;
        assert!(FileRecord::decode(&bad, &f.digest()).unwrap_err().is_corruption());
        assert!(FileRecord::decode(&bad, &Digest::of(Kind::File, &bad)).unwrap_err().is_corruption());
    }

    #[test]
    fn locator_round_trip() {
        let l = Locator { pack: 7, offset: 1 << 40, stored_len: 9, raw_len: 10, codec: Codec::Zstd };
        assert_eq!(Locator::decode(&l.encode(), &Digest([0; 32])).unwrap(), l);
    }
}
