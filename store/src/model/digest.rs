//! BLAKE3-256 digests, domain-separated by object kind.
//!
//! Every object is hashed as `BLAKE3(prefix || payload)` where the prefix names the kind and the
//! format version (`vorpalfs:chunk:v1\0`, ...). A chunk therefore never has the digest of a tree
//! holding the same bytes, and a future format change cannot collide with today's objects.

use std::fmt;
use std::str::FromStr;

/// What an object is; selects the domain-separation prefix of its digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A run of file bytes (the unit of storage and transfer).
    Chunk,
    /// A regular file: the encoding of its record (size and chunk list, see
    /// [`crate::FileRecord`]), so a file is a Merkle node over its chunks and its content is
    /// hashed once, by chunk.
    File,
    /// The canonical encoding of one directory.
    Tree,
    /// The canonical encoding of a build recipe (the builder's input digest).
    Artifact,
}

impl Kind {
    const fn prefix(self) -> &'static [u8] {
        match self {
            Kind::Chunk => b"vorpalfs:chunk:v1\0",
            Kind::File => b"vorpalfs:file:v2\0",
            Kind::Tree => b"vorpalfs:tree:v1\0",
            Kind::Artifact => b"vorpalfs:artifact:v1\0",
        }
    }
}

/// A 32-byte BLAKE3 digest, shown as 64 lowercase hex characters.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Length of the hex form.
    pub const HEX_LEN: usize = 64;

    /// Digest of `data` as an object of `kind`.
    pub fn of(kind: Kind, data: &[u8]) -> Digest {
        let mut h = Hasher::new(kind);
        h.update(data);
        h.finalize()
    }

    /// The raw bytes (used as fixed-width binary keys in the index).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Builds a digest from exactly 32 raw bytes.
    pub fn from_slice(b: &[u8]) -> Option<Digest> {
        Some(Digest(b.try_into().ok()?))
    }

    /// Lowercase hex form.
    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(HEX[(b >> 4) as usize] as char);
            s.push(HEX[(b & 15) as usize] as char);
        }
        s
    }

    /// The first 12 hex characters, for logs.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_string()
    }
}

/// Incremental hasher for one object kind.
#[derive(Clone)]
pub struct Hasher(blake3::Hasher);

impl Hasher {
    pub fn new(kind: Kind) -> Hasher {
        let mut h = blake3::Hasher::new();
        h.update(kind.prefix());
        Hasher(h)
    }

    pub fn update(&mut self, data: &[u8]) -> &mut Self {
        // One thread per hasher: callers already hash many chunks and files in parallel.
        self.0.update(data);
        self
    }

    pub fn finalize(&self) -> Digest {
        Digest(*self.0.finalize().as_bytes())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.short())
    }
}

/// Why a string is not a digest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a digest: {0:?} (expected 64 lowercase hex characters)")]
pub struct ParseDigestError(pub String);

impl FromStr for Digest {
    type Err = ParseDigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseDigestError(s.to_string());
        if s.len() != 64 {
            return Err(err());
        }
        let nib = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let mut out = [0u8; 32];
        for (i, pair) in s.as_bytes().chunks_exact(2).enumerate() {
            out[i] = (nib(pair[0]).ok_or_else(err)? << 4) | nib(pair[1]).ok_or_else(err)?;
        }
        Ok(Digest(out))
    }
}

/// Digests serialize as their hex form (recipes, JSON output).
impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Digest, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(|_| serde::de::Error::custom(format!("not a digest: {s}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejects_junk() {
        let d = Digest::of(Kind::Chunk, b"hello");
        assert_eq!(d.to_hex().parse::<Digest>().unwrap(), d);
        assert!("xyz".parse::<Digest>().is_err());
        assert!(d.to_hex().to_uppercase().parse::<Digest>().is_err());
    }

    #[test]
    fn kinds_are_domain_separated() {
        assert_ne!(Digest::of(Kind::Chunk, b"x"), Digest::of(Kind::Tree, b"x"));
        assert_ne!(Digest::of(Kind::Chunk, b"x"), Digest::of(Kind::File, b"x"));
    }

    #[test]
    fn golden_values_are_stable() {
        // Pinned so a change of prefix or algorithm is caught: every stored digest depends on it.
        assert_eq!(Digest::of(Kind::File, b"").to_hex(), blake3::hash(b"vorpalfs:file:v2\0").to_hex().as_str());
        let mut h = Hasher::new(Kind::Chunk);
        h.update(&[7u8; 300_000]);
        assert_eq!(h.finalize(), Digest::of(Kind::Chunk, &[7u8; 300_000]));
    }
}
