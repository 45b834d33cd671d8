//! What is stored under the prefix, and the codecs for it. All objects are immutable and named
//! by content except root names and claims:
//!
//! ```text
//! packs/<hex>    chunk records exactly as in local packs (header + stored bytes), without the
//!                pack magic; <hex> is the BLAKE3 of the object, so two stores pushing the same
//!                chunks write the same key
//! indexes/<hex>  zstd of: every tree and file record of one root's closure, and for every chunk
//!                its place (pack, offset, stored/raw length, codec); <hex> = BLAKE3 of the object
//! roots/<name>   "vorpalfs root v3\nkind root|result\ntree <hex>\nindex <hex>\n", optionally
//!                "index-size <bytes>\n" (a hint: the index is fetched in parallel ranges), and
//!                one line "sig <key> <time> <base64>" per signature (trust.rs); build results are roots
//!                named by their input digest, named roots are also written under their tree
//!                digest
//! claims/<hex>   "<unix time> <host:pid>\n" while a host builds that input digest, and a
//!                "sig ..." line when the host signs
//! ```
//!
//! Decoders take untrusted bytes: every length is checked against what remains and against a
//! cap before anything is allocated, and decompression stops at a hard cap.

use std::io::Read;

use crate::error::{Error, Result};
use crate::model::digest::{Digest, Kind};
use crate::model::records::{FileRecord, RemoteLocator};
use crate::model::tree::Tree;
use crate::remote::trust::{MAX_SIGNATURES, RootKind, SecretKey, Sig, root_statement};

/// First line of a root object. v3 adds the kind and signatures; v2 (read, never written) has
/// neither. Both hash file digests over chunk lists (store format 2); other versions are not
/// read.
pub const ROOT_HEADER: &str = "vorpalfs root v3";
pub const ROOT_HEADER_V2: &str = "vorpalfs root v2";
/// A root object is five short lines and at most [`MAX_SIGNATURES`] signature lines.
pub const MAX_ROOT_OBJECT: u64 = 16 << 10;
/// The largest index object read (compressed).
pub const MAX_INDEX_OBJECT: u64 = 512 << 20;
/// The most bytes an index may decompress to.
pub const MAX_INDEX_RAW: u64 = 2 << 30;
/// The largest pack object read whole (pushes cut packs at 32 MiB plus one chunk).
pub const MAX_REMOTE_PACK: u64 = 256 << 20;
/// The largest claim object read.
pub const MAX_CLAIM_OBJECT: u64 = 1024;
/// The largest tree or file record in an index.
pub const MAX_RECORD: usize = 64 << 20;
const INDEX_MAGIC: &[u8; 8] = b"VPFSIDX1";

pub fn root_key(name: &str) -> String {
    format!("roots/{name}")
}

pub fn index_key(d: &Digest) -> String {
    format!("indexes/{d}")
}

pub fn pack_key(d: &Digest) -> String {
    format!("packs/{d}")
}

pub fn claim_key(name: &str) -> String {
    format!("claims/{name}")
}

/// A root object: the tree a name stands for, the index describing it, what kind of name it is
/// and who signed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootObject {
    pub tree: Digest,
    pub index: Digest,
    /// The index's size, when the pusher wrote it down (a v3 object may): a host then fetches
    /// the index in parallel ranges. A hint only: the index is checked against its digest.
    pub index_size: Option<u64>,
    /// `None` for a v2 object (before signing: it can carry no signature).
    pub kind: Option<RootKind>,
    pub sigs: Vec<Sig>,
}

impl RootObject {
    /// An unsigned root object of `kind`.
    pub fn new(kind: RootKind, tree: Digest, index: Digest) -> RootObject {
        RootObject { tree, index, index_size: None, kind: Some(kind), sigs: Vec::new() }
    }

    pub fn encode(&self) -> Vec<u8> {
        let Some(kind) = self.kind else {
            return format!("{ROOT_HEADER_V2}\ntree {}\nindex {}\n", self.tree, self.index).into_bytes();
        };
        let mut out = format!("{ROOT_HEADER}\nkind {}\ntree {}\nindex {}\n", kind.as_str(), self.tree, self.index);
        if let Some(n) = self.index_size {
            out.push_str(&format!("index-size {n}\n"));
        }
        for s in &self.sigs {
            out.push_str(&format!("sig {}\n", s.encode()));
        }
        out.into_bytes()
    }

    pub fn parse(obj: &[u8]) -> Option<RootObject> {
        let text = std::str::from_utf8(obj).ok()?;
        let mut lines = text.split_terminator('\n');
        let kind = match lines.next()? {
            ROOT_HEADER_V2 => None,
            ROOT_HEADER => Some(RootKind::parse(lines.next()?.strip_prefix("kind ")?)?),
            _ => return None,
        };
        let tree = lines.next()?.strip_prefix("tree ")?.parse().ok()?;
        let index = lines.next()?.strip_prefix("index ")?.parse().ok()?;
        let mut lines = lines.peekable();
        let index_size = match lines.peek().and_then(|l| l.strip_prefix("index-size ")) {
            Some(n) if kind.is_some() => {
                let n: u64 = n.parse().ok().filter(|n| *n <= MAX_INDEX_OBJECT)?;
                lines.next();
                Some(n)
            }
            _ => None,
        };
        let mut sigs: Vec<Sig> = Vec::new();
        for l in lines {
            let s = Sig::parse(l.strip_prefix("sig ")?)?;
            if kind.is_none() || sigs.len() == MAX_SIGNATURES || sigs.iter().any(|o| o.key == s.key) {
                return None;
            }
            sigs.push(s);
        }
        Some(RootObject { tree, index, index_size, kind, sigs })
    }

    /// The statement a signature by `key` at `time` on this object, found under `name`, covers.
    pub fn statement(&self, name: &str, key: &str, time: u64) -> Vec<u8> {
        root_statement(self.kind.unwrap_or(RootKind::Root), name, &self.tree, key, time)
    }

    /// Adds (or renews) the signature of `key` for this object under `name`.
    pub fn sign(&mut self, name: &str, key: &SecretKey) {
        let time = crate::remote::trust::now();
        let sig = key.sign(&self.statement(name, &key.name, time), time);
        self.sigs.retain(|s| s.key != key.name);
        if self.sigs.len() == MAX_SIGNATURES {
            self.sigs.remove(0);
        }
        self.sigs.push(sig);
    }
}

/// One record of an index, in the order they come.
#[derive(Debug)]
pub enum IndexEntry {
    /// A tree's digest and canonical encoding (verified against the digest when decoded).
    Tree(Digest, Vec<u8>),
    /// A file record's digest and encoding (verified).
    File(Digest, Vec<u8>),
    /// Where a chunk is in S3.
    Chunk(Digest, RemoteLocator),
}

/// Writes an index: trees, then file records, then chunk places.
pub fn encode_index(
    trees: &[(Digest, Vec<u8>)],
    files: &[(Digest, FileRecord)],
    chunks: &[(Digest, RemoteLocator)],
) -> Result<Vec<u8>> {
    let mut raw = Vec::new();
    raw.extend_from_slice(INDEX_MAGIC);
    raw.extend_from_slice(&(trees.len() as u32).to_le_bytes());
    for (d, bytes) in trees {
        raw.extend_from_slice(d.as_bytes());
        raw.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        raw.extend_from_slice(bytes);
    }
    raw.extend_from_slice(&(files.len() as u32).to_le_bytes());
    for (d, f) in files {
        let bytes = f.encode();
        raw.extend_from_slice(d.as_bytes());
        raw.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        raw.extend_from_slice(&bytes);
    }
    raw.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
    for (id, l) in chunks {
        raw.extend_from_slice(id.as_bytes());
        raw.extend_from_slice(&l.encode());
    }
    Ok(zstd::bulk::compress(&raw, 3).expect("zstd compresses from memory to memory"))
}

/// Decodes the index `digest` (whose bytes were checked against it), handing each verified
/// record to `f` in order. Memory: one record at a time (the decompressed stream is never held
/// whole); decompression stops at [`MAX_INDEX_RAW`].
pub fn decode_index(bytes: &[u8], digest: &Digest, f: impl FnMut(IndexEntry) -> Result<()>) -> Result<()> {
    decode_index_capped(bytes, digest, MAX_INDEX_RAW, f)
}

pub(crate) fn decode_index_capped(
    bytes: &[u8],
    digest: &Digest,
    cap: u64,
    mut f: impl FnMut(IndexEntry) -> Result<()>,
) -> Result<()> {
    let corrupt = |detail: &str| Error::Corrupt { what: "remote index", digest: *digest, detail: detail.into() };
    let dec = zstd::stream::read::Decoder::new(bytes).map_err(|_| corrupt("not zstd"))?;
    // Records are read a few bytes at a time: from a buffer, not a call into zstd each.
    let mut r = std::io::BufReader::with_capacity(256 << 10, dec.take(cap + 1));
    let mut read = |buf: &mut [u8]| -> Result<()> {
        r.read_exact(buf).map_err(|e| {
            if r.get_ref().limit() == 0 {
                corrupt("decompresses past the size allowed for an index")
            } else if e.kind() == std::io::ErrorKind::UnexpectedEof {
                corrupt("truncated")
            } else {
                corrupt("not zstd")
            }
        })
    };
    let mut magic = [0u8; 8];
    read(&mut magic)?;
    if &magic != INDEX_MAGIC {
        return Err(corrupt("bad magic"));
    }
    let u32_ = |read: &mut dyn FnMut(&mut [u8]) -> Result<()>| -> Result<u32> {
        let mut b = [0u8; 4];
        read(&mut b)?;
        Ok(u32::from_le_bytes(b))
    };
    let digest_ = |read: &mut dyn FnMut(&mut [u8]) -> Result<()>| -> Result<Digest> {
        let mut b = [0u8; 32];
        read(&mut b)?;
        Ok(Digest(b))
    };
    for section in 0..2 {
        let n = u32_(&mut read)?;
        for _ in 0..n {
            let d = digest_(&mut read)?;
            let len = u32_(&mut read)? as usize;
            if len > MAX_RECORD {
                return Err(corrupt("a record is larger than allowed"));
            }
            let mut body = vec![0u8; len];
            read(&mut body)?;
            if section == 0 {
                if Digest::of(Kind::Tree, &body) != d {
                    return Err(Error::Corrupt {
                        what: "tree",
                        digest: d,
                        detail: "from S3: encoding does not match its digest".into(),
                    });
                }
                Tree::decode(&body, &d)?;
                f(IndexEntry::Tree(d, body))?;
            } else {
                FileRecord::decode(&body, &d)?;
                f(IndexEntry::File(d, body))?;
            }
        }
    }
    let n = u32_(&mut read)?;
    let mut loc = [0u8; RemoteLocator::LEN];
    for _ in 0..n {
        let id = digest_(&mut read)?;
        read(&mut loc)?;
        let l = RemoteLocator::decode(&loc, &id).map_err(|_| corrupt("bad chunk locator"))?;
        f(IndexEntry::Chunk(id, l))?;
    }
    let mut rest = [0u8; 1];
    if r.read(&mut rest).unwrap_or(0) != 0 {
        return Err(corrupt("trailing bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::records::{ChunkRef, Codec};
    use crate::model::tree::{Entry, EntryKind};

    type Sample = (Vec<(Digest, Vec<u8>)>, Vec<(Digest, FileRecord)>, Vec<(Digest, RemoteLocator)>);

    fn sample() -> Sample {
        let id = Digest::of(Kind::Chunk, b"x");
        let rec = FileRecord { size: 1, chunks: vec![ChunkRef { offset: 0, len: 1, id }] };
        let t = Tree::new(vec![Entry {
            name: b"f".to_vec(),
            kind: EntryKind::File { digest: rec.digest(), size: 1, executable: false },
        }])
        .unwrap();
        let loc = RemoteLocator { pack: Digest([9; 32]), offset: 41, stored_len: 1, raw_len: 1, codec: Codec::Raw };
        (vec![(t.digest(), t.encode())], vec![(rec.digest(), rec)], vec![(id, loc)])
    }

    #[test]
    fn index_round_trips() {
        let (t, f, c) = sample();
        let bytes = encode_index(&t, &f, &c).unwrap();
        let mut got = Vec::new();
        decode_index(&bytes, &Digest([0; 32]), |e| {
            got.push(e);
            Ok(())
        })
        .unwrap();
        assert_eq!(got.len(), 3);
        assert!(matches!(&got[2], IndexEntry::Chunk(id, l) if *id == c[0].0 && *l == c[0].1));
    }

    #[test]
    fn a_decompression_bomb_is_refused_without_allocating_it() {
        // 8 bytes of magic, then a count and a record length that claim far more than exists,
        // then a few GiB of zeros in a tiny zstd frame.
        let mut raw = INDEX_MAGIC.to_vec();
        raw.extend_from_slice(&1u32.to_le_bytes());
        raw.extend_from_slice(&[0u8; 32]);
        raw.extend_from_slice(&(MAX_RECORD as u32 + 1).to_le_bytes());
        let bytes = zstd::bulk::compress(&raw, 3).unwrap();
        let e = decode_index(&bytes, &Digest([0; 32]), |_| Ok(())).unwrap_err();
        assert!(e.to_string().contains("larger than allowed"), "{e}");
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        std::io::Write::write_all(&mut enc, INDEX_MAGIC).unwrap();
        std::io::Write::write_all(&mut enc, &0u32.to_le_bytes()).unwrap();
        std::io::Write::write_all(&mut enc, &0u32.to_le_bytes()).unwrap();
        std::io::Write::write_all(&mut enc, &u32::MAX.to_le_bytes()).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..18 {
            std::io::Write::write_all(&mut enc, &zeros).unwrap();
        }
        let bomb = enc.finish().unwrap();
        assert!(bomb.len() < 64 << 10, "{} bytes", bomb.len());
        // All-zero chunk places are refused at the first (no chunk is empty)...
        let e = decode_index_capped(&bomb, &Digest([0; 32]), 16 << 20, |_| Ok(())).unwrap_err();
        assert!(e.to_string().contains("bad chunk locator"), "{e}");
        // ...and a stream that decodes past the cap stops there.
        let mut raw = INDEX_MAGIC.to_vec();
        raw.extend_from_slice(&1u32.to_le_bytes());
        raw.extend_from_slice(&Digest::of(Kind::Tree, &vec![0u8; 20 << 20]).0);
        raw.extend_from_slice(&(20u32 << 20).to_le_bytes());
        raw.extend_from_slice(&vec![0u8; 20 << 20]);
        let big = zstd::bulk::compress(&raw, 3).unwrap();
        let e = decode_index_capped(&big, &Digest([0; 32]), 16 << 20, |_| Ok(())).unwrap_err();
        assert!(e.to_string().contains("past the size allowed"), "{e}");
    }

    #[test]
    fn root_objects_parse_strictly() {
        let mut r = RootObject::new(RootKind::Result, Digest([1; 32]), Digest([2; 32]));
        assert_eq!(RootObject::parse(&r.encode()), Some(r.clone()));
        let mut extra = r.encode();
        extra.extend_from_slice(b"more\n");
        assert_eq!(RootObject::parse(&extra), None);
        assert_eq!(RootObject::parse(b"vorpalfs root v1\ntree x\n"), None);
        // Signed: every signature line comes back; one key signs once.
        let (a, b) = (SecretKey::generate("a").unwrap(), SecretKey::generate("b").unwrap());
        r.sign("n", &a);
        r.sign("n", &b);
        r.sign("n", &a);
        let back = RootObject::parse(&r.encode()).unwrap();
        assert_eq!(back.sigs.len(), 2);
        assert_eq!(back, r);
        let twice = [r.encode(), format!("sig {}\n", r.sigs[0].encode()).into_bytes()].concat();
        assert_eq!(RootObject::parse(&twice), None, "two signatures of one key");
        // A v2 object (no kind, no signatures) is still read.
        let v2 = RootObject { kind: None, sigs: Vec::new(), ..r };
        assert_eq!(RootObject::parse(&v2.encode()), Some(v2.clone()));
        assert!(v2.encode().starts_with(b"vorpalfs root v2\n"));
        // The index's size, a hint a v3 object may carry (after the index, before signatures).
        let sized = RootObject { index_size: Some(7719832), ..r.clone() };
        assert!(String::from_utf8(sized.encode()).unwrap().contains("\nindex-size 7719832\nsig "));
        assert_eq!(RootObject::parse(&sized.encode()), Some(sized));
        let text =
            |size: &str| format!("{ROOT_HEADER}\nkind root\ntree {}\nindex {}\nindex-size {size}\n", r.tree, r.index);
        assert!(RootObject::parse(text("12").as_bytes()).is_some());
        for bad in ["", "-1", "x", &(MAX_INDEX_OBJECT + 1).to_string()] {
            assert_eq!(RootObject::parse(text(bad).as_bytes()), None, "index-size {bad:?}");
        }
        let v2_sized = format!("{ROOT_HEADER_V2}\ntree {}\nindex {}\nindex-size 12\n", r.tree, r.index);
        assert_eq!(RootObject::parse(v2_sized.as_bytes()), None);
    }
}
