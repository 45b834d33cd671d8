//! The inode layer: which store object each inode number stands for.
//!
//! Inode numbers are derived from `(parent inode, name)` by hashing, so the same path gets the
//! same number for the life of the mount (and across forgets) without keeping every path ever
//! seen. The table holds only the inodes the kernel holds: each reply that hands one out counts
//! a lookup, `forget` takes them back, and at zero the entry is dropped, so memory follows the
//! kernel's dentry cache however many files are walked. A hash collision (two paths, one
//! number) is resolved by probing the next number.

use std::collections::HashMap;

use vorpalfs_store::{Digest, EntryKind};

/// The inode number of the mount's root (`/vorpal/store`).
pub const ROOT: u64 = 1;

/// What an inode is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The mount root: one directory per stored root digest.
    Root,
    Dir {
        digest: Digest,
        size: u64,
    },
    File {
        digest: Digest,
        size: u64,
        executable: bool,
    },
    Symlink {
        target: Vec<u8>,
    },
}

impl Kind {
    pub fn from_entry(kind: &EntryKind) -> Kind {
        match kind {
            EntryKind::Dir { digest, size } => Kind::Dir { digest: *digest, size: *size },
            EntryKind::File { digest, size, executable } => {
                Kind::File { digest: *digest, size: *size, executable: *executable }
            }
            EntryKind::Symlink { target } => Kind::Symlink { target: target.clone() },
        }
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    pub parent: u64,
    pub name: Vec<u8>,
    pub kind: Kind,
    /// The top-level directory (a root) this inode is below, or is; [`ROOT`] for the root.
    pub top: u64,
    lookups: u64,
}

/// The live inodes.
pub struct Inodes {
    map: HashMap<u64, Node>,
}

impl Default for Inodes {
    fn default() -> Self {
        let mut map = HashMap::new();
        map.insert(ROOT, Node { parent: ROOT, name: Vec::new(), kind: Kind::Root, top: ROOT, lookups: 1 });
        Inodes { map }
    }
}

fn hashed(parent: u64, name: &[u8]) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&parent.to_le_bytes());
    h.update(name);
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().unwrap())
}

impl Inodes {
    /// The number `(parent, name)` has or would get; does not count a lookup.
    pub fn ino_for(&self, parent: u64, name: &[u8]) -> u64 {
        let mut ino = hashed(parent, name);
        loop {
            // 0 is invalid and 1 the root; both are skipped.
            if ino > ROOT {
                match self.map.get(&ino) {
                    None => return ino,
                    Some(n) if n.parent == parent && n.name == name => return ino,
                    Some(_) => {}
                }
            }
            ino = ino.wrapping_add(1);
        }
    }

    /// Hands out the inode for `(parent, name)`, counting one lookup.
    pub fn remember(&mut self, parent: u64, name: &[u8], kind: Kind) -> u64 {
        let ino = self.ino_for(parent, name);
        // The kernel holds a parent while it holds a child: it is in the table.
        let top = if parent == ROOT { ino } else { self.map.get(&parent).map_or(ROOT, |n| n.top) };
        self.map.entry(ino).or_insert_with(|| Node { parent, name: name.to_vec(), kind, top, lookups: 0 }).lookups += 1;
        ino
    }

    /// An inode's kind and the digest of the root it is below (for its profile).
    pub fn kind_and_root(&self, ino: u64) -> Option<(Kind, Option<Digest>)> {
        let n = self.map.get(&ino)?;
        let root = match self.map.get(&n.top).map(|t| &t.kind) {
            Some(Kind::Dir { digest, .. }) => Some(*digest),
            _ => None,
        };
        Some((n.kind.clone(), root))
    }

    /// The kernel dropped `n` references.
    pub fn forget(&mut self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        if let Some(node) = self.map.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(n);
            if node.lookups == 0 {
                self.map.remove(&ino);
            }
        }
    }

    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.map.get(&ino)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// `(top-level root digest, path below it)` of an inode, for log lines.
    pub fn describe(&self, mut ino: u64) -> (String, String) {
        let mut parts: Vec<String> = Vec::new();
        while ino != ROOT {
            let Some(n) = self.map.get(&ino) else { break };
            parts.push(String::from_utf8_lossy(&n.name).into_owned());
            ino = n.parent;
        }
        parts.reverse();
        let top = if parts.is_empty() { String::new() } else { parts.remove(0) };
        (top, parts.join("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_stable_and_freed_on_forget() {
        let mut t = Inodes::default();
        let k = Kind::Symlink { target: b"x".to_vec() };
        let a = t.remember(ROOT, b"a", k.clone());
        assert_eq!(t.remember(ROOT, b"a", k.clone()), a);
        assert_ne!(t.remember(ROOT, b"b", k.clone()), a);
        t.forget(a, 1);
        assert!(t.get(a).is_some(), "one lookup is still held");
        t.forget(a, 1);
        assert!(t.get(a).is_none());
        assert_eq!(t.remember(ROOT, b"a", k), a, "the same path gets the same number again");
        assert!(t.get(ROOT).is_some());
    }

    #[test]
    fn describe_names_root_and_path() {
        let mut t = Inodes::default();
        let d = t.remember(ROOT, b"abc", Kind::Dir { digest: Digest([0; 32]), size: 0 });
        let f = t.remember(d, b"f", Kind::Symlink { target: vec![] });
        assert_eq!(t.describe(f), ("abc".into(), "f".into()));
        let sub = t.remember(d, b"sub", Kind::Dir { digest: Digest([1; 32]), size: 0 });
        let g = t.remember(sub, b"g", Kind::Symlink { target: vec![] });
        assert_eq!(t.kind_and_root(g).unwrap().1, Some(Digest([0; 32])), "a file's root is its top-level directory");
        assert_eq!(t.kind_and_root(ROOT).unwrap().1, None);
    }
}
