//! Reads against the plain bytes, as a property: any offset and length over files of any size
//! (empty, one chunk, many chunks) returns exactly the model's slice, through each of the three
//! read paths (blocking, memory-only, and the async one the mount uses).

use std::sync::{Arc, OnceLock};

use proptest::prelude::*;
use vorpalfs_store::{EntryKind, Store};

fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vorpalfs_store::testing::pseudo_random(n, seed);
    // Runs of repeats so that zstd has something to do.
    for (i, b) in v.iter_mut().enumerate() {
        if (i / 4096) % 3 == 0 {
            *b = b'z';
        }
    }
    v
}

const SIZES: [usize; 6] = [0, 1, 4095, 256 << 10, (1 << 20) + 17, 9 << 20];

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    files: Vec<(Vec<u8>, vorpalfs_store::Digest)>,
    rt: tokio::runtime::Runtime,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(make_fixture)
}

fn make_fixture() -> Fixture {
    {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        let datas: Vec<Vec<u8>> = SIZES.iter().enumerate().map(|(i, n)| bytes(*n, i as u64 + 1)).collect();
        for (i, d) in datas.iter().enumerate() {
            std::fs::write(src.join(format!("f{i}")), d).unwrap();
        }
        // A small memory cache, so reads go back to the packs as well as hit the cache.
        let opts = vorpalfs_store::Options { chunk_cache_bytes: 6 << 20, ..Default::default() };
        let store = Arc::new(Store::open_with(&dir.path().join("store"), opts).unwrap());
        let root = store.ingest(&src, None).unwrap().root;
        let files = datas
            .into_iter()
            .enumerate()
            .map(|(i, d)| match store.lookup(&root, &format!("f{i}")).unwrap().kind {
                EntryKind::File { digest, size, .. } => {
                    assert_eq!(size as usize, d.len());
                    (d, digest)
                }
                _ => unreachable!(),
            })
            .collect();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        Fixture { _dir: dir, store, files, rt }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn every_read_path_matches_the_plain_bytes(which in 0..SIZES.len(), off in any::<prop::sample::Index>(), len in 0usize..(6 << 20)) {
        let f = fixture();
        let (data, digest) = &f.files[which];
        let rec = f.store.file(digest).unwrap();
        let offset = if data.is_empty() { 0 } else { off.index(data.len() + 10) } as u64;
        let start = (offset as usize).min(data.len());
        let end = (start + len).min(data.len());
        let got = f.store.read(&rec, offset, len).unwrap();
        prop_assert!(got[..] == data[start..end]);
        // Just read: the covering chunks are in memory now, unless they exceed the 6 MiB cache.
        let cover: u64 = rec
            .chunks
            .iter()
            .filter(|c| c.offset < end as u64 && c.offset + u64::from(c.len) > start as u64)
            .map(|c| u64::from(c.len))
            .sum();
        match f.store.read_cached(&rec, offset, len) {
            Some(cached) => prop_assert!(cached[..] == data[start..end]),
            None => prop_assert!(cover > 3 << 20, "{cover} bytes of chunks read just now are not in memory"),
        }
        let got = f.rt.block_on(f.store.read_async(rec.clone(), offset, len)).unwrap();
        prop_assert!(got[..] == data[start..end]);
    }
}

#[test]
fn sequential_reader_returns_the_whole_file() {
    // A store of its own: this test's reads would evict the property test's cache.
    let f = &make_fixture();
    for (data, digest) in &f.files {
        let mut out = Vec::new();
        std::io::copy(&mut f.store.reader(digest).unwrap(), &mut out).unwrap();
        assert!(out == *data);
    }
}

#[test]
fn the_index_reports_its_memory_within_its_budgets() {
    let f = fixture();
    for (_, d) in &f.files {
        f.store.file(d).unwrap();
    }
    let m = f.store.index_memory();
    // The ingest's writes sit in memtables (64 MiB shared by every family); the block cache
    // is 128 MiB, and what is pinned of it is part of it.
    assert!(m.memtables > 0 && m.memtables <= 64 << 20, "{m:?}");
    assert!(m.block_cache <= 128 << 20 && m.block_cache_pinned <= m.block_cache, "{m:?}");
}
