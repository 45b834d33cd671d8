//! `read_at` against the plain bytes, as a property: any offset and length over files of any
//! size (empty, one chunk, many chunks) returns exactly the model's slice.

use std::sync::OnceLock;

use proptest::prelude::*;
use vorpalfs_store::{EntryKind, Store};

fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Mix in runs of repeats so that zstd has something to do.
            if (i / 4096) % 3 == 0 { b'z' } else { x as u8 }
        })
        .collect()
}

const SIZES: [usize; 6] = [0, 1, 4095, 256 << 10, (1 << 20) + 17, 9 << 20];

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    files: Vec<(Vec<u8>, vorpalfs_store::Digest)>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        let datas: Vec<Vec<u8>> = SIZES.iter().enumerate().map(|(i, n)| bytes(*n, i as u64 + 1)).collect();
        for (i, d) in datas.iter().enumerate() {
            std::fs::write(src.join(format!("f{i}")), d).unwrap();
        }
        // A small memory cache, so reads go back to the packs as well as hit the cache.
        let opts = vorpalfs_store::Options { chunk_cache_bytes: 6 << 20, ..Default::default() };
        let store = Store::open_with(&dir.path().join("store"), opts).unwrap();
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
        Fixture { _dir: dir, store, files }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn read_at_matches_the_plain_bytes(which in 0..SIZES.len(), off in any::<prop::sample::Index>(), len in 0usize..(6 << 20)) {
        let f = fixture();
        let (data, digest) = &f.files[which];
        let rec = f.store.file(digest).unwrap();
        let offset = if data.is_empty() { 0 } else { off.index(data.len() + 10) } as u64;
        let mut buf = vec![0u8; len];
        let n = f.store.read_at(&rec, offset, &mut buf).unwrap();
        let start = (offset as usize).min(data.len());
        let end = (start + len).min(data.len());
        prop_assert_eq!(n, end - start);
        prop_assert!(buf[..n] == data[start..end]);
    }
}

#[test]
fn sequential_reader_returns_the_whole_file() {
    let f = fixture();
    for (data, digest) in &f.files {
        let mut out = Vec::new();
        std::io::copy(&mut f.store.reader(digest).unwrap(), &mut out).unwrap();
        assert!(out == *data);
    }
}
