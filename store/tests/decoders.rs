//! Arbitrary bytes given to every decoder of what comes from disk or S3 never panic, never
//! allocate past a cap, and what decodes re-encodes to the same bytes. The bodies are the fuzz
//! targets' (`fuzz/`, run with cargo-fuzz for longer); here they run on stable in every test run,
//! on random bytes and on valid encodings with bytes changed.

use proptest::prelude::*;
use vorpalfs_store::fuzzing;
use vorpalfs_store::model::records::{Location, RemoteLocator};
use vorpalfs_store::remote::format::{RootObject, encode_index};
use vorpalfs_store::remote::trust::RootKind;
use vorpalfs_store::{ChunkRef, Codec, Digest, Entry, EntryKind, FileRecord, Kind, Tree};

fn tree_bytes(names: &[String]) -> Vec<u8> {
    let entries = names
        .iter()
        .enumerate()
        .map(|(i, n)| Entry {
            name: n.as_bytes().to_vec(),
            kind: match i % 3 {
                0 => EntryKind::File { digest: Digest([i as u8; 32]), size: i as u64, executable: i % 2 == 0 },
                1 => EntryKind::Dir { digest: Digest([7; 32]), size: 3 },
                _ => EntryKind::Symlink { target: b"../x".to_vec() },
            },
        })
        .collect();
    Tree::new(entries).map(|t| t.encode()).unwrap_or_default()
}

fn file_bytes(lens: &[u32]) -> Vec<u8> {
    let mut offset = 0;
    let chunks = lens
        .iter()
        .map(|&len| {
            let c = ChunkRef { offset, len, id: Digest([len as u8; 32]) };
            offset += u64::from(len);
            c
        })
        .collect();
    FileRecord { size: offset, chunks }.encode()
}

/// `bytes` with some positions changed.
fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8)]) -> Vec<u8> {
    for &(at, v) in edits {
        if !bytes.is_empty() {
            let n = bytes.len();
            bytes[at % n] = v;
        }
    }
    bytes
}

fn edits() -> impl Strategy<Value = Vec<(usize, u8)>> {
    prop::collection::vec((any::<usize>(), any::<u8>()), 0..4)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_break_a_decoder(data in prop::collection::vec(any::<u8>(), 0..2048)) {
        fuzzing::tree(&data);
        fuzzing::file_record(&data);
        fuzzing::chunk(&data);
        fuzzing::remote_index(&data);
        fuzzing::root_object(&data);
        fuzzing::profile(&data);
        fuzzing::pack_records(&data);
        fuzzing::elf_hints(&data);
    }

    #[test]
    fn changed_elf_headers_never_break_the_loader_hints(e in edits()) {
        let seed = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/elf_hints/shared-object")).unwrap();
        fuzzing::elf_hints(&seed);
        // Into the headers (the first 232 bytes) or .dynamic (at 0x2040): the rest is filler.
        let e: Vec<(usize, u8)> = e.iter().map(|&(at, v)| (if at % 2 == 0 { at % 232 } else { 0x2040 + at % 0x70 }, v)).collect();
        fuzzing::elf_hints(&mutate(seed, &e));
    }

    #[test]
    fn changed_pack_stretches_never_break_the_record_walk(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..600), 1..5), e in edits()) {
        let mut pack = Vec::new();
        for data in &chunks {
            let id = Digest::of(Kind::Chunk, data);
            // A record: id, raw length, stored length, codec, the stored bytes.
            let len = (data.len() as u32).to_le_bytes();
            pack.extend_from_slice(&[id.as_bytes().as_slice(), &len, &len, &[Codec::Raw as u8]].concat());
            pack.extend_from_slice(data);
        }
        fuzzing::pack_records(&pack);
        fuzzing::pack_records(&mutate(pack, &e));
    }

    #[test]
    fn changed_trees_never_break_the_decoder(names in prop::collection::btree_set("[a-z.]{1,12}", 0..8), e in edits()) {
        let names: Vec<String> = names.into_iter().collect();
        fuzzing::tree(&mutate(tree_bytes(&names), &e));
    }

    #[test]
    fn changed_file_records_never_break_the_decoder(lens in prop::collection::vec(1u32..5 << 20, 0..6), e in edits()) {
        fuzzing::file_record(&mutate(file_bytes(&lens), &e));
    }

    #[test]
    fn changed_chunk_records_never_break_the_decoder(data in prop::collection::vec(any::<u8>(), 1..4096), zstd in any::<bool>(), e in edits()) {
        let (codec, stored) = match zstd {
            true => (Codec::Zstd, zstd::bulk::compress(&data, 1).unwrap()),
            false => (Codec::Raw, data.clone()),
        };
        let id = Digest::of(Kind::Chunk, &data);
        let loc = Location { pack: 3u64, offset: 8, stored_len: stored.len() as u32, raw_len: data.len() as u32, codec };
        let input = [id.as_bytes().as_slice(), &loc.encode(), &stored].concat();
        fuzzing::chunk(&mutate(input, &e));
    }

    #[test]
    fn changed_indexes_never_break_the_decoder(names in prop::collection::btree_set("[a-z]{1,8}", 0..5), lens in prop::collection::vec(1u32..1000, 0..4), e in edits()) {
        let names: Vec<String> = names.into_iter().collect();
        let t = tree_bytes(&names);
        let f = file_bytes(&lens);
        let fd = Digest::of(Kind::File, &f);
        let record = FileRecord::decode(&f, &fd).unwrap();
        let loc = RemoteLocator { pack: Digest([1; 32]), offset: 0, stored_len: 10, raw_len: 10, codec: Codec::Raw };
        let index = encode_index(&[(Digest::of(Kind::Tree, &t), t)], &[(fd, record)], &[(Digest([2; 32]), loc)]).unwrap();
        // As an object (changed compressed bytes), and as a changed stream compressed again.
        fuzzing::remote_index(&mutate(index.clone(), &e));
        let raw = zstd::decode_all(&index[..]).unwrap();
        fuzzing::remote_index(&[&[1u8][..], &mutate(raw, &e)].concat());
    }

    #[test]
    fn changed_root_objects_never_break_the_parser(e in edits()) {
        let r = RootObject::new(RootKind::Result, Digest([5; 32]), Digest([6; 32]));
        fuzzing::root_object(&mutate(r.encode(), &e));
    }

    #[test]
    fn changed_profiles_never_break_the_parser(n in 0usize..6, e in edits()) {
        let ids = (0..n).map(|i| Digest(*blake3::hash(&[i as u8]).as_bytes())).collect();
        fuzzing::profile(&mutate(vorpalfs_store::Profile::new(Digest([5; 32]), ids).encode(), &e));
    }
}
