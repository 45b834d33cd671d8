//! Fixed-layout binary records kept in the index: file chunk lists, chunk locators, packs.
//! All integers little-endian; every decoder checks lengths and reports the digest it was
//! decoding when the bytes do not fit.

use crate::error::{Error, Result};
use crate::model::digest::{Digest, Kind};

/// One chunk of a file: where it sits in the file and what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    pub offset: u64,
    pub len: u32,
    pub id: Digest,
}

/// Zeros as long as the longest chunk: what an all-zero chunk reads as.
static ZEROS: [u8; crate::model::chunker::MAX_SIZE] = [0; crate::model::chunker::MAX_SIZE];

/// The digest of a chunk of [`MAX_SIZE`](crate::model::chunker::MAX_SIZE) zeros: the chunker
/// cuts a run of zeros into such chunks (it finds no cut point in it), so a file's holes, and
/// any long run of zeros, are made of them.
fn zero_chunk() -> &'static Digest {
    static ID: std::sync::OnceLock<Digest> = std::sync::OnceLock::new();
    ID.get_or_init(|| Digest::of(Kind::Chunk, &ZEROS))
}

impl ChunkRef {
    /// Whether this chunk is all zeros (a hole): a run of zeros the chunker cut, recognised by
    /// its digest. A shorter zero chunk (where a run meets data, or a file's tail) counts as data.
    pub fn is_zero(&self) -> bool {
        self.len as usize == ZEROS.len() && self.id == *zero_chunk()
    }
}

/// Whether a file of `size` bytes can hold a hole (one all-zero chunk of the longest length).
pub fn can_hold_a_hole(size: u64) -> bool {
    size >= ZEROS.len() as u64
}

/// The bytes of chunk `id` if it is the all-zero chunk: they need no cache, pack or GET.
pub fn zero_chunk_bytes(id: &Digest) -> Option<bytes::Bytes> {
    (id == zero_chunk()).then(|| bytes::Bytes::from_static(&ZEROS))
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
        if Digest::of(Kind::File, b) != *digest {
            let detail = "record does not match its digest".into();
            return Err(Error::Corrupt { what: "file record", digest: *digest, detail });
        }
        Self::decode_checked(b, digest)
    }

    /// [`FileRecord::decode`] of bytes checked against `digest` already (an index decoded a
    /// moment ago): the same checks but the hash.
    pub(crate) fn decode_checked(b: &[u8], digest: &Digest) -> Result<FileRecord> {
        let bad = |detail: &str| Error::Corrupt { what: "file record", digest: *digest, detail: detail.into() };
        if b.len() < 12 {
            return Err(bad("truncated"));
        }
        let size = u64::from_le_bytes(b[..8].try_into().unwrap());
        let count = u32::from_le_bytes(b[8..12].try_into().unwrap()) as usize;
        if b.len() != 12 + 36 * count {
            return Err(bad("length does not match the chunk count"));
        }
        let mut offset = 0u64;
        let mut chunks = Vec::with_capacity(count);
        for r in b[12..].chunks_exact(36) {
            let len = u32::from_le_bytes(r[..4].try_into().unwrap());
            if len == 0 || len as usize > crate::model::chunker::MAX_SIZE {
                return Err(bad("a chunk length is out of bounds"));
            }
            chunks.push(ChunkRef { offset, len, id: Digest::from_slice(&r[4..]).unwrap() });
            offset += u64::from(len);
        }
        if offset != size {
            return Err(bad("chunk lengths do not add up to the file size"));
        }
        Ok(FileRecord { size, chunks })
    }

    /// Index of the chunk covering byte `offset` (which must be below `size`).
    pub fn chunk_at(&self, offset: u64) -> usize {
        self.chunks.partition_point(|c| c.offset + u64::from(c.len) <= offset)
    }

    /// Bytes not in holes: what `st_blocks` counts (see [`ChunkRef::is_zero`]).
    pub fn allocated(&self) -> u64 {
        self.chunks.iter().filter(|c| !c.is_zero()).map(|c| u64::from(c.len)).sum()
    }

    /// `lseek(SEEK_DATA)`: the first offset at or after `offset` that is not in a hole; `None`
    /// (ENXIO) at or past the end, or when only holes follow.
    pub fn seek_data(&self, offset: u64) -> Option<u64> {
        if offset >= self.size {
            return None;
        }
        let i = self.chunk_at(offset);
        let c = self.chunks[i..].iter().find(|c| !c.is_zero())?;
        Some(c.offset.max(offset))
    }

    /// `lseek(SEEK_HOLE)`: the first offset at or after `offset` that is in a hole, the end of
    /// the file counting as one; `None` (ENXIO) at or past the end.
    pub fn seek_hole(&self, offset: u64) -> Option<u64> {
        if offset >= self.size {
            return None;
        }
        let i = self.chunk_at(offset);
        Some(self.chunks[i..].iter().find(|c| c.is_zero()).map_or(self.size, |c| c.offset.max(offset)))
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

/// Where a chunk's stored bytes are: in which pack (`P`: a local pack's number, or a remote
/// pack's digest), at which offset, how long stored and decoded, and how encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location<P> {
    pub pack: P,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub codec: Codec,
}

/// A chunk in a local pack file. Encoding: `pack:u64 offset:u64 stored_len:u32 raw_len:u32 codec:u8`.
pub type Locator = Location<u64>;
/// A chunk in a remote pack object. Encoding: `pack:[u8;32] offset:u64 stored_len:u32 raw_len:u32 codec:u8`.
pub type RemoteLocator = Location<Digest>;

/// A pack name as it appears in a location's encoding.
pub trait PackName: Copy {
    const LEN: usize;
    fn put(&self, out: &mut Vec<u8>);
    fn get(b: &[u8]) -> Option<Self>;
}

impl PackName for u64 {
    const LEN: usize = 8;
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn get(b: &[u8]) -> Option<u64> {
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }
}

impl PackName for Digest {
    const LEN: usize = 32;
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
    fn get(b: &[u8]) -> Option<Digest> {
        Digest::from_slice(b)
    }
}

impl<P: PackName> Location<P> {
    /// Bytes of the encoding.
    pub const LEN: usize = P::LEN + 17;

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::LEN);
        self.pack.put(&mut out);
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.stored_len.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.push(self.codec as u8);
        out
    }

    /// Decodes the location of chunk `id` (which only labels the error).
    pub fn decode(b: &[u8], id: &Digest) -> Result<Location<P>> {
        let bad = || Error::Corrupt { what: "chunk locator", digest: *id, detail: "malformed".into() };
        if b.len() != Self::LEN {
            return Err(bad());
        }
        let n = P::LEN;
        let l = Location {
            pack: P::get(&b[..n]).ok_or_else(bad)?,
            offset: u64::from_le_bytes(b[n..n + 8].try_into().unwrap()),
            stored_len: u32::from_le_bytes(b[n + 8..n + 12].try_into().unwrap()),
            raw_len: u32::from_le_bytes(b[n + 12..n + 16].try_into().unwrap()),
            codec: Codec::from_u8(b[n + 16]).ok_or_else(bad)?,
        };
        // A chunk is at most the chunker's maximum, and raw chunks are stored as they are:
        // bounds that keep a damaged record from asking for gigabytes.
        let max = crate::model::chunker::MAX_SIZE as u32;
        // (zstd output is kept only when smaller than the chunk: stored <= raw.)
        let sane = l.raw_len > 0
            && l.raw_len <= max
            && l.stored_len <= l.raw_len
            && (l.codec != Codec::Raw || l.stored_len == l.raw_len)
            && l.offset.checked_add(u64::from(l.stored_len)).is_some();
        if !sane {
            return Err(Error::Corrupt { what: "chunk locator", digest: *id, detail: "lengths out of bounds".into() });
        }
        Ok(l)
    }

    /// The same chunk placed in another pack.
    pub fn moved<Q>(&self, pack: Q, offset: u64) -> Location<Q> {
        Location { pack, offset, stored_len: self.stored_len, raw_len: self.raw_len, codec: self.codec }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_are_the_all_zero_chunks_and_seek_data_and_hole_walk_them() {
        const M: u32 = crate::model::chunker::MAX_SIZE as u32;
        let zero = *zero_chunk();
        let data = Digest([7; 32]);
        let c = |offset: u64, len: u32, id: Digest| ChunkRef { offset, len, id };
        // data 100 | hole M | hole M | data 50 | zeros of another length (data) 10
        let m = u64::from(M);
        let f = FileRecord {
            size: 160 + 2 * m,
            chunks: vec![
                c(0, 100, data),
                c(100, M, zero),
                c(100 + m, M, zero),
                c(100 + 2 * m, 50, data),
                c(150 + 2 * m, 10, Digest::of(Kind::Chunk, &[0; 10])),
            ],
        };
        assert_eq!(f.allocated(), 160);
        assert_eq!(f.seek_data(0), Some(0));
        assert_eq!(f.seek_data(99), Some(99));
        assert_eq!(f.seek_data(100), Some(100 + 2 * m));
        assert_eq!(f.seek_data(100 + m + 5), Some(100 + 2 * m));
        assert_eq!(f.seek_data(f.size - 1), Some(f.size - 1));
        assert_eq!(f.seek_data(f.size), None);
        assert_eq!(f.seek_hole(0), Some(100));
        assert_eq!(f.seek_hole(100 + m), Some(100 + m));
        assert_eq!(f.seek_hole(100 + 2 * m), Some(f.size));
        assert_eq!(f.seek_hole(f.size), None);
        let trailing = FileRecord { size: 10 + m, chunks: vec![c(0, 10, data), c(10, M, zero)] };
        assert_eq!(trailing.seek_data(10), None);
        assert_eq!(trailing.seek_hole(3), Some(10));
        assert_eq!(zero_chunk_bytes(&zero).map(|b| b.len()), Some(M as usize));
        assert!(zero_chunk_bytes(&data).is_none());
    }

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
    fn locations_round_trip_and_are_bounded() {
        let l = Locator { pack: 7, offset: 1 << 40, stored_len: 9, raw_len: 10, codec: Codec::Zstd };
        assert_eq!(Locator::decode(&l.encode(), &Digest([0; 32])).unwrap(), l);
        let r = l.moved(Digest([3; 32]), 5);
        assert_eq!(RemoteLocator::decode(&r.encode(), &Digest([0; 32])).unwrap(), r);
        assert_eq!(r.encode().len(), 49);
        let huge = Locator { raw_len: u32::MAX, ..l };
        assert!(Locator::decode(&huge.encode(), &Digest([0; 32])).unwrap_err().is_corruption());
        let raw_mismatch = Locator { codec: Codec::Raw, ..l };
        assert!(Locator::decode(&raw_mismatch.encode(), &Digest([0; 32])).is_err());
    }
}
