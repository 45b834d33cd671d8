//! The tree model: a directory is a sorted list of named entries, encoded canonically.
//!
//! Encoding (format 1, little-endian):
//! ```text
//! tree  := version:u8 (=1) count:u32 entry*
//! entry := name_len:u16 name tag:u8 body
//! tag 0 = file, 1 = executable file, 2 = dir : body := size:u64 digest:[u8;32]
//! tag 3 = symlink                            : body := target_len:u32 target
//! ```
//! Entries are sorted by name bytes, names are unique, non-empty, and contain neither `/` nor NUL
//! and are not `.` or `..`. Decoding rejects anything else, so every tree has exactly one encoding
//! and hence one digest. A directory's `size` is the total size of the files below it.

use crate::error::{Error, Result};
use crate::model::digest::{Digest, Kind};

const FORMAT: u8 = 1;

/// What a directory entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File { digest: Digest, size: u64, executable: bool },
    Dir { digest: Digest, size: u64 },
    Symlink { target: Vec<u8> },
}

/// One named entry of a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: Vec<u8>,
    pub kind: EntryKind,
}

impl Entry {
    /// Bytes of file content this entry stands for (files: their size; dirs: the total below).
    pub fn size(&self) -> u64 {
        match &self.kind {
            EntryKind::File { size, .. } | EntryKind::Dir { size, .. } => *size,
            EntryKind::Symlink { .. } => 0,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            EntryKind::File { .. } => "file",
            EntryKind::Dir { .. } => "directory",
            EntryKind::Symlink { .. } => "symlink",
        }
    }
}

/// A directory: entries sorted by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    entries: Vec<Entry>,
}

/// Whether `name` may appear as an entry name.
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= u16::MAX as usize
        && name != b"."
        && name != b".."
        && !name.contains(&b'/')
        && !name.contains(&0)
}

impl Tree {
    /// Builds a tree from entries in any order; rejects invalid or duplicate names.
    pub fn new(mut entries: Vec<Entry>) -> Result<Tree> {
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        for w in entries.windows(2) {
            if w[0].name == w[1].name {
                return Err(Error::BadName { name: String::from_utf8_lossy(&w[0].name).into(), why: "given twice" });
            }
        }
        if let Some(e) = entries.iter().find(|e| !valid_name(&e.name)) {
            return Err(Error::BadName {
                name: String::from_utf8_lossy(&e.name).into(),
                why: "a name is not empty, has no / or NUL, and is not . or ..",
            });
        }
        Ok(Tree { entries })
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Looks a name up by binary search.
    pub fn get(&self, name: &[u8]) -> Option<&Entry> {
        self.entries.binary_search_by(|e| e.name.as_slice().cmp(name)).ok().map(|i| &self.entries[i])
    }

    /// Total size of the files below this directory.
    pub fn size(&self) -> u64 {
        self.entries.iter().map(Entry::size).sum()
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + self.entries.len() * 48);
        out.push(FORMAT);
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
            out.extend_from_slice(&e.name);
            match &e.kind {
                EntryKind::File { digest, size, executable } => {
                    out.push(u8::from(*executable));
                    out.extend_from_slice(&size.to_le_bytes());
                    out.extend_from_slice(digest.as_bytes());
                }
                EntryKind::Dir { digest, size } => {
                    out.push(2);
                    out.extend_from_slice(&size.to_le_bytes());
                    out.extend_from_slice(digest.as_bytes());
                }
                EntryKind::Symlink { target } => {
                    out.push(3);
                    out.extend_from_slice(&(target.len() as u32).to_le_bytes());
                    out.extend_from_slice(target);
                }
            }
        }
        out
    }

    /// The digest of the canonical encoding.
    pub fn digest(&self) -> Digest {
        Digest::of(Kind::Tree, &self.encode())
    }

    /// Decodes and validates a canonical encoding; `digest` only labels errors.
    pub fn decode(bytes: &[u8], digest: &Digest) -> Result<Tree> {
        let bad = |detail: &str| Error::Corrupt { what: "tree", digest: *digest, detail: detail.to_string() };
        let mut r = Reader(bytes);
        if r.u8().ok_or_else(|| bad("empty"))? != FORMAT {
            return Err(bad("unknown tree format"));
        }
        let count = r.u32().ok_or_else(|| bad("truncated header"))? as usize;
        // Each entry takes at least 8 bytes: a bound that stops a corrupt count from allocating.
        if count > bytes.len() / 8 {
            return Err(bad("entry count exceeds the encoding"));
        }
        let mut entries: Vec<Entry> = Vec::with_capacity(count);
        for _ in 0..count {
            let trunc = || bad("truncated entry");
            let len = r.u16().ok_or_else(trunc)? as usize;
            let name = r.take(len).ok_or_else(trunc)?.to_vec();
            if !valid_name(&name) {
                return Err(bad("invalid entry name"));
            }
            if entries.last().is_some_and(|prev| prev.name >= name) {
                return Err(bad("entries not strictly sorted"));
            }
            let kind = match r.u8().ok_or_else(trunc)? {
                tag @ (0..=2) => {
                    let size = r.u64().ok_or_else(trunc)?;
                    let digest = Digest::from_slice(r.take(32).ok_or_else(trunc)?).ok_or_else(trunc)?;
                    match tag {
                        2 => EntryKind::Dir { digest, size },
                        _ => EntryKind::File { digest, size, executable: tag == 1 },
                    }
                }
                3 => {
                    let len = r.u32().ok_or_else(trunc)? as usize;
                    EntryKind::Symlink { target: r.take(len).ok_or_else(trunc)?.to_vec() }
                }
                _ => return Err(bad("unknown entry tag")),
            };
            entries.push(Entry { name, kind });
        }
        if !r.0.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(Tree { entries })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes(b.try_into().unwrap()))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 1..20).prop_filter("valid", |n| valid_name(n))
    }

    fn entry() -> impl Strategy<Value = Entry> {
        let kind = prop_oneof![
            (any::<[u8; 32]>(), any::<u64>(), any::<bool>())
                .prop_map(|(d, size, executable)| { EntryKind::File { digest: Digest(d), size, executable } }),
            (any::<[u8; 32]>(), any::<u64>()).prop_map(|(d, size)| EntryKind::Dir { digest: Digest(d), size }),
            proptest::collection::vec(any::<u8>(), 0..50).prop_map(|target| EntryKind::Symlink { target }),
        ];
        (name(), kind).prop_map(|(name, kind)| Entry { name, kind })
    }

    proptest! {
        #[test]
        fn encoding_round_trips_and_is_canonical(entries in proptest::collection::vec(entry(), 0..30)) {
            let mut entries = entries;
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            entries.dedup_by(|a, b| a.name == b.name);
            let mut shuffled = entries.clone();
            shuffled.reverse();
            let t = Tree::new(shuffled).unwrap();
            let bytes = t.encode();
            let d = t.digest();
            let back = Tree::decode(&bytes, &d).unwrap();
            prop_assert_eq!(&back, &t);
            prop_assert_eq!(back.encode(), bytes);
            prop_assert_eq!(back.entries(), entries.as_slice());
        }

        #[test]
        fn decoding_never_panics_and_accepts_only_canonical(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(t) = Tree::decode(&bytes, &Digest([0; 32])) {
                prop_assert_eq!(t.encode(), bytes);
            }
        }

        #[test]
        fn any_change_changes_the_digest(entries in proptest::collection::vec(entry(), 1..10), flip in any::<prop::sample::Index>()) {
            let t = Tree::new({ let mut e = entries; e.sort_by(|a, b| a.name.cmp(&b.name)); e.dedup_by(|a, b| a.name == b.name); e }).unwrap();
            let mut bytes = t.encode();
            let i = flip.index(bytes.len());
            bytes[i] ^= 1;
            if let Ok(t2) = Tree::decode(&bytes, &Digest([0; 32])) {
                prop_assert_ne!(t2.digest(), t.digest());
            }
        }
    }

    #[test]
    fn rejects_bad_names_and_duplicates() {
        let f = |n: &[u8]| Entry { name: n.to_vec(), kind: EntryKind::Symlink { target: vec![] } };
        assert!(Tree::new(vec![f(b"a/b")]).is_err());
        assert!(Tree::new(vec![f(b"..")]).is_err());
        assert!(Tree::new(vec![f(b"")]).is_err());
        assert!(Tree::new(vec![f(b"x"), f(b"x")]).is_err());
        assert!(Tree::new(vec![f(b"\xff\xfe odd")]).is_ok());
    }
}
