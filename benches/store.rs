//! Criterion benchmarks of the store's hot functions: chunking, hashing, compression, and
//! whole-tree ingest, and checking a signed root object. Run: `cargo bench -p vorpalfs-benches`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use vorpalfs_benches::real_data;
use vorpalfs_store::{Chunker, Digest, Kind, Store};

const DATA: usize = 32 << 20;

fn chunking(c: &mut Criterion) {
    let data = real_data(DATA);
    let mut g = c.benchmark_group("fastcdc");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    for (min, avg, max) in [(16 << 10, 64 << 10, 256 << 10), (256 << 10, 1 << 20, 4 << 20)] {
        g.bench_with_input(BenchmarkId::from_parameter(format!("avg{}KiB", avg >> 10)), &data, |b, d| {
            b.iter(|| fastcdc::v2020::FastCDC::new(d, min, avg, max).count())
        });
    }
    // The store's streaming chunker (reads into its reused buffer, hands out slices).
    let mut chunker = Chunker::new();
    g.bench_with_input("store-chunker-stream", &data, |b, d| {
        b.iter(|| {
            let mut n = 0usize;
            chunker
                .chunks(&d[..], d.len() as u64, |c| {
                    n += black_box(c).len();
                    Ok(())
                })
                .unwrap();
            n
        })
    });
    g.finish();
}

fn hashing(c: &mut Criterion) {
    let data = real_data(DATA);
    let mut g = c.benchmark_group("hash");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.bench_function("blake3-chunks-1MiB", |b| {
        b.iter(|| {
            data.chunks(1 << 20).for_each(|c| {
                black_box(Digest::of(Kind::Chunk, c));
            })
        })
    });
    g.finish();
}

fn compression(c: &mut Criterion) {
    let data = real_data(DATA);
    let mut g = c.benchmark_group("zstd-1MiB-chunks");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    for level in [1, 3] {
        let mut z = zstd::bulk::Compressor::new(level).unwrap();
        let sizes: usize = data.chunks(1 << 20).map(|c| z.compress(c).unwrap().len()).sum();
        eprintln!("zstd level {level}: ratio {:.2} on 1 MiB chunks", data.len() as f64 / sizes as f64);
        g.bench_with_input(BenchmarkId::new("compress", level), &data, |b, d| {
            b.iter(|| d.chunks(1 << 20).map(|c| z.compress(c).unwrap().len()).sum::<usize>())
        });
    }
    let mut z = zstd::bulk::Compressor::new(3).unwrap();
    let compressed: Vec<(Vec<u8>, usize)> = data.chunks(1 << 20).map(|c| (z.compress(c).unwrap(), c.len())).collect();
    g.bench_function("decompress", |b| {
        b.iter(|| compressed.iter().map(|(c, n)| zstd::bulk::decompress(c, *n).unwrap().len()).sum::<usize>())
    });
    g.finish();
}

fn ingest(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let data = real_data(DATA);
    // 32 MiB in 512 files of mixed sizes, like a small toolchain directory.
    let mut off = 0;
    for i in 0..512 {
        let n = if i % 64 == 0 { 2 << 20 } else { 32 << 10 };
        let end = (off + n).min(data.len());
        std::fs::write(src.join(format!("f{i:03}")), &data[off..end]).unwrap();
        off = end % (data.len() - (2 << 20));
    }
    let mut g = c.benchmark_group("ingest");
    g.sample_size(10);
    let mut n = 0;
    g.bench_function("tree-512-files", |b| {
        b.iter(|| {
            // A fresh store each time: measuring the full path, not dedup hits.
            n += 1;
            let store = Store::open(&tmp.path().join(format!("store{n}"))).unwrap();
            black_box(store.ingest(&src, None).unwrap());
        })
    });
    g.finish();
}

/// What a signed root costs a host that looks it up: parsing the root object and checking its
/// signatures (two builders signed it; the host trusts the second).
fn root_signatures(c: &mut Criterion) {
    use vorpalfs_store::remote::format::RootObject;
    use vorpalfs_store::remote::trust::{RootKind, SecretKey, Trust};
    let (a, b) = (SecretKey::generate("builder-a").unwrap(), SecretKey::generate("builder-b").unwrap());
    let mut obj = RootObject::new(RootKind::Result, Digest([1; 32]), Digest([2; 32]));
    obj.sign("name", &a);
    obj.sign("name", &b);
    let bytes = obj.encode();
    let trust = Trust { signer: None, trusted: vec![b.public()], trust_unsigned: false };
    c.bench_function("root_object_parse_and_verify", |bench| {
        bench.iter(|| {
            let o = RootObject::parse(&bytes).unwrap();
            assert!(trust.trusted_signer(&o.sigs, |k, t| o.statement("name", k, t)).is_some());
        })
    });
}

criterion_group!(benches, chunking, hashing, compression, ingest, root_signatures);
criterion_main!(benches);
