//! Ingest commits in bounded batches (packs sealed by chunk count, file records and trees in
//! batches of `commit_bytes`), with the root last. With tiny limits, a modest tree takes many
//! commits of each kind; the result must be the same store an unbounded commit made: every file
//! readable with its bytes, verify clean, the same root digest, and nothing left behind by gc.

use std::fs;
use std::path::Path;

use vorpalfs_store::testing::pseudo_random as bytes;
use vorpalfs_store::{Options, Store};

fn tree(src: &Path) {
    for d in 0..12u64 {
        let dir = src.join(format!("d{d:02}/sub"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..60u64 {
            // Unique small files, and a few repeated (the same record twice in one ingest).
            let seed = if f % 20 == 0 { 1 } else { d * 1000 + f + 2 };
            fs::write(dir.join(format!("f{f:03}")), bytes(200 + (f as usize * 37) % 3000, seed)).unwrap();
        }
        // An identical subtree in two places.
        fs::create_dir_all(src.join(format!("d{d:02}/same"))).unwrap();
        fs::write(src.join(format!("d{d:02}/same/x")), b"same").unwrap();
    }
    fs::write(src.join("big"), bytes(5 << 20, 99)).unwrap();
}

fn same_tree(a: &Path, b: &Path) {
    for e in walk(a) {
        let rel = e.strip_prefix(a).unwrap();
        let other = b.join(rel);
        if e.is_file() {
            assert!(fs::read(&e).unwrap() == fs::read(&other).unwrap(), "{} differs", rel.display());
        } else {
            assert!(other.is_dir(), "{} missing", rel.display());
        }
    }
    assert_eq!(walk(a).len(), walk(b).len(), "entry counts differ");
}

fn walk(p: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(p).unwrap() {
        let e = e.unwrap().path();
        if e.is_dir() {
            out.extend(walk(&e));
        }
        out.push(e);
    }
    out
}

#[test]
fn an_ingest_of_many_commits_is_the_same_store_as_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    tree(&src);

    let whole = Store::open(&dir.path().join("whole")).unwrap().ingest(&src, Some("t")).unwrap();

    let opts = Options { commit_bytes: 4096, pack_max_chunks: 16, ..Options::default() };
    let store = Store::open_with(&dir.path().join("batched"), opts).unwrap();
    let r = store.ingest(&src, Some("t")).unwrap();
    assert_eq!(r.root, whole.root, "same tree, same digest");
    assert_eq!((r.new_chunks, r.bytes), (whole.new_chunks, whole.bytes));
    let stats = store.stats().unwrap();
    assert!(stats.packs >= r.new_chunks / 16, "packs sealed by chunk count: {stats:?}");
    let v = store.verify().unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems.first());
    let out = dir.path().join("out");
    store.export(&r.root, &out).unwrap();
    same_tree(&src, &out);

    // A second ingest of the same tree reuses everything and commits nothing new.
    let again = store.ingest(&src, Some("u")).unwrap();
    assert_eq!((again.root, again.new_chunks), (r.root, 0));
    // Nothing unreachable was left: gc of a store whose roots are all alive frees nothing.
    let before = store.stats().unwrap();
    store.gc().unwrap();
    let after = store.stats().unwrap();
    assert_eq!((before.trees, before.files, before.chunks), (after.trees, after.files, after.chunks));
    // And with the roots gone, gc takes every object the batches committed.
    store.remove_root("t").unwrap();
    store.remove_root("u").unwrap();
    store.gc().unwrap();
    let empty = store.stats().unwrap();
    assert_eq!((empty.trees, empty.files, empty.chunks, empty.packs), (0, 0, 0, 0), "{empty:?}");
}
