//! Regression: `gc` running while an ingest of overlapping content is in flight must not drop
//! what the ingest reuses. Before the fix, gc removed chunks that the ingest had found in the
//! index (and so did not store again) and the ingest then committed a root referencing them:
//! `verify` reported missing chunks and reads failed.

use std::time::Duration;

use vorpalfs_store::{Store, VerifyReport};

use vorpalfs_store::testing::pseudo_random as bytes;

fn problems(r: &VerifyReport) -> String {
    r.problems.iter().take(5).map(|p| format!("{}/{}: {}\n", p.root, p.path, p.detail)).collect()
}

#[test]
fn gc_during_an_ingest_of_overlapping_content_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    // Enough data that reading and hashing it takes a while (the window gc used to hit), in
    // many chunks and files, some small.
    for i in 0..8u64 {
        std::fs::write(src.join(format!("big{i}.bin")), bytes(6 << 20, i + 1)).unwrap();
    }
    for i in 0..200u64 {
        std::fs::write(src.join("sub").join(format!("f{i}")), bytes(1000 + i as usize, 100 + i)).unwrap();
    }
    let store = Store::open(&dir.path().join("store")).unwrap();
    for i in 0..12u64 {
        // B holds the content; C is the same content added while B is removed and gc runs.
        store.ingest(&src, Some("B")).unwrap();
        let delay = Duration::from_millis(3 * (i % 8));
        std::thread::scope(|s| {
            let add = s.spawn(|| store.ingest(&src, Some("C")));
            std::thread::sleep(delay);
            store.remove_root("B").unwrap();
            store.gc().unwrap();
            add.join().unwrap().unwrap();
        });
        let v = store.verify().unwrap();
        assert!(v.problems.is_empty(), "iteration {i}: {} problems, e.g.\n{}", v.problems.len(), problems(&v));
        // Reading C through the store gives the source bytes.
        let root = store.resolve("C").unwrap().tree;
        let f = match store.lookup(&root, "big3.bin").unwrap().kind {
            vorpalfs_store::EntryKind::File { digest, .. } => digest,
            _ => unreachable!(),
        };
        let mut out = Vec::new();
        std::io::copy(&mut store.reader(&f).unwrap(), &mut out).unwrap();
        assert!(out == bytes(6 << 20, 4), "iteration {i}: wrong bytes");
        store.remove_root("C").unwrap();
        store.gc().unwrap();
    }
}

#[test]
fn gc_removes_unreachable_trees_and_file_records_too() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/x"), b"x").unwrap();
    std::fs::write(src.join("big"), bytes(3 << 20, 7)).unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    store.ingest(&src, Some("A")).unwrap();
    let before = store.stats().unwrap();
    assert!(before.trees >= 2 && before.files >= 2);
    store.remove_root("A").unwrap();
    store.gc().unwrap();
    let after = store.stats().unwrap();
    assert_eq!((after.trees, after.files, after.chunks, after.packs), (0, 0, 0, 0), "{after:?}");
    // And what is still reached stays.
    let d = store.ingest(&src, Some("A")).unwrap().root;
    store.gc().unwrap();
    assert!(store.verify().unwrap().problems.is_empty());
    assert_eq!(store.resolve("A").unwrap().tree, d);
}
