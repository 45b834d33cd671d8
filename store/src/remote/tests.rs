//! The remote layer against the in-memory object store: push, lazy lookup and reads with
//! readahead, pull, eviction, claims, and every way the backend can fail (corrupt, missing,
//! malformed and oversized objects, errors, an outage, a blackhole). No network, no root.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::remote::trust::RootKind;
use crate::testing::pseudo_random;
use crate::{EntryKind, Options, Store};

fn policy() -> Policy {
    Policy {
        attempts: 3,
        backoff: Duration::from_millis(1),
        small_deadline: Duration::from_millis(500),
        data_deadline: Duration::from_millis(500),
        min_rate: 1 << 30,
        down_after: 2,
        down_for: Duration::from_millis(300),
    }
}

struct Host {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
}

/// No background task outlives its host: one still writing when the test process exits would
/// race RocksDB's teardown (and a removed directory).
impl Drop for Host {
    fn drop(&mut self) {
        assert!(self.store.settle(Duration::from_secs(30)), "background fetches never landed");
    }
}

fn host(mem: &Arc<MemoryStore>, cache: Option<u64>) -> Host {
    host_with(mem, |o| o.cache_bytes = cache)
}

/// A host on `mem` with the test policy and the options `f` sets.
fn host_with(mem: &Arc<MemoryStore>, f: impl FnOnce(&mut Options)) -> Host {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = Options { remote: Some(Backend::Object(mem.clone())), policy: policy(), ..Default::default() };
    f(&mut opts);
    let store = Store::open_with(&dir.path().join("store"), opts).unwrap();
    Host { _dir: dir, store: Arc::new(store) }
}

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

/// 12 + 9 MiB of incompressible data and 30 small files.
fn tree(src: &Path) {
    write(&src.join("big/a.bin"), &pseudo_random(12 << 20, 1));
    write(&src.join("big/b.bin"), &pseudo_random(9 << 20, 2));
    for i in 0..30 {
        write(&src.join(format!("small/f{i}")), format!("file {i}\n").repeat(50 + i).as_bytes());
    }
}

/// The file record at `path` of tree `root`.
fn record(store: &Store, root: &crate::Digest, path: &str) -> crate::Result<Arc<crate::FileRecord>> {
    let EntryKind::File { digest, .. } = store.lookup(root, path)?.kind else { panic!("{path} is not a file") };
    store.file(&digest)
}

/// A runtime for the async read path.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn file_bytes(store: &Store, root: &crate::Digest, path: &str) -> crate::Result<Vec<u8>> {
    let f = record(store, root, path)?;
    Ok(store.read(&f, 0, f.size as usize)?.to_vec())
}

/// A pushed tree: (its source dir, its digest).
fn pushed(mem: &Arc<MemoryStore>) -> (tempfile::TempDir, crate::Digest) {
    let src = tempfile::tempdir().unwrap();
    tree(src.path());
    let a = host(mem, None);
    let d = a.store.ingest(src.path(), None).unwrap().root;
    let r = a.store.push(&d.to_hex(), &|_, _| {}).unwrap();
    assert!(!r.already && r.new_chunks > 20, "{r:?}");
    assert!(a.store.push(&d.to_hex(), &|_, _| {}).unwrap().already);
    (src, d)
}

/// `files` pushed from a host of their own; then a link far enough for neighbours and a
/// loader's reads, and a host that takes no small root whole, with the root recorded.
fn pushed_files(mem: &Arc<MemoryStore>, files: &[(&str, &[u8])]) -> (crate::Digest, Host) {
    let src = tempfile::tempdir().unwrap();
    for (path, data) in files {
        write(&src.path().join(path), data);
    }
    let a = host(mem, None);
    let d = a.store.ingest(src.path(), None).unwrap().root;
    a.store.push(&d.to_hex(), &|_, _| {}).unwrap();
    mem.faults(|f| f.latency = Duration::from_millis(5));
    let b = host_with(mem, |o| o.prefetch_below = 0);
    b.store.resolve(&d.to_hex()).unwrap();
    (d, b)
}

/// Flips a bit of chunk `id`'s bytes in its S3 pack.
fn damage_in_s3(mem: &MemoryStore, store: &Store, id: &crate::Digest) {
    let place = store.remote_place(id).unwrap().unwrap().loc;
    let key = format::pack_key(&place.pack);
    let mut pack = mem.object(&key).unwrap().to_vec();
    pack[place.offset as usize + 2] ^= 0x40;
    mem.insert(&key, pack);
}

/// Waits until a loader's fetch asked for something and every GET landed; what it asked for.
fn loader_fetched(store: &Store) -> u64 {
    let t = Instant::now();
    loop {
        let n = store.read.loader_bytes.load(std::sync::atomic::Ordering::Relaxed);
        if n > 0 && store.settle(Duration::ZERO) {
            return n;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "nothing fetched for the loader");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_lazy_host_fetches_metadata_then_only_the_chunks_it_reads_with_readahead() {
    let mem = Arc::new(MemoryStore::new());
    let (src, d) = pushed(&mem);
    // A far link (a round trip costs more than a MiB): neighbours are worth reading.
    mem.faults(|f| f.latency = Duration::from_millis(5));
    let b = host(&mem, None);
    let r = b.store.resolve(&d.to_hex()).unwrap();
    assert!(r.remote && r.tree == d);
    let t0 = b.store.remote().unwrap().traffic();
    assert_eq!(t0.gets, 2, "a root object and an index");
    // One small file: one ranged GET of its one chunk, and one of the MiB after it in the
    // pack (its neighbours, the other small files of its directory), in parallel.
    assert_eq!(file_bytes(&b.store, &d, "small/f3").unwrap(), std::fs::read(src.path().join("small/f3")).unwrap());
    let t1 = b.store.remote().unwrap().traffic();
    assert_eq!(t1.gets - t0.gets, 2);
    assert!(t1.get_bytes - t0.get_bytes <= 4096 + lazy::NEIGHBOURS, "{t1:?}");
    // ...so reading every small file of the directory asks S3 nothing more (but for the ones
    // before f3 in the pack, which the neighbours do not cover: one GET and its tail).
    for i in 0..30 {
        let p = format!("small/f{i}");
        assert_eq!(file_bytes(&b.store, &d, &p).unwrap(), std::fs::read(src.path().join(&p)).unwrap());
    }
    let t1 = b.store.remote().unwrap().traffic();
    assert!(t1.gets - t0.gets <= 4, "{} GETs for 30 small files", t1.gets - t0.gets);
    // A 12 MiB file read start to end: readahead brings the following chunks in parallel GETs,
    // each chunk once.
    let f = record(&b.store, &d, "big/a.bin").unwrap();
    let mut got = Vec::new();
    for off in (0..f.size).step_by(128 << 10) {
        got.extend_from_slice(&b.store.read(&f, off, 128 << 10).unwrap());
    }
    assert!(got == pseudo_random(12 << 20, 1));
    let t2 = b.store.remote().unwrap().traffic();
    assert!(t2.gets - t1.gets <= 16, "{} GETs for a sequential read of 12 MiB", t2.gets - t1.gets);
    assert!(t2.get_bytes - t1.get_bytes <= 13 << 20, "{} bytes for 12 MiB", t2.get_bytes - t1.get_bytes);
    // Read again: from the local fetched packs, no request.
    assert_eq!(file_bytes(&b.store, &d, "big/a.bin").unwrap().len(), 12 << 20);
    assert_eq!(b.store.remote().unwrap().traffic().gets, t2.gets);
}

#[test]
fn the_async_read_path_fetches_once_for_many_readers() {
    let mem = Arc::new(MemoryStore::new());
    let (_src, d) = pushed(&mem);
    mem.faults(|f| f.latency = Duration::from_millis(50));
    let b = host(&mem, None);
    let store = b.store.clone();
    store.resolve(&d.to_hex()).unwrap();
    let f = record(&store, &d, "big/b.bin").unwrap();
    let before = store.remote().unwrap().traffic().gets;
    let rt = runtime();
    let reads: Vec<_> = (0..8).map(|_| rt.spawn(store.read_async(f.clone(), 0, 4096))).collect();
    for r in reads {
        assert!(rt.block_on(r).unwrap().unwrap()[..] == pseudo_random(4096, 2)[..]);
    }
    // As one reader: one readahead window, each chunk once.
    let t = store.remote().unwrap().traffic();
    assert!(t.gets - before <= 6, "{} GETs", t.gets - before);
    assert!(t.get_bytes <= lazy::WINDOW_MIN + (4 << 20), "{} bytes fetched: some chunk twice", t.get_bytes);
}

#[test]
fn a_corrupted_pack_is_an_error_never_wrong_bytes() {
    let mem = Arc::new(MemoryStore::new());
    let (_src, d) = pushed(&mem);
    let packs = mem.keys("packs/");
    mem.faults(|f| f.corrupt = packs.clone());
    let b = host(&mem, None);
    b.store.resolve(&d.to_hex()).unwrap();
    let e = file_bytes(&b.store, &d, "big/a.bin").unwrap_err();
    assert!(e.is_corruption() && e.to_string().contains("S3 pack"), "{e}");
    // A pull takes whole packs, checked against their names: refused, nothing kept.
    let c = host(&mem, None);
    let e = c.store.pull(&d.to_hex(), &|_, _| {}).unwrap_err();
    assert!(e.to_string().contains("does not match its name"), "{e}");
    assert!(c.store.stats().unwrap().packs == 0);
}

#[test]
fn bad_root_objects_and_indexes_are_refused_and_record_nothing() {
    let mem = Arc::new(MemoryStore::new());
    let (_src, d) = pushed(&mem);
    let root_key = format::root_key(&d.to_hex());
    let good = mem.object(&root_key).unwrap();
    let index_key = mem.keys("indexes/")[0].clone();
    let index = mem.object(&index_key).unwrap();
    let check = |what: &str, want: &str| {
        let b = host(&mem, None);
        let e = b.store.resolve(&d.to_hex()).unwrap_err();
        assert!(e.to_string().contains(want), "{what}: {e}");
        assert!(b.store.roots().unwrap().is_empty(), "{what}: a root was recorded");
        assert!(b.store.top_level().unwrap().is_empty());
    };
    mem.insert(&root_key, &b"not a root"[..]);
    check("garbage root object", "not a vorpalfs root object");
    mem.insert(&root_key, vec![b'x'; 1 << 20]);
    check("huge root object", "larger than");
    mem.insert(&root_key, good.clone());
    mem.remove(&index_key);
    check("missing index", "missing");
    let mut bad = index.to_vec();
    bad[10] ^= 1;
    mem.insert(&index_key, bad);
    check("changed index", "does not match its name");
    // An index that verifies but does not hold the root's tree.
    let other = format::encode_index(&[], &[], &[]).unwrap();
    let od = crate::Digest(*blake3::hash(&other).as_bytes());
    mem.insert(&format::index_key(&od), other);
    mem.insert(&root_key, format::RootObject::new(RootKind::Root, d, od).encode());
    check("incomplete index", "lacks tree");
    mem.insert(&root_key, good);
    mem.insert(&index_key, index);
    let b = host(&mem, None);
    assert_eq!(b.store.resolve(&d.to_hex()).unwrap().tree, d);
}

#[test]
fn errors_are_retried_an_outage_fails_fast_and_recovery_is_seen() {
    let mem = Arc::new(MemoryStore::new());
    let (src, d) = pushed(&mem);
    let b = host(&mem, None);
    b.store.resolve(&d.to_hex()).unwrap();
    // Two transient failures: retried, the read succeeds.
    mem.faults(|f| f.fail_next = 2);
    assert_eq!(file_bytes(&b.store, &d, "small/f1").unwrap(), std::fs::read(src.path().join("small/f1")).unwrap());
    // An outage: a read fails after its attempts; after the second, S3 is down and requests
    // fail at once without being sent.
    // (Reads deep in the big files: the small files came with f1, as its neighbours.)
    mem.faults(|f| f.outage = true);
    let deep = |path: &str| {
        let f = record(&b.store, &d, path).unwrap();
        b.store.read(&f, f.size - 10, 10).map(|b| b.to_vec())
    };
    assert!(deep("big/a.bin").is_err());
    assert!(deep("big/b.bin").is_err());
    assert!(b.store.remote().unwrap().is_down());
    let gets = mem.gets.load(std::sync::atomic::Ordering::Relaxed);
    let t = Instant::now();
    let e = deep("big/a.bin").unwrap_err();
    assert!(matches!(e, crate::Error::Remote { source: crate::RemoteError::Down, .. }), "{e}");
    assert!(t.elapsed() < Duration::from_millis(50));
    assert_eq!(mem.gets.load(std::sync::atomic::Ordering::Relaxed), gets);
    // Back: after the down period, reads work again.
    mem.faults(|f| f.outage = false);
    std::thread::sleep(Duration::from_millis(350));
    assert_eq!(deep("big/a.bin").unwrap(), pseudo_random(12 << 20, 1)[(12 << 20) - 10..]);
    assert!(!b.store.remote().unwrap().is_down());
}

#[test]
fn a_blackholed_endpoint_times_out() {
    let mem = Arc::new(MemoryStore::new());
    let (_src, d) = pushed(&mem);
    let b = host(&mem, None);
    mem.faults(|f| f.hang = true);
    let t = Instant::now();
    let e = b.store.resolve(&d.to_hex()).unwrap_err();
    assert!(e.to_string().contains("no answer within"), "{e}");
    // 3 attempts of 500 ms each.
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[test]
fn eviction_keeps_fetched_data_within_the_budget() {
    let mem = Arc::new(MemoryStore::new());
    let src = tempfile::tempdir().unwrap();
    for i in 0..8 {
        write(&src.path().join(format!("f{i}")), &pseudo_random(4 << 20, 100 + i));
    }
    let a = host(&mem, None);
    let d = a.store.ingest(src.path(), None).unwrap().root;
    a.store.push(&d.to_hex(), &|_, _| {}).unwrap();
    let budget = 12u64 << 20;
    let b = host(&mem, Some(budget));
    b.store.resolve(&d.to_hex()).unwrap();
    for i in 0..8 {
        assert!(file_bytes(&b.store, &d, &format!("f{i}")).unwrap() == pseudo_random(4 << 20, 100 + i));
        b.store.evict().unwrap();
        let used = b.store.cache_bytes().unwrap();
        assert!(used <= budget, "after f{i}: {used} bytes cached, budget {budget}");
    }
    // Evicted data comes back from S3 when read again, still right.
    assert!(file_bytes(&b.store, &d, "f0").unwrap() == pseudo_random(4 << 20, 100));
}

#[test]
fn pull_fetches_everything_then_works_offline() {
    let mem = Arc::new(MemoryStore::new());
    let (src, d) = pushed(&mem);
    let b = host(&mem, None);
    let r = b.store.pull(&d.to_hex(), &|_, _| {}).unwrap();
    assert_eq!(r.fetched_chunks, r.chunks);
    mem.faults(|f| f.outage = true);
    let out = tempfile::tempdir().unwrap();
    b.store.export(&d, &out.path().join("x")).unwrap();
    assert!(
        std::fs::read(out.path().join("x/big/a.bin")).unwrap() == std::fs::read(src.path().join("big/a.bin")).unwrap()
    );
    assert!(b.store.verify().unwrap().problems.is_empty());
}

#[test]
fn claims_are_taken_once_seen_by_others_and_released() {
    let mem = Arc::new(MemoryStore::new());
    let (a, b) = (host(&mem, None), host(&mem, None));
    assert!(a.store.claim("x", "a:1", false).unwrap());
    assert!(!b.store.claim("x", "b:2", false).unwrap());
    let c = b.store.claim_info("x").unwrap().unwrap();
    assert_eq!(c.owner, "a:1");
    assert!(c.age_seconds < 5);
    assert!(b.store.claim("x", "b:2", true).unwrap(), "a stale claim is taken over");
    assert_eq!(a.store.claim_info("x").unwrap().unwrap().owner, "b:2");
    b.store.release("x").unwrap();
    assert!(a.store.claim_info("x").unwrap().is_none());
}

#[test]
fn two_hosts_pushing_one_tree_write_the_same_objects() {
    let mem = Arc::new(MemoryStore::new());
    let src = tempfile::tempdir().unwrap();
    tree(src.path());
    let (a, b) = (host(&mem, None), host(&mem, None));
    let da = a.store.ingest(src.path(), Some("x")).unwrap().root;
    let db = b.store.ingest(src.path(), Some("x")).unwrap().root;
    std::thread::scope(|s| {
        s.spawn(|| a.store.push("x", &|_, _| {}).unwrap());
        s.spawn(|| b.store.push("x", &|_, _| {}).unwrap());
    });
    assert_eq!(da, db);
    assert_eq!(mem.keys("indexes/").len(), 1);
    let packs = mem.keys("packs/").len();
    assert!(packs >= 1);
    // Named roots are also found by their tree digest.
    assert!(mem.object(&format::root_key(&da.to_hex())).is_some());
    let c = host(&mem, None);
    assert_eq!(c.store.resolve("x").unwrap().tree, da);
}

/// Someone who can write to the bucket publishes root `evil`: the tree of root `good`, with an
/// index placing every chunk in a pack of their own (garbage, correctly named). Returns the
/// source of `good` and its tree.
fn good_and_evil(mem: &Arc<MemoryStore>) -> (tempfile::TempDir, crate::Digest) {
    let src = tempfile::tempdir().unwrap();
    tree(src.path());
    let a = host(mem, None);
    let d = a.store.ingest(src.path(), Some("good")).unwrap().root;
    a.store.push("good", &|_, _| {}).unwrap();
    let good = format::RootObject::parse(&mem.object(&format::root_key("good")).unwrap()).unwrap();
    let bytes = mem.object(&format::index_key(&good.index)).unwrap();
    let (mut trees, mut files, mut chunks) = (Vec::new(), Vec::new(), Vec::new());
    format::decode_index(&bytes, &good.index, |e| {
        match e {
            format::IndexEntry::Tree(d, b) => trees.push((d, b)),
            format::IndexEntry::File(d, b) => files.push((d, crate::FileRecord::decode(&b, &d).unwrap())),
            format::IndexEntry::Chunk(id, l) => chunks.push((id, l)),
        }
        Ok(())
    })
    .unwrap();
    let end = chunks.iter().map(|(_, l)| l.offset + u64::from(l.stored_len)).max().unwrap();
    let pack = pseudo_random(end as usize, 99);
    let pack_digest = crate::Digest(*blake3::hash(&pack).as_bytes());
    mem.insert(&format::pack_key(&pack_digest), pack);
    for (_, l) in &mut chunks {
        l.pack = pack_digest;
    }
    let index = format::encode_index(&trees, &files, &chunks).unwrap();
    let index_digest = crate::Digest(*blake3::hash(&index).as_bytes());
    mem.insert(&format::index_key(&index_digest), index);
    mem.insert(&format::root_key("evil"), format::RootObject::new(RootKind::Root, d, index_digest).encode());
    (src, d)
}

fn same_bytes(store: &Store, d: &crate::Digest, src: &Path) {
    for path in ["big/a.bin", "big/b.bin", "small/f3"] {
        let got = file_bytes(store, d, path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(got == std::fs::read(src.join(path)).unwrap(), "{path}: wrong bytes");
    }
}

#[test]
fn a_remote_index_cannot_take_over_the_chunk_places_of_another_root() {
    let mem = Arc::new(MemoryStore::new());
    let (src, d) = good_and_evil(&mem);
    // The honest root first, then the hostile one: its places are added, never replace, and
    // a place that gives wrong bytes is dropped for the next.
    let b = host(&mem, None);
    assert_eq!(b.store.resolve("good").unwrap().tree, d);
    assert_eq!(b.store.resolve("evil").unwrap().tree, d);
    same_bytes(&b.store, &d, src.path());
    // The hostile root first: reads fail (never wrong bytes) until an honest root of the same
    // tree is looked up, whose index is then fetched although the tree is already here.
    let c = host(&mem, None);
    c.store.resolve("evil").unwrap();
    let e = file_bytes(&c.store, &d, "small/f3").unwrap_err();
    assert!(e.is_corruption(), "{e}");
    c.store.resolve("good").unwrap();
    same_bytes(&c.store, &d, src.path());
}

#[test]
fn a_push_never_names_chunk_places_it_has_not_checked() {
    let mem = Arc::new(MemoryStore::new());
    let (src, d) = good_and_evil(&mem);
    // A host that learnt only the hostile places, and holds the same data as its own build.
    let c = host(&mem, None);
    c.store.resolve("evil").unwrap();
    c.store.ingest(src.path(), Some("mine")).unwrap();
    c.store.push("mine", &|_, _| {}).unwrap();
    // A fresh host reading `mine` gets the right bytes: the push uploaded what it could not
    // vouch for instead of pointing at the hostile pack.
    let e = host(&mem, None);
    assert_eq!(e.store.resolve("mine").unwrap().tree, d);
    same_bytes(&e.store, &d, src.path());
}

// ----- trust: signed roots and results -----

use crate::remote::trust::{PublicKey, SecretKey, Trust};

fn key(name: &str) -> Arc<SecretKey> {
    Arc::new(SecretKey::generate(name).unwrap())
}

/// A host that signs with `signer` (if any) and trusts `trusted`.
fn trusting(mem: &Arc<MemoryStore>, signer: Option<&Arc<SecretKey>>, trusted: &[&Arc<SecretKey>]) -> Host {
    let dir = tempfile::tempdir().unwrap();
    let trust = Trust {
        signer: signer.cloned(),
        trusted: trusted.iter().map(|k| k.public()).collect::<Vec<PublicKey>>(),
        trust_unsigned: false,
    };
    let opts = Options { remote: Some(Backend::Object(mem.clone())), policy: policy(), trust, ..Default::default() };
    let store = Store::open_with(&dir.path().join("store"), opts).unwrap();
    Host { _dir: dir, store: Arc::new(store) }
}

/// A small tree whose content depends on `seed`.
fn small_tree(seed: u8) -> tempfile::TempDir {
    let src = tempfile::tempdir().unwrap();
    write(&src.path().join("f"), &[seed; 1000]);
    src
}

/// Publishes the tree of `seed` on `h` as the build result of `input` and pushes it.
fn publish(h: &Host, input: &crate::Digest, seed: u8) -> crate::Result<crate::remote::push::PushReport> {
    let src = small_tree(seed);
    h.store.publish_result(src.path(), input, b"recipe", &[]).unwrap();
    h.store.push(&input.to_hex(), &|_, _| {})
}

fn refused(r: crate::Result<Option<crate::Resolved>>, want: &str) {
    match r {
        Err(e @ crate::Error::Untrusted { .. }) => assert!(e.to_string().contains(want), "{e}"),
        other => panic!("expected a refusal ({want}), got {other:?}"),
    }
}

#[test]
fn a_root_object_copied_over_another_name_or_tree_is_refused() {
    let mem = Arc::new(MemoryStore::new());
    let k1 = key("builder-1");
    let a = trusting(&mem, Some(&k1), &[]);
    let (sa, sb) = (small_tree(1), small_tree(2));
    let ta = a.store.ingest(sa.path(), Some("A")).unwrap().root;
    let tb = a.store.ingest(sb.path(), Some("B")).unwrap().root;
    assert_eq!(a.store.push("A", &|_, _| {}).unwrap().signed_by.as_deref(), Some("builder-1"));
    a.store.push("B", &|_, _| {}).unwrap();
    let c = trusting(&mem, None, &[&k1]);
    assert_eq!(c.store.resolve_remote("A").unwrap().unwrap().tree, ta);
    assert_eq!(c.store.signer("A").unwrap().unwrap().key, "builder-1");
    // Whoever can write the bucket copies B's (validly signed) object over A's, and over the
    // object naming A's tree: a host that trusts builder-1 refuses both, and records nothing.
    let b_obj = mem.object(&format::root_key("B")).unwrap();
    mem.insert(&format::root_key("A"), b_obj.clone());
    mem.insert(&format::root_key(&ta.to_hex()), b_obj);
    let d = trusting(&mem, None, &[&k1]);
    refused(d.store.resolve_remote("A"), "no accepted signature for this name and tree (signed by builder-1)");
    refused(d.store.resolve_remote(&ta.to_hex()), &format!("a root named by tree {ta} names tree {tb}"));
    assert!(d.store.roots().unwrap().is_empty());
    // A host that configured no key at all takes what the bucket says (the README says so).
    assert_eq!(host(&mem, None).store.resolve_remote("A").unwrap().unwrap().tree, tb);
}

#[test]
fn a_planted_or_untrusted_result_is_not_taken_and_a_trusted_builder_replaces_it() {
    let mem = Arc::new(MemoryStore::new());
    let (k1, k3) = (key("builder-1"), key("pr-runner"));
    let input = crate::Digest([7; 32]);
    // Planted: an unsigned result object, then one signed by a key nobody trusts.
    let runner = trusting(&mem, Some(&k3), &[]);
    publish(&runner, &input, 66).unwrap();
    let c = trusting(&mem, None, &[&k1]);
    refused(c.store.resolve_remote(&input.to_hex()), "signed by pr-runner");
    let obj = format::RootObject::parse(&mem.object(&format::root_key(&input.to_hex())).unwrap()).unwrap();
    let unsigned = format::RootObject { sigs: Vec::new(), ..obj };
    mem.insert(&format::root_key(&input.to_hex()), unsigned.encode());
    refused(c.store.resolve_remote(&input.to_hex()), "not signed");
    // The trusted builder's own build replaces it (it trusts builder-1, not the runner).
    let a = trusting(&mem, Some(&k1), &[&k1]);
    let r = publish(&a, &input, 11).unwrap();
    let d = trusting(&mem, None, &[&k1]);
    assert_eq!(d.store.resolve_remote(&input.to_hex()).unwrap().unwrap().tree, r.tree);
}

#[test]
fn an_untrusted_runner_cannot_displace_a_trusted_result() {
    let mem = Arc::new(MemoryStore::new());
    let (k1, k3) = (key("builder-1"), key("pr-runner"));
    let input = crate::Digest([8; 32]);
    let a = trusting(&mem, Some(&k1), &[&k1]);
    let good = publish(&a, &input, 11).unwrap().tree;
    // A runner that trusts the fleet's keys, one with a key of its own and no trusted keys, and
    // one with neither: none replaces the trusted result with its different build.
    for runner in [trusting(&mem, None, &[&k1]), trusting(&mem, Some(&k3), &[]), host(&mem, None)] {
        let e = publish(&runner, &input, 66).unwrap_err();
        assert!(matches!(e, crate::Error::Kept { .. }) && e.to_string().contains("signed by builder-1"), "{e}");
    }
    let c = trusting(&mem, None, &[&k1]);
    assert_eq!(c.store.resolve_remote(&input.to_hex()).unwrap().unwrap().tree, good);
}

#[test]
fn two_builders_sign_one_root_and_keys_rotate() {
    let mem = Arc::new(MemoryStore::new());
    let (old, new, other) = (key("builder-2025"), key("builder-2026"), key("someone"));
    let src = small_tree(3);
    let a = trusting(&mem, Some(&old), &[&old, &new]);
    let t = a.store.ingest(src.path(), Some("app")).unwrap().root;
    a.store.push("app", &|_, _| {}).unwrap();
    a.store.ingest(small_tree(4).path(), Some("old-only")).unwrap();
    a.store.push("old-only", &|_, _| {}).unwrap();
    // The second builder (the new key) has the same tree: the object gains its signature and
    // keeps the first.
    let b = trusting(&mem, Some(&new), &[&old, &new]);
    b.store.ingest(src.path(), Some("app")).unwrap();
    let r = b.store.push("app", &|_, _| {}).unwrap();
    assert!(r.already && r.signed_by.as_deref() == Some("builder-2026"), "{r:?}");
    let obj = format::RootObject::parse(&mem.object(&format::root_key("app")).unwrap()).unwrap();
    assert_eq!(obj.sigs.iter().map(|s| s.key.as_str()).collect::<Vec<_>>(), ["builder-2025", "builder-2026"]);
    for trusted in [&old, &new] {
        let h = trusting(&mem, None, &[trusted]);
        assert_eq!(h.store.resolve_remote("app").unwrap().unwrap().tree, t);
    }
    refused(trusting(&mem, None, &[&other]).store.resolve_remote("app"), "signed by builder-2025, builder-2026");
    // Rotation: a host trusting both takes what only the old key signed; once the old key is
    // dropped, it refuses new lookups of it, and `verify` reports what it took before.
    let dir = tempfile::tempdir().unwrap();
    let open = |trusted: &[&Arc<SecretKey>]| {
        let trust =
            Trust { signer: None, trusted: trusted.iter().map(|k| k.public()).collect(), trust_unsigned: false };
        let opts =
            Options { remote: Some(Backend::Object(mem.clone())), policy: policy(), trust, ..Default::default() };
        Store::open_with(&dir.path().join("store"), opts).unwrap()
    };
    let h = open(&[&old, &new]);
    h.resolve_remote("old-only").unwrap().unwrap();
    h.resolve_remote("app").unwrap().unwrap();
    assert!(h.verify().unwrap().problems.is_empty());
    drop(h);
    let h = open(&[&new]);
    let problems = h.verify().unwrap().problems;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].root == "old-only" && problems[0].detail.contains("no trusted key (builder-2026)"));
    assert!(h.signer("app").unwrap().is_some_and(|s| s.key == "builder-2026"));
    drop(h);
    let fresh = trusting(&mem, None, &[&new]);
    refused(fresh.store.resolve_remote("old-only"), "signed by builder-2025");
}

#[test]
fn tampering_with_any_signed_field_is_refused() {
    let mem = Arc::new(MemoryStore::new());
    let k1 = key("builder-1");
    let a = trusting(&mem, Some(&k1), &[]);
    a.store.ingest(small_tree(5).path(), Some("app")).unwrap();
    a.store.push("app", &|_, _| {}).unwrap();
    let other = a.store.ingest(small_tree(6).path(), None).unwrap().root;
    let key_ = format::root_key("app");
    let good = String::from_utf8(mem.object(&key_).unwrap().to_vec()).unwrap();
    let sig_line = good.lines().find(|l| l.starts_with("sig ")).unwrap().to_string();
    let parts: Vec<&str> = sig_line.split(' ').collect();
    let mut flipped = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, parts[3]).unwrap();
    flipped[5] ^= 1;
    let flipped = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, flipped);
    let tree_line = good.lines().find(|l| l.starts_with("tree ")).unwrap().to_string();
    let cases = [
        ("tree", good.replace(&tree_line, &format!("tree {other}"))),
        ("kind", good.replace("kind root", "kind result")),
        ("time", good.replace(&format!(" {} ", parts[2]), &format!(" {} ", parts[2].parse::<u64>().unwrap() + 1))),
        ("key name", good.replace("sig builder-1 ", "sig builder-2 ")),
        ("signature", good.replace(parts[3], &flipped)),
    ];
    for (what, text) in cases {
        assert_ne!(text, good, "{what}: nothing changed");
        mem.insert(&key_, text.into_bytes());
        let c = trusting(&mem, None, &[&k1]);
        match c.store.resolve_remote("app") {
            Err(crate::Error::Untrusted { .. }) => {}
            other => panic!("{what} changed: {other:?}"),
        }
    }
    mem.insert(&key_, good.into_bytes());
    assert!(trusting(&mem, None, &[&k1]).store.resolve_remote("app").unwrap().is_some());
}

#[test]
fn an_untrusted_claim_does_not_hold_a_trusted_builder_off() {
    let mem = Arc::new(MemoryStore::new());
    let (k1, k3) = (key("builder-1"), key("pr-runner"));
    let runner = trusting(&mem, Some(&k3), &[]);
    assert!(runner.store.claim("x", "runner:1", false).unwrap());
    let a = trusting(&mem, Some(&k1), &[&k1]);
    assert!(!a.store.claim_info("x").unwrap().unwrap().trusted, "a claim no trusted key signed");
    assert!(a.store.claim("x", "builder:2", true).unwrap());
    let c = trusting(&mem, None, &[&k1]);
    let held = c.store.claim_info("x").unwrap().unwrap();
    assert!(held.trusted && held.owner == "builder:2", "{held:?}");
    // Without keys, every claim is honoured (as before signing existed).
    assert!(host(&mem, None).store.claim_info("x").unwrap().unwrap().trusted);
    assert!(host(&mem, None).store.claim("y", "plain:3", false).unwrap());
    assert!(!a.store.claim_info("y").unwrap().unwrap().trusted);
}

#[test]
fn a_demand_read_does_not_wait_behind_background_fetches() {
    let mem = Arc::new(MemoryStore::new());
    let (_src, d) = pushed(&mem);
    let latency = Duration::from_millis(200);
    mem.faults(|f| f.latency = latency);
    let h1 = host(&mem, None);
    let store = h1.store.clone();
    store.resolve(&d.to_hex()).unwrap();
    let rt = runtime();
    // Every background permit taken: readahead, neighbours and prefetch wait in line.
    let held = rt.block_on(store.read.background.clone().acquire_many_owned(lazy::BACKGROUND_GETS as u32)).unwrap();
    let f = record(&store, &d, "big/b.bin").unwrap();
    let t = Instant::now();
    let got = rt.block_on(store.read_async(f.clone(), 5 << 20, 4096)).unwrap();
    assert!(got[..] == pseudo_random(9 << 20, 2)[5 << 20..(5 << 20) + 4096]);
    assert!(t.elapsed() < latency * 2, "a demand read took {:?} behind a full background queue", t.elapsed());
    // Its readahead went in line: released, it lands and is read from memory.
    let gets = store.remote().unwrap().traffic().gets;
    drop(held);
    rt.block_on(store.read_async(f.clone(), (6 << 20) + 100, 4096)).unwrap();
    std::thread::sleep(latency * 2);
    assert!(store.remote().unwrap().traffic().gets > gets);
}

#[test]
fn a_small_root_is_fetched_whole_in_the_background_on_first_lookup() {
    let mem = Arc::new(MemoryStore::new());
    let (src, d) = pushed(&mem);
    let rt = runtime();
    let h2 = host(&mem, None);
    let store = h2.store.clone();
    rt.block_on(store.clone().resolve_remote_async(d.to_hex())).unwrap().unwrap();
    let t = Instant::now();
    while store.cache_stats().fetched_bytes < 21 << 20 {
        assert!(t.elapsed() < Duration::from_secs(10), "prefetch stalled: {:?}", store.cache_stats());
        std::thread::sleep(Duration::from_millis(20));
    }
    let prefetch = store.cache_stats().prefetch_gets;
    assert!((1..=10).contains(&prefetch), "{prefetch} GETs for 21 MiB in 32 MiB packs");
    // All here: S3 gone, every file reads.
    mem.faults(|f| f.outage = true);
    same_bytes(&store, &d, src.path());
    // Larger than half the cache budget: not prefetched.
    mem.faults(|f| f.outage = false);
    let h3 = host(&mem, Some(16 << 20));
    let small = h3.store.clone();
    rt.block_on(small.clone().resolve_remote_async(d.to_hex())).unwrap().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(small.cache_stats().fetched_bytes, 0);
}

#[test]
fn a_forged_neighbour_is_never_kept_or_served() {
    let mem = Arc::new(MemoryStore::new());
    let (src, d) = pushed(&mem);
    mem.faults(|f| f.latency = Duration::from_millis(5));
    let b = host(&mem, None);
    b.store.resolve(&d.to_hex()).unwrap();
    // Damage small/f5's bytes in its S3 pack: it is a neighbour of f3.
    let id = record(&b.store, &d, "small/f5").unwrap().chunks[0].id;
    damage_in_s3(&mem, &b.store, &id);
    assert_eq!(file_bytes(&b.store, &d, "small/f3").unwrap(), std::fs::read(src.path().join("small/f3")).unwrap());
    let gets = b.store.remote().unwrap().traffic().gets;
    // Its neighbours came along, but not f5: it fails on its own GET, never with wrong bytes.
    assert_eq!(file_bytes(&b.store, &d, "small/f6").unwrap(), std::fs::read(src.path().join("small/f6")).unwrap());
    assert_eq!(b.store.remote().unwrap().traffic().gets, gets);
    let e = file_bytes(&b.store, &d, "small/f5").unwrap_err();
    assert!(matches!(e, crate::Error::Corrupt { what: "chunk", .. }), "{e}");
}

#[test]
fn small_files_read_one_by_one_on_the_async_path_cost_a_few_gets() {
    let mem = Arc::new(MemoryStore::new());
    let (src, d) = pushed(&mem);
    mem.faults(|f| f.latency = Duration::from_millis(20));
    let h4 = host(&mem, None);
    let store = h4.store.clone();
    store.resolve(&d.to_hex()).unwrap();
    let rt = runtime();
    let g0 = store.remote().unwrap().traffic().gets;
    // As a program reads them: one after another, each as soon as the last is read (the
    // neighbours of the first may still be in flight: the next read waits for them).
    for i in 0..30 {
        let p = format!("small/f{i}");
        let f = record(&store, &d, &p).unwrap();
        let got = rt.block_on(store.read_async(f.clone(), 0, f.size as usize)).unwrap();
        assert!(got[..] == std::fs::read(src.path().join(&p)).unwrap()[..], "{p}");
    }
    let gets = store.remote().unwrap().traffic().gets - g0;
    assert!(gets <= 4, "{gets} GETs for 30 small files");
}

#[test]
fn a_large_file_read_in_many_places_is_fetched_whole_in_the_background() {
    let mem = Arc::new(MemoryStore::new());
    let (_src, d) = pushed(&mem);
    mem.faults(|f| f.latency = Duration::from_millis(5));
    let h5 = host(&mem, None);
    let store = h5.store.clone();
    store.resolve(&d.to_hex()).unwrap();
    let rt = runtime();
    let f = record(&store, &d, "big/a.bin").unwrap();
    let want = pseudo_random(12 << 20, 1);
    // Three reads far apart, as a loader faulting through a library: the third has the rest of
    // the file come in the background.
    for off in [11 << 20, 0, 6 << 20] {
        let got = rt.block_on(store.read_async(f.clone(), off, 100)).unwrap();
        assert!(got[..] == want[off as usize..off as usize + 100]);
    }
    assert_eq!(store.read.whole_files.load(std::sync::atomic::Ordering::Relaxed), 1);
    let t = Instant::now();
    while store.cache_stats().fetched_bytes < 12 << 20 {
        assert!(t.elapsed() < Duration::from_secs(10), "the rest never came: {:?}", store.cache_stats());
        std::thread::sleep(Duration::from_millis(20));
    }
    mem.faults(|f| f.outage = true);
    let all = rt.block_on(store.read_async(f.clone(), 0, 12 << 20)).unwrap();
    assert!(all[..] == want[..]);
}

#[test]
fn an_index_is_fetched_in_parallel_ranges_and_a_wrong_size_only_costs_a_get() {
    let src = tempfile::tempdir().unwrap();
    for i in 0..40_000 {
        write(&src.path().join(format!("d{}/f{i}", i % 50)), format!("{i}").as_bytes());
    }
    let mem = Arc::new(MemoryStore::new());
    let a = host(&mem, None);
    let d = a.store.ingest(src.path(), None).unwrap().root;
    a.store.push(&d.to_hex(), &|_, _| {}).unwrap();
    let key = format::root_key(&d.to_hex());
    let obj = format::RootObject::parse(&mem.object(&key).unwrap()).unwrap();
    let size = obj.index_size.expect("a push writes the index's size");
    assert!(size > 2 << 20, "{size}: too small an index to be fetched in ranges");
    let rt = runtime();
    let ranges = size.div_ceil(1 << 20).min(8);
    for claimed in [size, size - 1, size + 1] {
        mem.insert(&key, format::RootObject { index_size: Some(claimed), ..obj.clone() }.encode());
        let b = host_with(&mem, |o| o.prefetch_below = 0);
        let g0 = b.store.remote().unwrap().traffic().gets;
        rt.block_on(b.store.clone().resolve_remote_async(d.to_hex())).unwrap().unwrap();
        // The root object, then the index in ranges, and (the size wrong: the bytes do not
        // match, or the last range runs past the end and fails) once more whole.
        let got = b.store.remote().unwrap().traffic().gets - g0;
        match claimed == size {
            true => assert_eq!(got, 1 + ranges),
            false => assert!((ranges + 1..=ranges + 2).contains(&got), "claimed {claimed} of {size}: {got} GETs"),
        }
        assert_eq!(file_bytes(&b.store, &d, "d7/f7").unwrap(), b"7");
    }
}

#[test]
fn bytes_fetched_unasked_and_kept_unchecked_are_never_served_wrong() {
    let want = pseudo_random(32 << 20, 3);
    let mem = Arc::new(MemoryStore::new());
    let (d, h) = pushed_files(&mem, &[("big/c.bin", &want)]);
    let store = h.store.clone();
    let rt = runtime();
    let f = record(&store, &d, "big/c.bin").unwrap();
    // Damage the chunk at 10 MiB in its S3 pack: only the rest of the file brings it.
    let bad = f.chunk_at(10 << 20);
    damage_in_s3(&mem, &store, &f.chunks[bad].id);
    for off in [31 << 20, 0, 20 << 20] {
        let got = rt.block_on(store.read_async(f.clone(), off, 100)).unwrap();
        assert!(got[..] == want[off as usize..off as usize + 100]);
    }
    let t = Instant::now();
    while store.cache_stats().fetched_bytes < (32 << 20) - u64::from(f.chunks[bad].len) || !store.settle(Duration::ZERO)
    {
        assert!(t.elapsed() < Duration::from_secs(10), "the rest never came: {:?}", store.cache_stats());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Kept as S3 sent them, not decoded (in memory: only the windows of the three reads) ...
    assert!(store.cache_stats().chunk_cache_bytes < 16 << 20, "{:?}", store.cache_stats());
    // ... and checked when read: the damaged chunk fails by name, the others read right.
    let at = f.chunks[bad].offset;
    let e = rt.block_on(store.read_async(f.clone(), at, 10)).unwrap_err();
    assert!(matches!(e, crate::Error::Corrupt { what: "chunk", .. }), "{e}");
    let e = store.read(&f, at, 10).unwrap_err();
    assert!(matches!(e, crate::Error::Corrupt { what: "chunk", .. }), "{e}");
    mem.faults(|f| f.outage = true);
    for i in (0..f.chunks.len()).filter(|i| *i != bad) {
        let (o, n) = (f.chunks[i].offset as usize, f.chunks[i].len as usize);
        let got = rt.block_on(store.read_async(f.clone(), o as u64, n)).unwrap();
        assert!(got[..] == want[o..o + n], "chunk {i}");
    }
}

#[test]
fn a_loader_opening_a_large_library_has_what_it_reads_fetched_at_once() {
    // A 24 MiB shared object: read-only code and tables at the start, the tables named by
    // .dynamic at 1 MiB, a writable segment (with .dynamic) at 20 MiB, symbols past 22 MiB.
    let mb = 1u64 << 20;
    let mut so = pseudo_random(24 << 20, 7);
    let phdrs: [(u32, u32, u64, u64, u64); 3] =
        [(1, 5, 0, 0, 20 * mb), (1, 6, 20 * mb, 20 * mb + 0x1000, mb), (2, 6, 20 * mb + 64, 20 * mb + 0x1040, 64)];
    let mut head = vec![0u8; 64];
    head[..6].copy_from_slice(b"\x7fELF\x02\x01");
    head[16..18].copy_from_slice(&3u16.to_le_bytes());
    head[32..40].copy_from_slice(&64u64.to_le_bytes());
    head[54..56].copy_from_slice(&56u16.to_le_bytes());
    head[56..58].copy_from_slice(&3u16.to_le_bytes());
    for (kind, flags, off, vaddr, len) in phdrs {
        for v in [u64::from(kind) | u64::from(flags) << 32, off, vaddr, vaddr, len, len, 8] {
            head.extend_from_slice(&v.to_le_bytes());
        }
    }
    so[..head.len()].copy_from_slice(&head);
    let mut dynamic = Vec::new();
    for (t, v) in [(6i64, mb), (5, 2 * mb), (10, 4096), (0, 0)] {
        dynamic.extend_from_slice(&t.to_le_bytes());
        dynamic.extend_from_slice(&v.to_le_bytes());
    }
    let at = (20 * mb + 64) as usize;
    so[at..at + dynamic.len()].copy_from_slice(&dynamic);
    let mem = Arc::new(MemoryStore::new());
    let (d, b) = pushed_files(&mem, &[("lib/libbig.so", &so)]);
    let store = b.store.clone();
    let rt = runtime();
    let f = record(&store, &d, "lib/libbig.so").unwrap();
    // The loader reads the header: the rest of what it reads follows at once.
    let got = rt.block_on(store.read_async(f.clone(), 0, 832)).unwrap();
    assert!(got[..] == so[..832]);
    let unbounded = loader_fetched(&store);
    // The tables, the writable segment and the mapped code are here: S3 gone, they read; what
    // no segment maps (the symbols past 22 MiB) is not.
    mem.faults(|f| f.outage = true);
    for off in [mb, 2 * mb, 10 * mb, 20 * mb + 64, 20 * mb + mb / 2] {
        let got = rt.block_on(store.read_async(f.clone(), off, 100)).unwrap();
        assert!(got[..] == so[off as usize..off as usize + 100], "at {off}");
    }
    assert!(rt.block_on(store.read_async(f.clone(), 23 * mb, 100)).is_err());
    assert!(unbounded > 3 * (4 << 20), "{unbounded}");
    // Under a cache budget, each of its steps asks for at most a quarter of it.
    mem.faults(|f| f.outage = false);
    let c = host_with(&mem, |o| (o.prefetch_below, o.cache_bytes) = (0, Some(16 << 20)));
    c.store.resolve(&d.to_hex()).unwrap();
    let f = record(&c.store, &d, "lib/libbig.so").unwrap();
    rt.block_on(c.store.read_async(f.clone(), 0, 832)).unwrap();
    let bounded = loader_fetched(&c.store);
    assert!(bounded <= 3 * (4 << 20), "{bounded} bytes under a 16 MiB budget");
}

#[test]
fn over_a_near_link_a_read_fetches_only_what_it_reads() {
    let mem = Arc::new(MemoryStore::new());
    let (src, d) = pushed(&mem);
    let b = host(&mem, None);
    b.store.resolve(&d.to_hex()).unwrap();
    // The first read does not know the link yet (it reads neighbours); once a GET has been
    // timed fast, reads take only their own chunks.
    file_bytes(&b.store, &d, "small/f3").unwrap();
    let t0 = b.store.remote().unwrap().traffic();
    assert!(b.store.remote().unwrap().round_trip().unwrap() < Duration::from_millis(4));
    let f = record(&b.store, &d, "big/b.bin").unwrap();
    for off in [8 << 20, 0, 4 << 20, 2 << 20] {
        b.store.read(&f, off, 10).unwrap();
    }
    let t1 = b.store.remote().unwrap().traffic();
    // Windows only: neither the rest of the file nor neighbours.
    assert!(t1.get_bytes - t0.get_bytes <= 4 * lazy::WINDOW_MIN + (4 << 20), "{t1:?}");
    assert_eq!(b.store.read.whole_files.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(file_bytes(&b.store, &d, "small/f29").unwrap(), std::fs::read(src.path().join("small/f29")).unwrap());
}

/// A host that takes no small root whole (so that what a profile brings is all it fetches).
fn profiled_host(mem: &Arc<MemoryStore>, cache: Option<u64>, trust: crate::remote::trust::Trust) -> Host {
    host_with(mem, |o| (o.cache_bytes, o.prefetch_below, o.trust) = (cache, 0, trust))
}

/// Reads `paths` of root `d` on `store` as the mount does (recording them), and pushes the
/// profile; returns the chunks it holds.
fn read_and_push_profile(store: &Store, d: &crate::Digest, paths: &[&str]) -> Vec<crate::Digest> {
    for p in paths {
        let f = record(store, d, p).unwrap();
        store.touched(d, &f, 0, f.size as usize);
        store.read(&f, 0, f.size as usize).unwrap();
    }
    let r = store.push_profile(&d.to_hex()).unwrap();
    assert!(r.written > 0 && r.written == r.recorded + r.there, "{r:?}");
    store.recorded(d)
}

/// Waits until `store` fetched at least `bytes`, or fails naming what it did fetch.
fn wait_fetched(store: &Store, bytes: u64) {
    let t = Instant::now();
    while store.cache_stats().fetched_bytes < bytes {
        assert!(t.elapsed() < Duration::from_secs(10), "prefetch stalled: {:?}", store.cache_stats());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_second_host_prefetches_what_the_first_read_hottest_first_and_nothing_else() {
    let mem = Arc::new(MemoryStore::new());
    let (src, d) = pushed(&mem);
    let a = profiled_host(&mem, None, Default::default());
    a.store.resolve(&d.to_hex()).unwrap();
    let hot = ["small/f7", "big/b.bin", "small/f2"];
    let recorded = read_and_push_profile(&a.store, &d, &hot);
    let b_bin = record(&a.store, &d, "big/b.bin").unwrap();
    assert_eq!(recorded.len(), 2 + b_bin.chunks.len(), "first-touch order, each chunk once");
    assert_eq!(recorded[0], record(&a.store, &d, "small/f7").unwrap().chunks[0].id);
    // A second reader on the first host adds to the profile; S3's keeps its order.
    let f9 = record(&a.store, &d, "small/f9").unwrap();
    a.store.touched(&d, &f9, 0, 10);
    let r = a.store.push_profile(&d.to_hex()).unwrap();
    assert_eq!((r.there, r.written), (recorded.len(), recorded.len() + 1));
    let p = super::profile::Profile::parse(&mem.object(&super::profile::profile_key(&d)).unwrap()).unwrap();
    assert_eq!(p.chunks[..recorded.len()], recorded[..]);
    assert_eq!(a.store.push_profile(&d.to_hex()).unwrap().written, 0, "nothing new: nothing written");

    // The second host: the lookup brings the profile, which brings the hot chunks, at once.
    mem.faults(|f| f.latency = Duration::from_millis(5));
    let rt = runtime();
    let h = profiled_host(&mem, None, Default::default());
    let store = h.store.clone();
    rt.block_on(store.clone().resolve_remote_async(d.to_hex())).unwrap().unwrap();
    let hot_bytes: u64 =
        hot.iter().chain(["small/f9"].iter()).map(|p| std::fs::metadata(src.path().join(p)).unwrap().len()).sum();
    wait_fetched(&store, hot_bytes);
    assert!(store.settle(Duration::from_secs(10)));
    let s = store.profile_stats();
    assert_eq!(s.profiles_used, 1);
    assert!((1..=6).contains(&s.prefetch_gets), "{s:?}: coalesced GETs");
    // Only what the profile names (and the gaps of its GETs): not the 12 MiB file.
    assert!(store.cache_stats().fetched_bytes < 10 << 20, "{:?}", store.cache_stats());
    mem.faults(|f| f.outage = true);
    for p in hot.iter().chain(["small/f9"].iter()) {
        assert_eq!(file_bytes(&store, &d, p).unwrap(), std::fs::read(src.path().join(p)).unwrap(), "{p}");
    }
    assert!(file_bytes(&store, &d, "big/a.bin").is_err(), "not in the profile, not here");
}

#[test]
fn a_profile_from_an_older_artifact_version_or_an_untrusted_key_is_ignored() {
    let mem = Arc::new(MemoryStore::new());
    let (_src, d) = pushed(&mem);
    // An older version of the artifact: another tree, its own profile.
    let old_src = small_tree(3);
    let a = profiled_host(&mem, None, Default::default());
    let old = a.store.ingest(old_src.path(), None).unwrap().root;
    a.store.push(&old.to_hex(), &|_, _| {}).unwrap();
    let f = record(&a.store, &old, "f").unwrap();
    a.store.touched(&old, &f, 0, 1);
    a.store.push_profile(&old.to_hex()).unwrap();
    // Copied over the new version's key: it names the old tree, and is ignored.
    let old_profile = mem.object(&super::profile::profile_key(&old)).unwrap();
    mem.insert(&super::profile::profile_key(&d), old_profile.to_vec());
    let rt = runtime();
    let h = profiled_host(&mem, None, Default::default());
    rt.block_on(h.store.clone().resolve_remote_async(d.to_hex())).unwrap().unwrap();
    assert!(h.store.settle(Duration::from_secs(10)));
    assert_eq!(h.store.profile_stats().profiles_used, 0);
    assert_eq!(h.store.cache_stats().fetched_bytes, 0);

    // A profile of the right tree signed by a key this host does not trust: ignored when
    // signatures are required; a trusted one is used. The root is the builder's.
    let (mallory, builder) = (key("mallory"), key("builder-1"));
    let mut root = format::RootObject::parse(&mem.object(&format::root_key(&d.to_hex())).unwrap()).unwrap();
    root.sign(&d.to_hex(), &builder);
    mem.insert(&format::root_key(&d.to_hex()), root.encode());
    let evil = trusting(&mem, Some(&mallory), &[&builder]);
    evil.store.resolve(&d.to_hex()).unwrap();
    let f3 = record(&evil.store, &d, "small/f3").unwrap();
    evil.store.touched(&d, &f3, 0, 1);
    evil.store.push_profile(&d.to_hex()).unwrap();
    let t = crate::remote::trust::Trust { trusted: vec![builder.public()], ..Default::default() };
    let h2 = profiled_host(&mem, None, t.clone());
    rt.block_on(h2.store.clone().resolve_remote_async(d.to_hex())).unwrap().unwrap();
    assert!(h2.store.settle(Duration::from_secs(10)));
    assert_eq!(h2.store.profile_stats().profiles_used, 0, "mallory's profile is not used");
    let signed = trusting(&mem, Some(&builder), &[]);
    signed.store.resolve(&d.to_hex()).unwrap();
    let f4 = record(&signed.store, &d, "small/f4").unwrap();
    signed.store.touched(&d, &f4, 0, 1);
    assert_eq!(signed.store.push_profile(&d.to_hex()).unwrap().there, 0, "mallory's is replaced, not merged");
    let h3 = profiled_host(&mem, None, t);
    rt.block_on(h3.store.clone().resolve_remote_async(d.to_hex())).unwrap().unwrap();
    assert!(h3.store.settle(Duration::from_secs(10)));
    assert_eq!(h3.store.profile_stats().profiles_used, 1);
}

#[test]
fn readahead_and_prefetch_respect_the_cache_budget() {
    let mem = Arc::new(MemoryStore::new());
    let (_src, d) = pushed(&mem);
    let a = profiled_host(&mem, None, Default::default());
    a.store.resolve(&d.to_hex()).unwrap();
    read_and_push_profile(&a.store, &d, &["big/a.bin", "big/b.bin"]);
    // A budget of 8 MiB: prefetch takes at most half of it, readahead an eighth (1 MiB).
    let rt = runtime();
    let h = profiled_host(&mem, Some(8 << 20), Default::default());
    let store = h.store.clone();
    rt.block_on(store.clone().resolve_remote_async(d.to_hex())).unwrap().unwrap();
    assert!(store.settle(Duration::from_secs(10)));
    let s = store.profile_stats();
    assert!(s.prefetch_gets > 0 && s.prefetch_bytes <= 4 << 20, "{s:?}");
    assert!(store.cache_stats().fetched_bytes <= 4 << 20, "{:?}", store.cache_stats());
    let before = store.remote().unwrap().traffic().get_bytes;
    let f = record(&store, &d, "big/b.bin").unwrap();
    store.read(&f, 0, 1).unwrap();
    assert!(store.settle(Duration::from_secs(10)));
    let got = store.remote().unwrap().traffic().get_bytes - before;
    // A window of 1 MiB: the chunk read and the ones that start within a MiB of it; 4 MiB (the
    // first window without a budget) or more otherwise.
    let largest = f.chunks.iter().map(|c| u64::from(c.len)).max().unwrap();
    assert!(got <= (1 << 20) + largest + 4096 && got < 4 << 20, "{got} bytes for one read with an 8 MiB budget");
}

#[test]
fn a_demand_read_under_a_full_prefetch_queue_completes_within_one_request() {
    let mem = Arc::new(MemoryStore::new());
    let (src, d) = pushed(&mem);
    let a = profiled_host(&mem, None, Default::default());
    a.store.resolve(&d.to_hex()).unwrap();
    let mut all: Vec<String> = (0..30).map(|i| format!("small/f{i}")).collect();
    all.extend(["big/a.bin".into(), "big/b.bin".into()]);
    read_and_push_profile(&a.store, &d, &all.iter().map(String::as_str).collect::<Vec<_>>());
    let latency = Duration::from_millis(200);
    mem.faults(|f| f.latency = latency);
    let rt = runtime();
    let h = profiled_host(&mem, None, Default::default());
    let store = h.store.clone();
    // Every prefetch permit taken: the whole profile waits in line.
    let held = rt.block_on(store.read.prefetch.clone().acquire_many_owned(lazy::PREFETCH_GETS as u32)).unwrap();
    rt.block_on(store.clone().resolve_remote_async(d.to_hex())).unwrap().unwrap();
    let t = Instant::now();
    while store.profile_stats().prefetch_gets == 0 {
        assert!(t.elapsed() < latency * 5, "no prefetch planned");
        std::thread::sleep(Duration::from_millis(5));
    }
    // A chunk in line: its piece is sent at once for the reader.
    let f = record(&store, &d, "big/a.bin").unwrap();
    let t = Instant::now();
    let got = rt.block_on(store.read_async(f.clone(), 7 << 20, 4096)).unwrap();
    assert!(got[..] == pseudo_random(12 << 20, 1)[7 << 20..(7 << 20) + 4096]);
    assert!(t.elapsed() < latency * 2, "a demand read took {:?} behind a full prefetch queue", t.elapsed());
    let t = Instant::now();
    assert_eq!(file_bytes(&store, &d, "small/f11").unwrap(), std::fs::read(src.path().join("small/f11")).unwrap());
    assert!(t.elapsed() < latency * 2, "a blocking read took {:?} behind a full prefetch queue", t.elapsed());
    drop(held);
    assert!(store.settle(Duration::from_secs(20)));
    assert!(store.cache_stats().fetched_bytes >= 21 << 20, "the rest of the profile landed");
}

#[test]
fn prefetch_stops_on_s3_outage_and_on_close_with_no_task_left() {
    let mem = Arc::new(MemoryStore::new());
    let (_src, d) = pushed(&mem);
    let a = profiled_host(&mem, None, Default::default());
    a.store.resolve(&d.to_hex()).unwrap();
    // Every other chunk of the large files: one piece each (gaps too wide to read over).
    let mut n = 0;
    for p in ["big/a.bin", "big/b.bin"] {
        let f = record(&a.store, &d, p).unwrap();
        for c in f.chunks.iter().step_by(2) {
            a.store.touched(&d, &f, c.offset, 1);
            n += 1;
        }
    }
    a.store.push_profile(&d.to_hex()).unwrap();
    let rt = runtime();
    for outage in [true, false] {
        let h = profiled_host(&mem, None, Default::default());
        let store = h.store.clone();
        // Every permit taken: the whole profile waits in line.
        let mut held = rt.block_on(store.read.prefetch.clone().acquire_many_owned(lazy::PREFETCH_GETS as u32)).unwrap();
        rt.block_on(store.clone().resolve_remote_async(d.to_hex())).unwrap().unwrap();
        let t = Instant::now();
        while store.profile_stats().prefetch_gets == 0 {
            assert!(t.elapsed() < Duration::from_secs(5), "no prefetch planned");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(store.profile_stats().prefetch_gets >= n as u64 - 1, "{:?}", store.profile_stats());
        let gets = mem.gets.load(std::sync::atomic::Ordering::Relaxed);
        let t = Instant::now();
        if outage {
            // One permit free: the pieces go one at a time, into an outage.
            mem.faults(|f| f.outage = true);
            drop(held.split(1));
        } else {
            store.stop_background();
        }
        assert!(
            store.settle(Duration::from_secs(5)),
            "prefetch tasks left after {}",
            ["close", "an outage"][outage as usize]
        );
        assert!(t.elapsed() < Duration::from_secs(3), "{:?} to stop", t.elapsed());
        let errors = store.remote().unwrap().traffic().errors;
        assert!(errors <= 2, "{errors} failed GETs: the prefetch went on after S3 failed");
        assert_eq!(mem.gets.load(std::sync::atomic::Ordering::Relaxed), gets, "nothing was fetched");
        mem.faults(|f| f.outage = false);
        drop(held);
    }
}

#[test]
fn fill_fetches_the_rest_of_a_root_in_the_background_within_half_the_budget() {
    let mem = Arc::new(MemoryStore::new());
    let (src, d) = pushed(&mem);
    let rt = runtime();
    let filling =
        |cache: Option<u64>| host_with(&mem, |o| (o.cache_bytes, o.prefetch_below, o.fill) = (cache, 0, true));
    let h = filling(None);
    rt.block_on(h.store.clone().resolve_remote_async(d.to_hex())).unwrap().unwrap();
    assert!(h.store.settle(Duration::from_secs(20)));
    let gets = h.store.remote().unwrap().traffic().gets;
    assert!(gets <= 2 + 12, "{gets} GETs to fill 21 MiB in 32 MiB packs");
    mem.faults(|f| f.outage = true);
    same_bytes(&h.store, &d, src.path());
    mem.faults(|f| f.outage = false);
    // A budget of 16 MiB: the fill stops at 8.
    let small = filling(Some(16 << 20));
    rt.block_on(small.store.clone().resolve_remote_async(d.to_hex())).unwrap().unwrap();
    assert!(small.store.settle(Duration::from_secs(20)));
    let fetched = small.store.cache_stats().fetched_bytes;
    assert!(fetched > 0 && fetched <= 8 << 20, "{fetched} bytes filled with a 16 MiB budget");
    // Closing the store stops it after the GETs in the air.
    mem.faults(|f| f.latency = Duration::from_millis(100));
    let closing = filling(None);
    rt.block_on(closing.store.clone().resolve_remote_async(d.to_hex())).unwrap().unwrap();
    std::thread::sleep(Duration::from_millis(150));
    closing.store.stop_background();
    let t = Instant::now();
    assert!(closing.store.settle(Duration::from_secs(5)));
    assert!(t.elapsed() < Duration::from_millis(500), "{:?} to stop a fill", t.elapsed());
    assert!(closing.store.cache_stats().fetched_bytes < 21 << 20, "the fill went on after the close");
}

#[test]
fn a_profile_that_lands_after_the_index_is_still_used() {
    let mem = Arc::new(MemoryStore::new());
    let (src, d) = pushed(&mem);
    let a = profiled_host(&mem, None, Default::default());
    a.store.resolve(&d.to_hex()).unwrap();
    let hot = read_and_push_profile(&a.store, &d, &["big/b.bin"]);
    // The same profile padded with ids of no chunk to 1.9 MB: at 8 MB/s its GET takes about
    // 250 ms, the index's a few.
    let mut chunks = hot.clone();
    chunks.extend((0..60_000u32).map(|i| crate::Digest(*blake3::hash(&i.to_le_bytes()).as_bytes())));
    mem.insert(&super::profile::profile_key(&d), super::profile::Profile::new(d, chunks).encode());
    mem.faults(|f| f.bandwidth = Some(8 << 20));
    let rt = runtime();
    let h = profiled_host(&mem, None, Default::default());
    let t = Instant::now();
    rt.block_on(h.store.clone().resolve_remote_async(d.to_hex())).unwrap().unwrap();
    assert!(t.elapsed() < Duration::from_millis(200), "the lookup waited {:?} for the profile", t.elapsed());
    wait_fetched(&h.store, 9 << 20);
    assert_eq!(h.store.profile_stats().profiles_used, 1);
    mem.faults(|f| f.outage = true);
    assert_eq!(file_bytes(&h.store, &d, "big/b.bin").unwrap(), std::fs::read(src.path().join("big/b.bin")).unwrap());
}

/// Reads the chunks of `path` that cover `range` as the mount does (recording them).
fn touch(store: &Store, d: &crate::Digest, path: &str, range: std::ops::Range<u64>) -> Vec<u8> {
    let f = record(store, d, path).unwrap();
    let len = (range.end.min(f.size) - range.start) as usize;
    store.touched(d, &f, range.start, len);
    store.read(&f, range.start, len).unwrap().to_vec()
}

#[test]
fn a_repacked_root_reaches_a_second_host_in_fewer_gets_with_the_same_bytes_and_signatures() {
    let mem = Arc::new(MemoryStore::new());
    let (src, d) = pushed(&mem);
    let name = d.to_hex();
    // The root carries another builder's signature, which a repack must keep.
    let (builder, repacker) = (key("builder-1"), key("repacker"));
    let mut root = format::RootObject::parse(&mem.object(&format::root_key(&name)).unwrap()).unwrap();
    root.sign(&name, &builder);
    mem.insert(&format::root_key(&name), root.encode());
    // A host that applied the old index before the repack.
    let old = host(&mem, None);
    old.store.resolve(&name).unwrap();

    // Scattered reads: the ends of both big files, their middles, small files far apart.
    let a = trusting(&mem, Some(&repacker), &[&builder]);
    a.store.resolve(&name).unwrap();
    let hot: [(&str, std::ops::Range<u64>); 6] = [
        ("small/f29", 0..1 << 20),
        ("big/a.bin", 6 << 20..(6 << 20) + 1),
        ("small/f1", 0..1 << 20),
        ("big/b.bin", (9 << 20) - 1..9 << 20),
        ("big/a.bin", 0..1),
        ("small/f15", 0..1 << 20),
    ];
    for (p, r) in &hot {
        touch(&a.store, &d, p, r.clone());
    }
    a.store.push_profile(&name).unwrap();

    // Before: one host prefetches the hot set as it lies after the push.
    mem.faults(|f| f.latency = Duration::from_millis(5));
    let rt = runtime();
    let gets_for = |trust: crate::remote::trust::Trust| {
        let h = profiled_host(&mem, None, trust);
        rt.block_on(h.store.clone().resolve_remote_async(name.clone())).unwrap().unwrap();
        assert!(h.store.settle(Duration::from_secs(10)));
        (h.store.profile_stats().prefetch_gets, h)
    };
    let (before, _) = gets_for(Default::default());

    let r = a.store.repack(&name, &|_, _| {}).unwrap();
    assert!(!r.already && r.hot_chunks >= 6 && r.runs_before >= 3 && r.runs_after == 1, "{r:?}");
    assert!(r.uploaded_bytes >= r.hot_bytes, "{r:?}");
    let again = a.store.repack(&name, &|_, _| {}).unwrap();
    assert!(again.already && again.index == r.index, "{again:?}");
    // The root object names the new index and keeps both signatures, which still verify.
    let obj = format::RootObject::parse(&mem.object(&format::root_key(&name)).unwrap()).unwrap();
    assert_eq!((obj.tree, obj.index), (d, r.index));
    for k in [&builder, &repacker] {
        let s = obj.sigs.iter().find(|s| s.key == k.name).unwrap_or_else(|| panic!("{} lost", k.name));
        assert!(k.public().verifies(&obj.statement(&name, &s.key, s.time), s), "{}", k.name);
    }

    // After: a host that requires signatures takes the repacked root, and its prefetch is
    // fewer GETs, of the hot chunks only.
    let t = crate::remote::trust::Trust { trusted: vec![builder.public(), repacker.public()], ..Default::default() };
    let (after, h) = gets_for(t);
    assert!(after < before && after <= 2, "prefetch GETs: {before} before the repack, {after} after");
    mem.faults(|f| f.outage = true);
    for (p, r) in &hot {
        let want = std::fs::read(src.path().join(p)).unwrap();
        let r = r.start as usize..(r.end as usize).min(want.len());
        assert_eq!(touch(&h.store, &d, p, r.start as u64..r.end as u64), want[r.clone()], "{p} {r:?}");
    }
    assert!(file_bytes(&h.store, &d, "small/f20").is_err(), "a cold file was not prefetched");
    mem.faults(|f| f.outage = false);
    std::thread::sleep(policy().down_for);
    // Cold chunks keep their places, and a host with the old index reads on from the old packs.
    for s in [&h.store, &old.store] {
        for p in ["small/f20", "big/a.bin", "big/b.bin"] {
            assert_eq!(file_bytes(s, &d, p).unwrap(), std::fs::read(src.path().join(p)).unwrap(), "{p}");
        }
    }
}

#[test]
fn repack_names_what_it_lacks() {
    let mem = Arc::new(MemoryStore::new());
    let (_src, d) = pushed(&mem);
    let a = host(&mem, None);
    let e = a.store.repack(&d.to_hex(), &|_, _| {}).unwrap_err().to_string();
    assert!(e.contains("no profile of tree") && e.contains(&d.to_hex()), "{e}");
    let local = a.store.ingest(small_tree(4).path(), None).unwrap().root;
    let e = a.store.repack(&local.to_hex(), &|_, _| {}).unwrap_err().to_string();
    assert!(e.contains("S3 has no root object"), "{e}");
}

#[test]
fn a_repack_that_fails_leaves_the_root_as_it_was_and_one_that_fetches_what_it_lacks_succeeds() {
    let mem = Arc::new(MemoryStore::new());
    let (src, d) = pushed(&mem);
    let name = d.to_hex();
    // Recorded but never read here: the repack has to fetch the hot chunks first.
    let a = host(&mem, None);
    a.store.resolve(&name).unwrap();
    for p in ["small/f3", "big/b.bin", "small/f25"] {
        let f = record(&a.store, &d, p).unwrap();
        a.store.touched(&d, &f, 0, 1);
    }
    a.store.push_profile(&name).unwrap();
    let root_before = mem.object(&format::root_key(&name)).unwrap();
    let objects_before = mem.keys("").len();
    // Every pack comes back damaged: the repack fails naming one, and writes nothing.
    let packs: Vec<String> = mem.keys("packs/");
    mem.faults(|f| f.corrupt = packs.clone());
    let e = a.store.repack(&name, &|_, _| {}).unwrap_err().to_string();
    assert!(e.contains("pack") || e.contains("chunk"), "{e}");
    assert_eq!(mem.object(&format::root_key(&name)).unwrap(), root_before);
    assert_eq!(mem.keys("").len(), objects_before, "nothing was written to S3");
    // (That host now holds those places for wrong.) Another, with S3 whole again, repacks.
    mem.faults(|f| f.corrupt.clear());
    let b = host(&mem, None);
    let r = b.store.repack(&name, &|_, _| {}).unwrap();
    assert!(!r.already && r.fetched_bytes > 0 && r.runs_after == 1, "{r:?}");
    let h = host(&mem, None);
    h.store.resolve(&name).unwrap();
    for p in ["small/f3", "big/b.bin", "small/f25", "big/a.bin"] {
        assert_eq!(file_bytes(&h.store, &d, p).unwrap(), std::fs::read(src.path().join(p)).unwrap(), "{p}");
    }
}
