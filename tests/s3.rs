//! End-to-end tests of the S3 backend against a real S3-compatible server (moto_server on
//! 127.0.0.1): push, lazy mounts, verified fetches, offline behaviour, eviction, concurrent
//! pushes, and builds cached in S3.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use vorpalfs_tests::s3_server::S3Server;
use vorpalfs_tests::*;

/// A store configured for `server` under `prefix`; small roots are not prefetched whole (these
/// tests count what reads fetch).
fn host(server: &S3Server, prefix: &str, cache: Option<&str>) -> Env {
    let mut env = Env::new();
    env.vars.push(("VORPALFS_PREFETCH_BELOW".into(), "0".into()));
    env.vars.push(("VORPALFS_S3".into(), format!("s3://{}/{prefix}", vorpalfs_tests::s3_server::BUCKET)));
    env.vars.push(("VORPALFS_S3_ENDPOINT".into(), format!("http://127.0.0.1:{}", server.proxy_port)));
    for (k, v) in S3Server::env() {
        env.vars.push((k.into(), v.into()));
    }
    if let Some(c) = cache {
        env.vars.push(("VORPALFS_CACHE_SIZE".into(), c.into()));
    }
    env
}

fn s3_status(env: &Env) -> serde_json::Value {
    let r = env.run(["--json", "status"]);
    serde_json::from_str::<serde_json::Value>(r.ok()).unwrap()["s3"].clone()
}

fn drop_caches() {
    fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
}

fn tree(src: &Path) {
    write(&src.join("big/a.bin"), &random_bytes(12 << 20, 1));
    write(&src.join("big/b.bin"), &random_bytes(9 << 20, 2));
    // 37 MiB in all: a push cuts two remote packs.
    write(&src.join("big/c.bin"), &random_bytes(16 << 20, 3));
    for i in 0..50 {
        write(&src.join(format!("small/f{i}.txt")), format!("file {i}\n").repeat(100 + i).as_bytes());
    }
    write(&src.join("bin/tool"), b"#!/bin/sh\necho tool ran\n");
    chmod(&src.join("bin/tool"), 0o755);
    std::os::unix::fs::symlink("../small/f1.txt", src.join("bin/link")).unwrap();
    fs::create_dir_all(src.join("empty")).unwrap();
}

#[test]
fn push_then_a_lazy_mount_reads_only_what_is_read_and_exactly_the_source() {
    let s3 = S3Server::start();
    let a = host(&s3, "lazy", None);
    let src = a.path("src");
    tree(&src);
    let digest = a.add(&src);
    let r = a.run(["push", &digest]);
    assert!(r.ok().is_empty() && r.stderr.contains("pushed"), "{}", r.stderr);
    assert!(a.run(["push", &digest]).stderr.contains("already in S3"));

    let b = host(&s3, "lazy", None);
    let m = b.mount();
    let root = m.path(&digest);
    // One small file: the root object, the index, that file's one chunk, and (in parallel) the
    // MiB after it in its pack: its neighbours.
    assert_eq!(fs::read(root.join("small/f3.txt")).unwrap(), fs::read(src.join("small/f3.txt")).unwrap());
    let st = s3_status(&b);
    assert!(st["gets"].as_u64().unwrap() <= 4, "{st}");
    assert!(st["get_bytes"].as_u64().unwrap() < (64 << 10) + (1 << 20), "one small file fetched {st}");
    // A 12 MiB file read from start to end: its chunks come with readahead, in parallel GETs
    // of a growing window, and nothing beyond the file.
    let (gets, bytes) = (st["gets"].as_u64().unwrap(), st["get_bytes"].as_u64().unwrap());
    assert_eq!(fs::read(root.join("big/a.bin")).unwrap(), fs::read(src.join("big/a.bin")).unwrap());
    let st = s3_status(&b);
    let (gets, bytes) = (st["gets"].as_u64().unwrap() - gets, st["get_bytes"].as_u64().unwrap() - bytes);
    assert!(gets <= 16, "a sequential read of 12 MiB took {gets} GETs");
    assert!((11 << 20..13 << 20).contains(&bytes), "a sequential read of 12 MiB fetched {bytes} bytes");
    // Everything, bit for bit.
    assert_same_tree(&src, &root);
    let st = s3_status(&b);
    assert!(st["get_bytes"].as_u64().unwrap() >= 37 << 20, "{st}");
    assert_eq!(st["errors"], 0);
}

#[test]
fn a_corrupted_object_gives_eio_never_wrong_bytes() {
    let s3 = S3Server::start();
    let a = host(&s3, "corrupt", None);
    let src = a.path("src");
    write(&src.join("data.bin"), &random_bytes(3 << 20, 9));
    let digest = a.add(&src);
    a.run(["push", &digest]).ok();
    let packs = s3.keys("corrupt/packs/");
    assert_eq!(packs.len(), 1, "{packs:?}");
    // Same length, other bytes (moto refuses unsigned reads, so the test cannot flip one bit).
    let len = s3.size(&packs[0]) as usize;
    s3.put(&packs[0], &random_bytes(len, 77));

    let b = host(&s3, "corrupt", None);
    let m = b.mount();
    let err = fs::read(m.path(&digest).join("data.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(m.log().contains("corrupt chunk"), "{}", m.log());

    // A pull takes the whole pack, checked against its name: refused, and nothing kept.
    let c = host(&s3, "corrupt", None);
    let r = c.run(["pull", &digest]);
    r.fails_with(&["corrupt pack", packs[0].rsplit('/').next().unwrap(), "does not match its name"]);
    let packs_dir = c.path("store/packs");
    let left: Vec<_> = fs::read_dir(&packs_dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn repair_fetches_a_chunk_damaged_here_again_from_s3() {
    let s3 = S3Server::start();
    let a = host(&s3, "repair", None);
    let src = a.path("src");
    let data = random_bytes(3 << 20, 11);
    write(&src.join("one.bin"), &data);
    let digest = a.add(&src);
    a.run(["push", &digest]).ok();
    // Each ingest worker writes its own pack; damage the largest.
    let pack = fs::read_dir(a.store.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = fs::read(&pack).unwrap();
    let n = bytes.len();
    bytes[n - 1000] ^= 0x40;
    fs::write(&pack, &bytes).unwrap();
    let v = a.run(["store", "verify"]);
    assert!(!v.status.success() && v.stdout.contains("CORRUPT"), "{}", v.stdout);

    let r = a.run(["store", "repair"]);
    r.ok();
    assert!(r.stdout.lines().any(|l| l.starts_with("refetched ")), "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("1 fetched again from S3, 0 dropped"), "{}", r.stderr);
    a.run(["store", "verify"]).ok();
    assert_eq!(a.run(["store", "cat", &format!("{digest}/one.bin")]).raw_stdout, data);
}

#[test]
fn offline_cached_reads_work_uncached_fail_fast_and_recover() {
    let mut s3 = S3Server::start();
    let a = host(&s3, "offline", None);
    let src = a.path("src");
    tree(&src);
    let digest = a.add(&src);
    a.run(["push", &digest]).ok();

    let b = host(&s3, "offline", None);
    let m = b.mount();
    let root = m.path(&digest);
    assert_eq!(fs::read(root.join("small/f1.txt")).unwrap(), fs::read(src.join("small/f1.txt")).unwrap());
    s3.proxy_down();
    drop_caches();
    // Cached (in the local fetched pack): works.
    assert_eq!(fs::read(root.join("small/f1.txt")).unwrap(), fs::read(src.join("small/f1.txt")).unwrap());
    // Not cached: EIO, fast. (The big files: the small ones came with f1, its neighbours in S3.)
    let t = Instant::now();
    let err = fs::read(root.join("big/c.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert!(t.elapsed() < Duration::from_secs(10), "took {:?}", t.elapsed());
    assert_eq!(m.log().matches("S3 unreachable").count(), 1, "{}", m.log());
    let _ = fs::read(root.join("big/b.bin"));
    assert_eq!(m.log().matches("S3 unreachable").count(), 1, "one line, not one per read");
    // Back: reads work again once the daemon tries S3 again (it fails fast for a few seconds
    // after repeated failures rather than making every read wait for a dead endpoint).
    s3.proxy_up();
    let t = Instant::now();
    let got = loop {
        match fs::read(root.join("big/c.bin")) {
            Ok(b) => break b,
            Err(e) if t.elapsed() < Duration::from_secs(10) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO));
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("S3 is back but reads still fail after {:?}: {e}", t.elapsed()),
        }
    };
    assert_eq!(got, fs::read(src.join("big/c.bin")).unwrap());
}

#[test]
fn eviction_keeps_the_cache_under_budget() {
    let s3 = S3Server::start();
    let a = host(&s3, "evict", None);
    let src = a.path("src");
    for i in 0..10 {
        write(&src.join(format!("f{i}.bin")), &random_bytes(6 << 20, 100 + i));
    }
    let digest = a.add(&src);
    a.run(["push", &digest]).ok();

    let budget = 24u64 << 20;
    let b = host(&s3, "evict", Some("24M"));
    let m = b.mount();
    for i in 0..10 {
        let name = format!("f{i}.bin");
        assert_eq!(fs::read(m.path(&digest).join(&name)).unwrap(), fs::read(src.join(&name)).unwrap());
        let used = s3_status(&b)["cache_bytes"].as_u64().unwrap();
        assert!(used <= budget, "after {name}: {used} bytes cached, budget {budget}");
    }
    // Evicted data is fetched again when read, still right.
    drop_caches();
    assert_eq!(fs::read(m.path(&digest).join("f0.bin")).unwrap(), fs::read(src.join("f0.bin")).unwrap());
    // gc with every root alive frees nothing that is reachable.
    let before = s3_status(&b)["gets"].as_u64().unwrap();
    assert!(before > 0);
}

#[test]
fn two_stores_pushing_one_tree_at_once_leave_one_consistent_copy() {
    let s3 = S3Server::start();
    let a = host(&s3, "race", None);
    let b = host(&s3, "race", None);
    let src = a.path("src");
    tree(&src);
    let da = a.add(&src);
    let db = b.add(&src);
    assert_eq!(da, db);
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| a.run(["push", &da]));
        let tb = s.spawn(|| b.run(["push", &db]));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    ra.ok();
    rb.ok();
    // Both cut the same two packs (named by content): each is there once.
    assert_eq!(s3.keys("race/packs/").len(), 2);
    assert_eq!(s3.keys("race/indexes/").len(), 1);
    let c = host(&s3, "race", None);
    let m = c.mount();
    assert_same_tree(&src, &m.path(&da));
}

#[test]
fn pull_fetches_everything_and_then_works_offline() {
    let mut s3 = S3Server::start();
    let a = host(&s3, "pull", None);
    let src = a.path("src");
    tree(&src);
    let digest = a.add(&src);
    a.run(["push", &digest]).ok();
    let b = host(&s3, "pull", None);
    let r = b.run(["--json", "pull", &digest]);
    let v: serde_json::Value = serde_json::from_str(r.ok()).unwrap();
    assert_eq!(v["fetched_chunks"], v["chunks"]);
    s3.proxy_down();
    let out = b.path("out");
    b.run(["store", "export", &digest, out.to_str().unwrap()]).ok();
    assert_same_tree(&src, &out);
}

#[test]
fn a_build_cached_in_s3_is_not_rebuilt_and_its_output_is_not_downloaded() {
    let s3 = S3Server::start();
    let hello = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("examples/hello");
    let a = host(&s3, "builds", None);
    let ma = a.mount();
    let r = a.cmd(["build", hello.to_str().unwrap()]).env("VORPALFS_MOUNTPOINT", &ma.dir).output().unwrap();
    let r: Run = r.into();
    assert!(r.stderr.contains("pushed hello to S3"), "{}", r.stderr);
    let path_a = r.ok().trim().to_string();
    let digest = Path::new(&path_a).file_name().unwrap().to_str().unwrap().to_string();

    let b = host(&s3, "builds", None);
    let mb = b.mount();
    let t = Instant::now();
    let r: Run = b.cmd(["build", hello.to_str().unwrap()]).env("VORPALFS_MOUNTPOINT", &mb.dir).output().unwrap().into();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(r.ok().trim(), mb.path(&digest).to_str().unwrap());
    assert!(r.stderr.contains("0 to build, 1 cached"), "{}", r.stderr);
    let st = s3_status(&b);
    assert!(st["get_bytes"].as_u64().unwrap() < 8 << 10, "output bytes downloaded: {st}");
    assert!(secs < 3.0, "cached build from S3 took {secs:.2}s");
    // Its bytes come when the program runs.
    let out = Command::new(mb.path(&digest).join("bin/hello")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Hello from vorpalfs!\n");
}

#[test]
fn two_hosts_on_one_bucket_build_a_digest_once() {
    let s3 = S3Server::start();
    let a = host(&s3, "claim", None);
    let b = host(&s3, "claim", None);
    let (ma, mb) = (a.mount(), b.mount());
    let proj = a.path("proj");
    write(
        &proj.join("vorpalfs.toml"),
        b"[[artifact]]\nname = \"slow\"\n[[artifact.step]]\nscript = \"sleep 2; echo done > $VORPAL_OUTPUT/x\"\n",
    );
    let run = |env: &Env, m: &Mount| -> Run {
        env.cmd(["build", proj.to_str().unwrap()]).env("VORPALFS_MOUNTPOINT", &m.dir).output().unwrap().into()
    };
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| run(&a, &ma));
        let tb = s.spawn(|| run(&b, &mb));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    let (pa, pb) = (ra.ok().trim().to_string(), rb.ok().trim().to_string());
    assert_eq!(Path::new(&pa).file_name(), Path::new(&pb).file_name(), "one digest");
    let built = [&ra, &rb].iter().filter(|r| r.stderr.contains("building slow")).count();
    assert_eq!(built, 1, "A:\n{}\nB:\n{}", ra.stderr, rb.stderr);
    assert_eq!(fs::read_to_string(Path::new(&pa).join("x")).unwrap(), "done\n");
    assert_eq!(fs::read_to_string(Path::new(&pb).join("x")).unwrap(), "done\n");
    assert!(s3.keys("claim/claims/").is_empty(), "the claim is released");
}

/// A TCP endpoint that accepts connections and never answers (a blackholed S3).
fn blackhole() -> (u16, std::thread::JoinHandle<()>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming().take(64) {
            held.push(c);
        }
        std::thread::sleep(Duration::from_secs(60));
    });
    (port, h)
}

#[test]
fn unknown_names_on_a_blackholed_s3_do_not_stall_reads_of_local_roots() {
    let (port, _hole) = blackhole();
    let mut env = Env::new();
    env.vars.push(("VORPALFS_S3".into(), "s3://nowhere/x".into()));
    env.vars.push(("VORPALFS_S3_ENDPOINT".into(), format!("http://127.0.0.1:{port}")));
    for (k, v) in S3Server::env() {
        env.vars.push((k.into(), v.into()));
    }
    let src = env.path("src");
    write(&src.join("f.txt"), b"local\n");
    let digest = env.add(&src);
    let m = env.mount();
    // Eight lookups of names the store does not have: each waits on S3, which never answers.
    let lookups: Vec<_> = (0..8)
        .map(|i| {
            let p = m.path(&format!("{:064x}", i + 1));
            std::thread::spawn(move || fs::metadata(p).is_err())
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    drop_caches();
    let t = Instant::now();
    assert_eq!(fs::read(m.path(&digest).join("f.txt")).unwrap(), b"local\n");
    let took = t.elapsed();
    assert!(took < Duration::from_millis(100), "a local read took {took:?} while lookups hung on S3");
    for l in lookups {
        assert!(l.join().unwrap(), "an unknown name was found");
    }
}

#[test]
fn a_decompression_bomb_index_neither_grows_the_daemon_nor_poisons_the_top_level() {
    let s3 = S3Server::start();
    let b = host(&s3, "bomb", None);
    let src = b.path("src");
    write(&src.join("f.txt"), b"fine\n");
    let digest = b.add(&src);
    // An index that claims a 60 MiB tree and then decompresses to a GiB more, in about a
    // hundred kilobytes, and a root object naming it for a tree that exists nowhere.
    let mut raw = b"VPFSIDX1".to_vec();
    raw.extend_from_slice(&1u32.to_le_bytes());
    raw.extend_from_slice(&[7u8; 32]);
    raw.extend_from_slice(&(60u32 << 20).to_le_bytes());
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    std::io::Write::write_all(&mut enc, &raw).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..1084 {
        std::io::Write::write_all(&mut enc, &zeros).unwrap();
    }
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() < 256 << 10, "{} bytes", bomb.len());
    let index = blake3::hash(&bomb).to_hex().to_string();
    let fake = format!("{:064x}", 0xbadu32);
    s3.put(&format!("bomb/indexes/{index}"), &bomb);
    s3.put(&format!("bomb/roots/{fake}"), format!("vorpalfs root v2\ntree {fake}\nindex {index}\n").as_bytes());

    let m = b.mount();
    let err = fs::metadata(m.path(&fake)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");
    let hwm = fs::read_to_string(format!("/proc/{}/status", m.pid())).unwrap();
    let kib: u64 =
        hwm.lines().find(|l| l.starts_with("VmHWM:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(kib < 400 << 10, "the daemon's peak RSS reached {} MiB", kib >> 10);
    // Nothing was recorded: the top level, `store ls` and `store stats` still work.
    let names: Vec<_> = fs::read_dir(&m.dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, [std::ffi::OsString::from(&digest)]);
    assert!(b.run(["store", "ls"]).ok().contains(&digest));
    b.run(["store", "stats"]).ok();
    assert!(m.log().contains("refused what S3 holds for this name"), "{}", m.log());
}

/// `vorpalfs key generate NAME` in `env`'s scratch dir: (secret key file, public key line).
fn generate_key(env: &Env, name: &str) -> (std::path::PathBuf, String) {
    let dir = env.path("keys");
    fs::create_dir_all(&dir).unwrap();
    let r = env.run(["key", "generate", name, "--dir", dir.to_str().unwrap()]);
    let public = r.ok().trim().to_string();
    let secret = dir.join(format!("{name}.secret"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(&secret).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(fs::read_to_string(dir.join(format!("{name}.public"))).unwrap().trim(), public);
    assert!(public.starts_with(&format!("{name}:")), "{public}");
    // Never over an existing key.
    env.run(["key", "generate", name, "--dir", dir.to_str().unwrap()]).fails_with(&["cannot create the key file"]);
    (secret, public)
}

/// A host under `prefix` that signs its pushes with a new key `builder`; and the key's public half.
fn signing_host(s3: &S3Server, prefix: &str) -> (Env, String) {
    let mut env = host(s3, prefix, None);
    let (secret, public) = generate_key(&env, "builder");
    env.vars.push(("VORPALFS_SIGNING_KEY".into(), secret.to_str().unwrap().into()));
    (env, public)
}

/// A host under `prefix` that takes only what `public` signed.
fn trusting_host(s3: &S3Server, prefix: &str, public: &str) -> Env {
    let mut env = host(s3, prefix, None);
    env.vars.push(("VORPALFS_TRUSTED_KEYS".into(), public.into()));
    env
}

#[test]
fn a_root_object_overwritten_in_the_bucket_is_refused_by_a_host_that_trusts_keys() {
    let s3 = S3Server::start();
    let (a, public) = signing_host(&s3, "signed");
    let (sa, sb) = (a.path("a"), a.path("b"));
    write(&sa.join("f"), b"this is A\n");
    write(&sb.join("f"), b"this is B\n");
    let da = a.run(["store", "add", sa.to_str().unwrap(), "--name", "A"]).ok().trim().to_string();
    a.run(["store", "add", sb.to_str().unwrap(), "--name", "B"]).ok();
    assert!(a.run(["push", "A", "B"]).stderr.contains("signed by builder"));

    let c = trusting_host(&s3, "signed", &public);
    assert_eq!(c.run(["store", "cat", "A/f"]).ok(), "this is A\n");
    let ls = c.run(["store", "ls"]);
    assert!(ls.ok().contains("A  (signed by builder)"), "{}", ls.stdout);

    // Whoever can write the bucket copies B's object over A's (and over the one naming A's
    // tree): a fresh host that trusts the key refuses it (naming the object and the keys),
    // through the CLI and through the mount.
    let b_obj = s3.get("signed/roots/B");
    s3.put("signed/roots/A", &b_obj);
    s3.put(&format!("signed/roots/{da}"), &b_obj);
    let d = trusting_host(&s3, "signed", &public);
    d.run(["store", "cat", "A/f"]).fails_with(&["roots/A", "no accepted signature", "trusted keys: builder"]);
    let m = d.mount();
    let err = fs::metadata(m.path(&da)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");
    assert!(m.log().contains("refused"), "{}", m.log());
    let st: serde_json::Value = serde_json::from_str(d.run(["--json", "status"]).ok()).unwrap();
    assert_eq!(st["s3"]["signatures_required"], true, "{st}");
    drop(m);
    // A host with no key configured takes what the bucket says (the README says so).
    let e = host(&s3, "signed", None);
    assert_eq!(e.run(["store", "cat", "A/f"]).ok(), "this is B\n");
}

#[test]
fn a_result_planted_in_the_bucket_is_rebuilt_by_a_host_that_trusts_keys() {
    let s3 = S3Server::start();
    let (a, public) = signing_host(&s3, "planted");
    let proj = a.path("proj");
    write(
        &proj.join("vorpalfs.toml"),
        b"[[artifact]]\nname = \"gen\"\n[[artifact.step]]\nscript = \"echo genuine > $VORPAL_OUTPUT/x\"\n",
    );
    let build = |env: &Env, m: &Mount| -> serde_json::Value {
        let r: Run = env
            .cmd(["--json", "build", proj.to_str().unwrap()])
            .env("VORPALFS_MOUNTPOINT", &m.dir)
            .output()
            .unwrap()
            .into();
        serde_json::from_str(r.ok()).unwrap()
    };
    let ma = a.mount();
    let ra = build(&a, &ma);
    let input = ra["artifacts"][0]["digest"].as_str().unwrap().to_string();
    drop(ma);
    // Someone plants another tree under the input digest, unsigned.
    let evil = a.path("evil");
    write(&evil.join("x"), b"planted\n");
    a.run(["store", "add", evil.to_str().unwrap(), "--name", "evil"]).ok();
    a.run(["push", "evil"]).ok();
    let text = String::from_utf8(s3.get("planted/roots/evil")).unwrap();
    let planted: String = text
        .lines()
        .filter(|l| !l.starts_with("sig "))
        .map(|l| format!("{}\n", l.replace("kind root", "kind result")))
        .collect();
    s3.put(&format!("planted/roots/{input}"), planted.as_bytes());

    // A host that trusts nothing takes the planted tree (what signing exists to prevent); one
    // that trusts the builder's key builds it and says why.
    let e = host(&s3, "planted", None);
    let me = e.mount();
    let re = build(&e, &me);
    assert_eq!(re["artifacts"][0]["status"], "cached", "{re}");
    assert_eq!(fs::read_to_string(me.path(&input).join("x")).unwrap(), "planted\n");
    let c = trusting_host(&s3, "planted", &public);
    let mc = c.mount();
    let rc = build(&c, &mc);
    let art = &rc["artifacts"][0];
    assert_eq!(art["status"], "built", "{rc}");
    assert!(art["s3_refused"].as_str().unwrap().contains("not signed"), "{rc}");
    assert_eq!(fs::read_to_string(mc.path(&input).join("x")).unwrap(), "genuine\n");
}

/// Behind a WAN link (20 ms a request, 100 MB/s a connection): a small root is fetched whole on
/// first lookup, and a directory of small files read one by one does not cost a round trip each.
#[test]
fn over_a_wan_link_small_files_do_not_cost_a_round_trip_each() {
    let s3 = S3Server::start_with(vorpalfs_tests::wan::Link::wan());
    let a = host(&s3, "wan", None);
    let src = a.path("src");
    for i in 0..300 {
        write(&src.join(format!("lib/m{i:03}.py")), format!("# module {i}\n").repeat(40 + i).as_bytes());
    }
    write(&src.join("big.bin"), &random_bytes(80 << 20, 5));
    let digest = a.add(&src);
    a.run(["push", &digest]).ok();

    // 80 MiB: above the small-root size, so lazy; the 300 modules cost a few GETs, not 300.
    let b = host(&s3, "wan", None);
    let m = b.mount();
    let (_, requests0, _, _) = s3.traffic().snapshot();
    for i in 0..300 {
        let p = format!("lib/m{i:03}.py");
        assert_eq!(fs::read(m.path(&digest).join(&p)).unwrap(), fs::read(src.join(&p)).unwrap(), "{p}");
    }
    let (_, requests, _, _) = s3.traffic().snapshot();
    assert!(requests - requests0 <= 30, "300 small files took {} requests: {}", requests - requests0, s3_status(&b));

    // Without the big file the root is small: fetched whole at the first lookup, in the
    // background; then it reads with S3 gone.
    fs::remove_file(src.join("big.bin")).unwrap();
    let small = a.add(&src);
    a.run(["push", &small]).ok();
    let mut c = host(&s3, "wan", None);
    c.vars.retain(|(k, _)| k != "VORPALFS_PREFETCH_BELOW");
    let m = c.mount();
    assert!(m.path(&small).join("lib").is_dir());
    let t = Instant::now();
    let total: u64 = (0..300).map(|i| fs::metadata(src.join(format!("lib/m{i:03}.py"))).unwrap().len()).sum();
    let fetched = || -> u64 {
        let r = c.run(["--json", "status"]);
        serde_json::from_str::<serde_json::Value>(r.ok()).unwrap()["chunk_cache"]["fetched_bytes"].as_u64().unwrap()
    };
    while fetched() < total {
        assert!(t.elapsed() < Duration::from_secs(20), "prefetched {} of {total} bytes", fetched());
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(s3);
    assert_same_tree(&src, &m.path(&small));
}

/// The chunk count of a `profile push` line ("...: profile of N chunks pushed ...").
fn r_chunks(line: &str) -> u64 {
    line.split("profile of ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).unwrap()
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    out
}

fn status_json(env: &Env) -> serde_json::Value {
    serde_json::from_str(env.run(["--json", "status"]).ok()).unwrap()
}

#[test]
fn a_second_host_prefetches_the_profile_the_first_pushed_and_stops_cleanly() {
    let mut s3 = S3Server::start_with(vorpalfs_tests::wan::Link::wan());
    let a = host(&s3, "prof", None);
    let src = a.path("src");
    for i in 0..200 {
        write(&src.join(format!("lib/m{i:03}.py")), format!("# module {i}\n").repeat(40 + i).as_bytes());
    }
    write(&src.join("big.bin"), &random_bytes(72 << 20, 6));
    let digest = a.add(&src);
    a.run(["push", &digest]).ok();
    // What "the program" reads: every fourth module and the first 6 MiB of the big file.
    let hot: Vec<String> = (0..200).step_by(4).map(|i| format!("lib/m{i:03}.py")).collect();
    let read_hot = |root: &Path| {
        for p in &hot {
            assert_eq!(fs::read(root.join(p)).unwrap(), fs::read(src.join(p)).unwrap(), "{p}");
        }
        let mut head = vec![0u8; 6 << 20];
        std::io::Read::read_exact(&mut fs::File::open(root.join("big.bin")).unwrap(), &mut head).unwrap();
        assert!(head == random_bytes(72 << 20, 6)[..6 << 20]);
    };

    // The first host reads it through its lazy mount, and publishes what it read.
    let b = host(&s3, "prof", None);
    let m = b.mount();
    read_hot(&m.path(&digest));
    let st = status_json(&b);
    assert!(st["profiles"]["recorded_chunks"].as_u64().unwrap() >= 50, "{}", st["profiles"]);
    let r = b.run(["profile", "push", &digest]);
    assert!(r.ok().is_empty() && r.stderr.contains("chunks pushed"), "{}", r.stderr);
    let b_profile = r.stderr.clone();
    b.run(["profile", "push", "no-such-root"]).fails_with(&["no-such-root"]);
    // The hot chunks, laid out back to back for the hosts that come next; once is enough.
    let r = b.run(["profile", "repack", &digest]);
    assert!(r.ok().is_empty() && r.stderr.contains("hot chunks") && r.stderr.contains("to 1;"), "{}", r.stderr);
    let r = b.run(["profile", "repack", &digest]);
    assert!(r.ok().is_empty() && r.stderr.contains("left as it is"), "{}", r.stderr);
    drop(m);
    // Without a daemon nothing was recorded: the error says so.
    b.run(["profile", "push", &digest]).fails_with(&["nothing of", "read through the mount"]);

    // A second host: the first lookup brings the hot set in the background, before any read.
    let c = host(&s3, "prof", None);
    let port = vorpalfs_tests::s3_server::free_port();
    let m = c.mount_with(&c.path("mnt"), &["--metrics", &format!("127.0.0.1:{port}")]);
    assert!(m.path(&digest).join("lib").is_dir());
    let want: u64 = hot.iter().map(|p| fs::metadata(src.join(p)).unwrap().len()).sum::<u64>() + (6 << 20);
    let t = Instant::now();
    let fetched = || status_json(&c)["chunk_cache"]["fetched_bytes"].as_u64().unwrap();
    while fetched() < want {
        assert!(t.elapsed() < Duration::from_secs(30), "prefetched {} of {want} bytes: {}", fetched(), status_json(&c));
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = status_json(&c);
    assert_eq!(st["profiles"]["profiles_used"], 1, "{st}");
    assert!(fetched() < want + (8 << 20), "prefetch fetched {} bytes for a hot set of {want}", fetched());
    // All of it is here: the program runs with S3 gone.
    s3.proxy_down();
    drop_caches();
    read_hot(&m.path(&digest));
    let text = c.run(["status"]);
    assert!(text.ok().contains("from S3: 1 used, prefetching"), "{}", text.stdout);
    assert!(
        text.stdout.contains(&format!("profile of {} chunks; prefetched", r_chunks(&b_profile))),
        "{}",
        text.stdout
    );
    // The same per root, with the mount's latencies, on the metrics endpoint.
    let metrics = http_get(port, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
    let value = |line: &str| -> u64 {
        let l = metrics.lines().find(|l| l.starts_with(line)).unwrap_or_else(|| panic!("no {line} in\n{metrics}"));
        l.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value(&format!("vorpalfs_root_profile_chunks{{root=\"{digest}\"}}")), r_chunks(&b_profile));
    assert!(value(&format!("vorpalfs_root_prefetch_bytes_total{{root=\"{digest}\"}}")) >= want);
    assert!(value("vorpalfs_fs_reads_total") > 0);
    assert!(value("vorpalfs_fuse_op_duration_seconds_count{op=\"read\"}") > 0);
    assert!(value("vorpalfs_fuse_op_duration_seconds_bucket{op=\"lookup\",le=\"+Inf\"}") > 0);
    assert!(http_get(port, "/other").starts_with("HTTP/1.1 404"));
    s3.proxy_up();
    drop(m);

    // A host unmounting (or losing S3) while its prefetch is under way stops it at once.
    let d = host(&s3, "prof", None);
    let mut m = d.mount();
    assert!(m.path(&digest).join("lib").is_dir());
    s3.proxy_down();
    let t = Instant::now();
    d.run(["umount"]).ok();
    assert!(m.wait().success());
    assert!(t.elapsed() < Duration::from_secs(15), "unmount took {:?} with a prefetch under way", t.elapsed());
    let stopped = m.log().matches("prefetch by profile stopped").count();
    assert!(stopped <= 1, "{stopped} lines for one stopped prefetch:\n{}", m.log());
}

#[test]
fn a_daemon_with_push_profiles_publishes_what_was_read_at_unmount() {
    let s3 = S3Server::start();
    let a = host(&s3, "auto", None);
    let src = a.path("src");
    for i in 0..20 {
        write(&src.join(format!("m{i:02}")), format!("module {i}\n").repeat(100).as_bytes());
    }
    let digest = a.add(&src);
    a.run(["push", &digest]).ok();
    let key = format!("auto/profiles/{digest}");
    // Without the setting, nothing is published on its own.
    let b = host(&s3, "auto", None);
    let mut m = b.mount();
    assert_eq!(fs::read(m.path(&digest).join("m03")).unwrap(), fs::read(src.join("m03")).unwrap());
    b.run(["umount"]).ok();
    assert!(m.wait().success());
    assert!(s3.keys(&key).is_empty(), "a profile was pushed without --push-profiles");
    // With it, the daemon pushes what was read when it unmounts.
    let c = host(&s3, "auto", None);
    let mut m = c.mount_with(&c.path("mnt"), &["--push-profiles"]);
    for p in ["m07", "m11"] {
        assert_eq!(fs::read(m.path(&digest).join(p)).unwrap(), fs::read(src.join(p)).unwrap());
    }
    c.run(["umount"]).ok();
    assert!(m.wait().success());
    assert_eq!(s3.keys(&key), std::slice::from_ref(&key), "{}", m.log());
    let p = vorpalfs_store::remote::profile::Profile::parse(&s3.get(&key)).expect("a profile");
    assert_eq!(p.tree.to_hex(), digest);
    assert_eq!(p.chunks.len(), 2, "the two files read, one chunk each");
}

#[test]
fn an_empty_or_oversized_root_object_is_named_as_a_bad_object_not_a_transport_error() {
    // Small objects are read with one ranged GET: an empty one is a range S3 cannot satisfy
    // (416), which is an empty object, not an error of the link.
    let s3 = S3Server::start();
    let a = host(&s3, "odd", None);
    s3.put("odd/roots/empty", b"");
    a.run(["pull", "empty"]).fails_with(&["roots/empty", "root object"]);
    s3.put("odd/roots/huge", &vec![b'x'; 17 << 10]);
    a.run(["pull", "huge"]).fails_with(&["roots/huge", "larger than"]);
}

#[test]
fn with_fill_a_lookup_brings_the_whole_root_and_it_reads_with_s3_gone() {
    let mut s3 = S3Server::start_with(vorpalfs_tests::wan::Link::wan());
    let a = host(&s3, "fill", None);
    let src = a.path("src");
    tree(&src);
    let digest = a.add(&src);
    a.run(["push", &digest]).ok();
    let mut b = host(&s3, "fill", None);
    b.vars.push(("VORPALFS_FILL".into(), "true".into()));
    let m = b.mount();
    assert!(m.path(&digest).join("big").is_dir());
    let t = Instant::now();
    let total: u64 = [12u64 << 20, 9 << 20, 16 << 20].iter().sum();
    let fetched = || status_json(&b)["chunk_cache"]["fetched_bytes"].as_u64().unwrap();
    while fetched() < total {
        assert!(t.elapsed() < Duration::from_secs(60), "filled {} of {total} bytes: {}", fetched(), status_json(&b));
        std::thread::sleep(Duration::from_millis(100));
    }
    s3.proxy_down();
    drop_caches();
    assert_same_tree(&src, &m.path(&digest));
    assert!(m.log().contains("filled from S3"), "{}", m.log());
}
