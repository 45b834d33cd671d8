//! End-to-end tests of `vorpalfs store …`: round trips, dedup, corruption, and every bad input the
//! store issue names. Each drives the real binary on real directories.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vorpalfs_tests::*;

fn store_args<'a>(args: &'a [&'a str]) -> impl Iterator<Item = &'a str> {
    std::iter::once("store").chain(args.iter().copied())
}

fn odd_tree(root: &Path) {
    write(&root.join("a/b/c/deep.txt"), b"deep\n");
    fs::create_dir_all(root.join("empty_dir")).unwrap();
    fs::create_dir_all(root.join("nested/empty")).unwrap();
    write(&root.join("empty_file"), b"");
    write(&root.join("bin/tool"), b"#!/bin/sh\necho tool\n");
    chmod(&root.join("bin/tool"), 0o755);
    write(&root.join("bin/readonly-exec"), b"x");
    chmod(&root.join("bin/readonly-exec"), 0o500);
    symlink("a/b/c/deep.txt", root.join("rel-link")).unwrap();
    symlink("/etc/hostname", root.join("abs-link")).unwrap();
    symlink("does/not/exist", root.join("dangling")).unwrap();
    symlink("a/b", root.join("dir-link")).unwrap();
    write(&root.join("sp ace"), b"space");
    write(&root.join("new\nline"), b"newline");
    write(&root.join(OsStr::from_bytes(b"bytes-\xff\xfe")), b"invalid utf-8 name");
    write(&root.join("ünïcødé"), b"unicode");
    write(&root.join("-dash"), b"dash");
    write(&root.join("random.bin"), &random_bytes(10 << 20, 1));
    write(&root.join("text.txt"), "the same line again\n".repeat(100_000).as_bytes());
}

#[test]
fn round_trip_is_bit_exact_including_a_sparse_file_over_1gib() {
    let env = Env::new();
    let src = env.path("src");
    odd_tree(&src);
    // 1.1 GiB, mostly a hole, with data at a few offsets.
    let big = src.join("sparse.img");
    let f = fs::File::create(&big).unwrap();
    f.set_len(1_100 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    for (i, off) in [0u64, 300 << 20, 1_099 << 20].iter().enumerate() {
        f.write_all_at(&random_bytes(100_000, i as u64 + 10), *off).unwrap();
    }
    drop(f);

    let digest = env.add(&src);
    let out = env.path("out");
    env.run(store_args(&["export", &digest, out.to_str().unwrap()])).ok();
    assert_same_tree(&src, &out);
    // Runs of zeros come back as holes, not 1 GiB of written blocks.
    let exported = fs::metadata(out.join("sparse.img")).unwrap();
    assert_eq!(exported.len(), 1_100 << 20);
    assert!(exported.blocks() * 512 < 64 << 20, "export wrote {} bytes of blocks", exported.blocks() * 512);

    // `store cat` streams exactly the stored bytes.
    let cat = env.run(store_args(&["cat", &format!("{digest}/random.bin")]));
    cat.ok();
    assert!(cat.raw_stdout == random_bytes(10 << 20, 1));
    let cat = env.run(store_args(&["cat", &format!("{digest}/a/b/c/deep.txt")]));
    assert_eq!(cat.ok(), "deep\n");
    env.run(store_args(&["cat", &format!("{digest}/a/b")])).fails_with(&["a/b", "directory"]);
    env.run(store_args(&["cat", &format!("{digest}/nope")])).fails_with(&["nope", "no such file"]);

    // The root is listed, and the same content gives the same digest again.
    assert!(env.run(store_args(&["ls"])).ok().contains(&digest));
    assert_eq!(env.add(&src), digest);
    env.run(store_args(&["verify"])).ok();
}

#[test]
fn exporting_into_a_non_empty_directory_is_refused() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("f"), b"x");
    let digest = env.add(&src);
    let dest = env.path("dest");
    write(&dest.join("precious"), b"keep me");
    env.run(store_args(&["export", &digest, dest.to_str().unwrap()])).fails_with(&["dest", "not an empty directory"]);
    assert_eq!(fs::read(dest.join("precious")).unwrap(), b"keep me");
}

#[test]
fn identical_chunks_are_stored_once_and_an_edit_adds_only_its_chunks() {
    let env = Env::new();
    let src = env.path("src");
    for i in 0..3 {
        write(&src.join(format!("blob{i}")), &random_bytes(8 << 20, 100 + i));
    }
    let first = env.add_json(&src);
    let total = first["bytes"].as_u64().unwrap();
    assert_eq!(total, 24 << 20);
    assert_eq!(first["new_bytes"].as_u64().unwrap(), total);

    // The same tree again: nothing new.
    let again = env.add_json(&src);
    assert_eq!(again["digest"], first["digest"]);
    assert_eq!(again["new_chunks"].as_u64().unwrap(), 0);

    // One file edited in the middle: only the chunks around the edit are new.
    let mut blob = random_bytes(8 << 20, 101);
    blob[4 << 20..(4 << 20) + 100].fill(0xAB);
    write(&src.join("blob1"), &blob);
    let edited = env.add_json(&src);
    assert_ne!(edited["digest"], first["digest"]);
    let new_chunks = edited["new_chunks"].as_u64().unwrap();
    let new_bytes = edited["new_bytes"].as_u64().unwrap();
    assert!((1..=2).contains(&new_chunks), "{new_chunks} new chunks");
    assert!(new_bytes <= 8 << 20 && new_bytes < total / 3, "{new_bytes} new bytes");

    // A different tree sharing a file with the first stores nothing for it.
    let other = env.path("other");
    write(&other.join("copy-of-blob0"), &random_bytes(8 << 20, 100));
    let o = env.add_json(&other);
    assert_eq!(o["new_chunks"].as_u64().unwrap(), 0);

    let stats: serde_json::Value = serde_json::from_str(env.run(["--json", "store", "stats"]).ok()).unwrap();
    assert_eq!(stats["unique_bytes"].as_u64().unwrap(), total + new_bytes);
    assert!(stats["dedup_ratio"].as_f64().unwrap() > 1.5, "{stats}");
}

fn only_pack(store: &Path) -> PathBuf {
    let packs: Vec<_> = fs::read_dir(store.join("packs")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(packs.len(), 1, "{packs:?}");
    packs[0].clone()
}

#[test]
fn verify_reports_a_corrupted_chunk_by_digest_and_path_and_reads_refuse_it() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("dir/victim.bin"), &random_bytes(1 << 20, 5));
    let digest = env.add(&src);
    env.run(store_args(&["verify"])).ok();

    let pack = only_pack(&env.store);
    let mut bytes = fs::read(&pack).unwrap();
    let n = bytes.len();
    bytes[n - 1000] ^= 0x01;
    fs::write(&pack, &bytes).unwrap();

    let v = env.run(store_args(&["verify"]));
    assert!(!v.status.success(), "verify must fail on corruption");
    assert!(v.stdout.contains("CORRUPT") && v.stdout.contains("dir/victim.bin"), "{}", v.stdout);
    assert!(v.stdout.contains(&digest) || v.stdout.split_whitespace().any(|w| w.len() == 64), "{}", v.stdout);
    assert!(v.stderr.contains("1 problems"), "{}", v.stderr);

    let cat = env.run(store_args(&["cat", &format!("{digest}/dir/victim.bin")]));
    cat.fails_with(&["corrupt chunk"]);
    assert!(cat.raw_stdout.is_empty(), "no wrong bytes may be written");
    let out = env.path("out");
    env.run(store_args(&["export", &digest, out.to_str().unwrap()])).fails_with(&["corrupt chunk"]);
}

#[test]
fn verify_lists_every_root_and_path_using_a_damaged_chunk_and_repair_lets_a_re_add_restore_it() {
    let env = Env::new();
    let victim = random_bytes(1 << 20, 9);
    let (a, b) = (env.path("a"), env.path("b"));
    write(&a.join("dir/victim.bin"), &victim);
    write(&a.join("copy/victim.bin"), &victim);
    write(&b.join("x/y/same.bin"), &victim);
    let ra = env.add(&a);
    let rb = env.add(&b);
    let pack = only_pack(&env.store);
    let mut bytes = fs::read(&pack).unwrap();
    let n = bytes.len();
    bytes[n - 1000] ^= 0x01;
    fs::write(&pack, &bytes).unwrap();

    let v = env.run(store_args(&["verify"]));
    assert!(!v.status.success());
    for use_ in [format!("{ra}/copy/victim.bin"), format!("{ra}/dir/victim.bin"), format!("{rb}/x/y/same.bin")] {
        assert!(v.stdout.contains(&use_), "{use_} is not listed:\n{}", v.stdout);
    }
    assert!(v.stderr.contains("3 problems"), "{}", v.stderr);

    // Before repair, a re-add deduplicates against the damaged chunk and fixes nothing.
    env.add(&a);
    assert!(!env.run(store_args(&["verify"])).status.success());
    let r = env.run(store_args(&["repair"]));
    r.fails_with(&["dropped", "re-add the sources"]);
    assert!(r.stdout.lines().any(|l| l.starts_with("dropped ")), "{}", r.stdout);
    // The chunk is now missing, not silently wrong: reads fail by name until a re-add.
    env.run(store_args(&["cat", &format!("{rb}/x/y/same.bin")])).fails_with(&["not in the store"]);
    env.add(&a);
    env.run(store_args(&["verify"])).ok();
    assert_eq!(env.run(store_args(&["cat", &format!("{rb}/x/y/same.bin")])).raw_stdout, victim);
    // Nothing damaged: repair has nothing to do and says so.
    let r = env.run(store_args(&["repair"]));
    r.ok();
    assert!(r.stderr.contains("0 dropped"), "{}", r.stderr);
}

#[test]
fn bad_source_paths_are_named() {
    let env = Env::new();
    env.run(store_args(&["add", "/nonexistent/vorpalfs/src"]))
        .fails_with(&["/nonexistent/vorpalfs/src", "No such file"]);
    let file = env.path("plain-file");
    write(&file, b"x");
    env.run(store_args(&["add", file.to_str().unwrap()])).fails_with(&["plain-file", "not a directory"]);
    env.run(store_args(&["export", "nosuchroot", env.path("o").to_str().unwrap()])).fails_with(&["nosuchroot"]);
}

#[test]
fn special_files_are_refused_by_path_and_kind() {
    let env = Env::new();
    let cases: [(&str, &str); 3] = [("fifo", "FIFO"), ("sock", "socket"), ("dev", "character device")];
    for (name, kind) in cases {
        let src = env.path(&format!("src-{name}"));
        write(&src.join("ok.txt"), b"fine");
        let p = src.join(name);
        match name {
            "fifo" => sh(&format!("mkfifo '{}'", p.display())),
            "sock" => {
                std::os::unix::net::UnixListener::bind(&p).unwrap();
                String::new()
            }
            _ => sh(&format!("mknod '{}' c 1 3", p.display())),
        };
        env.run(store_args(&["add", src.to_str().unwrap()])).fails_with(&[p.to_str().unwrap(), kind]);
    }
    assert_eq!(env.run(store_args(&["ls"])).ok(), "", "nothing was recorded");
}

#[test]
fn an_unreadable_file_is_named_and_nothing_is_recorded() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("readable"), b"ok");
    write(&src.join("secret"), b"no");
    chmod(&src.join("secret"), 0o000);
    // Root reads everything, so run as `nobody` with a store it owns.
    chmod(env.tmp.path(), 0o755);
    fs::create_dir_all(&env.store).unwrap();
    sh(&format!("chown 65534:65534 '{}'", env.store.display()));
    let as_nobody = |args: &[&str]| -> Run {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(vorpalfs_bin())
            .args(args)
            .env("VORPALFS_STORE_DIR", &env.store)
            .output()
            .expect("setpriv")
            .into()
    };
    as_nobody(&["store", "add", src.to_str().unwrap()]).fails_with(&["secret", "Permission denied"]);
    assert_eq!(as_nobody(&["store", "ls"]).ok(), "");
}

/// Bind-mounts `/proc/version` (size 0 in `stat`, yet it has content) over a file: to the
/// ingest it looks exactly like a file that grew while it was read.
struct BindMount(PathBuf);
impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_file_that_changes_while_read_is_named_and_nothing_is_recorded() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("stable"), b"ok");
    write(&src.join("moving"), b"");
    sh(&format!("mount --bind /proc/version '{}'", src.join("moving").display()));
    let _guard = BindMount(src.join("moving"));
    env.run(store_args(&["add", src.to_str().unwrap()])).fails_with(&["moving", "changed while it was being read"]);
    assert_eq!(env.run(store_args(&["ls"])).ok(), "");
}

struct Tmpfs(PathBuf);
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_cleanly_and_leaves_the_store_usable() {
    let env = Env::new();
    fs::create_dir_all(&env.store).unwrap();
    sh(&format!("mount -t tmpfs -o size=24m vorpalfs-test '{}'", env.store.display()));
    let _guard = Tmpfs(env.store.clone());
    let small = env.path("small");
    write(&small.join("f"), b"small and fine");
    let kept = env.add(&small);

    let big = env.path("big");
    for i in 0..5 {
        write(&big.join(format!("r{i}")), &random_bytes(8 << 20, 200 + i));
    }
    env.run(store_args(&["add", big.to_str().unwrap()])).fails_with(&["disk is full", "nothing was committed"]);

    // The earlier root is intact, no partial pack is left, and the store still works.
    let ls = env.run(store_args(&["ls"]));
    assert_eq!(ls.ok().lines().count(), 1);
    assert!(ls.stdout.contains(&kept));
    env.run(store_args(&["verify"])).ok();
    let packs = fs::read_dir(env.store.join("packs")).unwrap().count();
    assert_eq!(packs, 1, "only the first ingest's pack remains");
    let out = env.path("out");
    env.run(store_args(&["export", &kept, out.to_str().unwrap()])).ok();
    assert_same_tree(&small, &out);
}

#[test]
fn a_store_on_a_full_disk_still_opens_and_reads_and_refuses_writes_by_name() {
    let env = Env::new();
    fs::create_dir_all(&env.store).unwrap();
    sh(&format!("mount -t tmpfs -o size=24m vorpalfs-test '{}'", env.store.display()));
    let _guard = Tmpfs(env.store.clone());
    let src = env.path("src");
    write(&src.join("f"), b"stored before the disk filled");
    write(&src.join("big"), &random_bytes(3 << 20, 7));
    let kept = env.add(&src);
    // Fill the disk to the last byte (dd stops at ENOSPC).
    let _ = Command::new("dd")
        .args(["if=/dev/zero", &format!("of={}/filler", env.store.display()), "bs=1M"])
        .stderr(std::process::Stdio::null())
        .status();
    let ls = env.run(store_args(&["ls"]));
    assert!(ls.ok().contains(&kept), "{ls:?}");
    let cat = env.run(store_args(&["cat", &format!("{kept}/f")]));
    assert_eq!(cat.ok(), "stored before the disk filled");
    env.run(store_args(&["verify"])).ok();
    let out = env.path("out");
    env.run(store_args(&["export", &kept, out.to_str().unwrap()])).ok();
    assert_same_tree(&src, &out);
    let more = env.path("more");
    write(&more.join("g"), b"new");
    env.run(store_args(&["add", more.to_str().unwrap()])).fails_with(&[
        "disk is full",
        env.store.to_str().unwrap(),
        "nothing was committed",
    ]);
    // Space again: the store opens for writing and takes the add.
    fs::remove_file(env.store.join("filler")).unwrap();
    env.add(&more);
    env.run(store_args(&["verify"])).ok();
}

#[test]
fn a_directory_that_is_not_a_store_is_refused() {
    let env = Env::new();
    write(&env.store.join("somebody-elses-file"), b"data");
    env.run(store_args(&["ls"])).fails_with(&["not a vorpalfs store", env.store.to_str().unwrap()]);
    assert_eq!(fs::read(env.store.join("somebody-elses-file")).unwrap(), b"data");
    assert_eq!(fs::read_dir(&env.store).unwrap().count(), 1, "nothing was written into it");
}

#[test]
fn a_second_process_is_told_who_holds_the_store() {
    let env = Env::new();
    env.run(store_args(&["ls"])).ok();
    let lock = fs::OpenOptions::new().read(true).write(true).open(env.store.join("lock")).unwrap();
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
    fs::write(env.store.join("lock"), format!("{}\n", std::process::id())).unwrap();
    env.run(store_args(&["ls"])).fails_with(&["in use by another process", &format!("pid {}", std::process::id())]);
    drop(lock);
    env.run(store_args(&["ls"])).ok();
}

#[test]
fn a_killed_ingest_leaves_no_root_and_no_dangling_index_entries() {
    let env = Env::new();
    let src = env.path("src");
    for i in 0..24 {
        write(&src.join(format!("r{i:02}")), &random_bytes(8 << 20, 300 + i));
    }
    let mut child = env.cmd(["store", "add", src.to_str().unwrap()]).spawn().unwrap();
    let packs = env.store.join("packs");
    let t = Instant::now();
    loop {
        let started = fs::read_dir(&packs).map(|d| d.count() > 0).unwrap_or(false);
        if started || t.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the ingest was to be killed mid-way; it finished first");

    assert_eq!(env.run(store_args(&["ls"])).ok(), "", "no root is visible");
    env.run(store_args(&["verify"])).ok();
    // Unsealed packs are removed at open; packs the ingest had committed (complete, unreachable)
    // are gc's to take.
    env.run(["gc"]).ok();
    assert_eq!(fs::read_dir(&packs).unwrap().count(), 0, "no pack is left");
    let stats: serde_json::Value = serde_json::from_str(env.run(["--json", "store", "stats"]).ok()).unwrap();
    assert_eq!(stats["chunks"], 0, "no locator points into the removed pack: {stats}");

    let digest = env.add(&src);
    let out = env.path("out");
    env.run(store_args(&["export", &digest, out.to_str().unwrap()])).ok();
    assert_same_tree(&src, &out);
}

#[test]
fn a_source_deeper_than_path_max_is_stored_and_exported_whole() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    // 24 levels of 200-byte names: 4,824 bytes of path below the top, past PATH_MAX (4,096).
    // Made with relative steps, since no single path reaches the bottom.
    let name = "d".repeat(200);
    sh(&format!("cd '{}' && for i in $(seq 24); do mkdir {name} && cd {name}; done && echo bottom > f", src.display()));
    let deep: String = std::iter::repeat_n(name.as_str(), 24).collect::<Vec<_>>().join("/");
    assert!(deep.len() > 4096);
    let digest = env.add(&src);
    assert_eq!(env.run(store_args(&["cat", &format!("{digest}/{deep}/f")])).ok(), "bottom\n");
    let out = env.path("out");
    env.run(store_args(&["export", &digest, out.to_str().unwrap()])).ok();
    let read = sh(&format!("cd '{}' && for i in $(seq 24); do cd {name}; done && cat f", out.display()));
    assert_eq!(read, "bottom\n");
}
