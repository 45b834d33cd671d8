//! The performance gate: instruction counts (callgrind, through gungraun) of the hot paths, each
//! measured once, deterministic on a given machine kind whatever else the machine is doing.
//! `scripts/perf-gate.sh` runs them and fails when one exceeds its baseline
//! (`benches/gate-baseline.json`) by more than the threshold; `--update` rewrites the baseline,
//! to be committed deliberately with the reason in the message.
//!
//! Inputs are generated (never read from the machine), and setup (a store, an ingest) runs
//! outside the measured function.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use gungraun::prelude::*;
use vorpalfs_builder::graph::Graph;
use vorpalfs_builder::schedule::Queue;
use vorpalfs_store::testing::{compress_chunk, decode_chunk, pseudo_random};
use vorpalfs_store::{Bytes, ChunkRef, Chunker, Codec, Digest, Entry, EntryKind, FileRecord, Kind, Store, Tree};

/// Half random, half text: what a binary or a library compresses like.
fn mixed(n: usize) -> Vec<u8> {
    let mut v = pseudo_random(n, 7);
    let text = b"fn main() { println!(\"hello, world\"); } // a line of source code\n";
    for (i, b) in v.iter_mut().enumerate() {
        if (i / 4096) % 2 == 0 {
            *b = text[i % text.len()];
        }
    }
    v
}

#[library_benchmark]
#[bench::eight_mib(args = (8 << 20), setup = mixed)]
fn chunk_buffer(data: Vec<u8>) -> Vec<u8> {
    let mut n = 0usize;
    Chunker::new()
        .chunks(black_box(&data[..]), data.len() as u64, |c| {
            n += black_box(c).len();
            Ok(())
        })
        .unwrap();
    black_box(n);
    data
}

#[library_benchmark]
#[bench::one_mib(args = (1 << 20), setup = mixed)]
fn hash_chunk(data: Vec<u8>) -> Vec<u8> {
    black_box(Digest::of(Kind::Chunk, black_box(&data)));
    data
}

#[library_benchmark]
#[bench::one_mib(args = (1 << 20), setup = mixed)]
fn compress(data: Vec<u8>) -> Vec<u8> {
    black_box(compress_chunk(black_box(&data)));
    data
}

fn compressed(n: usize) -> (Digest, Codec, u32, Bytes) {
    let data = mixed(n);
    let (codec, stored) = compress_chunk(&data);
    (Digest::of(Kind::Chunk, &data), codec, n as u32, stored.into())
}

#[library_benchmark]
#[bench::one_mib(args = (1 << 20), setup = compressed)]
fn decode_and_verify(c: (Digest, Codec, u32, Bytes)) {
    black_box(decode_chunk(&c.0, c.1, c.2, black_box(c.3.clone())).unwrap());
}

fn tree(n: usize) -> Tree {
    Tree::new(
        (0..n)
            .map(|i| Entry {
                name: format!("file-{i:05}.o").into_bytes(),
                kind: EntryKind::File {
                    digest: Digest::of(Kind::File, &i.to_le_bytes()),
                    size: i as u64,
                    executable: false,
                },
            })
            .collect(),
    )
    .unwrap()
}

#[library_benchmark]
#[bench::thousand_entries(args = (1000), setup = tree)]
fn tree_codec(t: Tree) -> Tree {
    let bytes = black_box(t.encode());
    black_box(Tree::decode(&bytes, &t.digest()).unwrap());
    t
}

fn record(n: usize) -> FileRecord {
    let chunks = (0..n)
        .map(|i| ChunkRef { offset: i as u64 * 1000, len: 1000, id: Digest::of(Kind::Chunk, &i.to_le_bytes()) })
        .collect();
    FileRecord { size: n as u64 * 1000, chunks }
}

#[library_benchmark]
#[bench::thousand_chunks(args = (1000), setup = record)]
fn file_record_codec(r: FileRecord) -> FileRecord {
    let bytes = black_box(r.encode());
    black_box(FileRecord::decode(&bytes, &r.digest()).unwrap());
    r
}

/// A store holding one 4 MiB file; `cache` bytes of decoded chunks kept in memory.
struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    file: Arc<FileRecord>,
}

fn store_with_file(cache: usize) -> Fixture {
    let dir = tempfile::Builder::new().prefix("gate").tempdir_in("/tmp").unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), mixed(4 << 20)).unwrap();
    let opts = vorpalfs_store::Options { chunk_cache_bytes: cache, ..Default::default() };
    let store = Store::open_with(&dir.path().join("store"), opts).unwrap();
    let root = store.ingest(&src, None).unwrap().root;
    let EntryKind::File { digest, .. } = store.lookup(&root, "f").unwrap().kind else { unreachable!() };
    let file = store.file(&digest).unwrap();
    // Read once: with a cache, the chunk is then in memory.
    store.read(&file, 0, 128 << 10).unwrap();
    Fixture { _dir: dir, store, file }
}

#[library_benchmark]
#[bench::cached(args = (64 << 20), setup = store_with_file)]
#[bench::from_pack(args = (0), setup = store_with_file)]
fn store_read_128k(f: Fixture) -> Fixture {
    black_box(f.store.read(&f.file, black_box(1 << 20), 128 << 10).unwrap());
    f
}

/// A DAG of `n` artifacts in layers of 10, each needing two of the layer before.
fn dag(n: usize) -> Graph {
    let needs = (0..n).map(|i| if i < 10 { vec![] } else { vec![i - 10, i - 10 - i % 10 + (i + 1) % 10] }).collect();
    Graph::new(needs).unwrap()
}

#[library_benchmark]
#[bench::thousand(args = (1000), setup = dag)]
fn schedule_pass(g: Graph) -> Graph {
    let all = vec![true; g.len()];
    let mut q = Queue::new(&g, &all);
    let mut started = 0;
    while let Some(i) = q.pop() {
        started += 1;
        q.built(black_box(i));
    }
    assert_eq!(started, g.len());
    g
}

fn manifest_text(n: usize) -> String {
    (0..n)
        .map(|i| {
            let deps = if i == 0 { String::new() } else { format!("\"a{}\"", i - 1) };
            format!(
                "[[artifact]]\nname = \"a{i}\"\ndeps = [{deps}]\naliases = [\"a{i}:latest\"]\n\
                 [[artifact.step]]\nenv = {{ CFLAGS = \"-O2\" }}\nscript = \"cc -o $VORPAL_OUTPUT/bin/a{i} main.c\"\n"
            )
        })
        .collect()
}

#[library_benchmark]
#[bench::thousand_artifacts(args = (1000), setup = manifest_text)]
fn manifest_parse(text: String) -> String {
    black_box(vorpalfs_builder::manifest::parse(Path::new("/m/vorpalfs.toml"), black_box(&text)).unwrap());
    text
}

library_benchmark_group!(
    name = codecs,
    benchmarks = [chunk_buffer, hash_chunk, compress, decode_and_verify, tree_codec, file_record_codec]
);
library_benchmark_group!(name = store, benchmarks = [store_read_128k]);
library_benchmark_group!(name = builder, benchmarks = [schedule_pass, manifest_parse]);

main!(library_benchmark_groups = codecs, store, builder);
