//! End-to-end tests of the FUSE mount: a real daemon, a real mount, and the tools a build uses
//! reading through it.

use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, symlink};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use vorpalfs_store::{ChunkRef, Digest, FileRecord, Kind};
use vorpalfs_tests::*;

/// Dropping the kernel's caches is global: tests that drop them and the test that counts what the
/// kernel holds take this, so that one does not empty the caches under the other's count.
static KERNEL_CACHES: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn kernel_caches() -> std::sync::MutexGuard<'static, ()> {
    KERNEL_CACHES.lock().unwrap_or_else(|e| e.into_inner())
}

fn tool_tree(src: &Path) {
    write(&src.join("share/random.bin"), &random_bytes(20 << 20, 7));
    write(&src.join("share/text.txt"), "line of text\n".repeat(200_000).as_bytes());
    write(&src.join("share/empty"), b"");
    fs::create_dir_all(src.join("share/empty-dir")).unwrap();
    write(&src.join("odd names/sp ace"), b"space");
    write(&src.join(std::ffi::OsStr::from_bytes(b"odd names/bytes-\xff")), b"bytes");
    symlink("../share/text.txt", src.join("odd names/link")).unwrap();
    symlink("/nonexistent", src.join("odd names/dangling")).unwrap();
    write(&src.join("bin/script"), b"#!/bin/sh\necho script ran\n");
    chmod(&src.join("bin/script"), 0o755);
}

#[test]
fn the_mount_reads_exactly_like_the_source_tree() {
    let env = Env::new();
    let src = env.path("src");
    tool_tree(&src);
    let digest = env.add(&src);
    let m = env.mount_with(&env.path("mnt"), &["--xattrs"]);
    let root = m.path(&digest);

    assert_same_tree(&src, &root);
    assert_eq!(sha256_all(&src), sha256_all(&root));

    // tar of the mount holds the same content as tar of the source.
    let (a, b) = (env.path("tar-src"), env.path("tar-mnt"));
    for (from, to) in [(&src, &a), (&root, &b)] {
        fs::create_dir_all(to).unwrap();
        sh(&format!("tar -C '{}' -cf - . | tar -C '{}' -xf -", from.display(), to.display()));
    }
    assert_same_tree(&a, &b);

    // With --xattrs every entry shows its digest; files have a fixed mtime and their real size.
    let xattr = |p: &Path| sh(&format!("getfattr --only-values -n user.vorpalfs.digest '{}'", p.display()));
    assert_eq!(xattr(&root), digest);
    let text = fs::read(src.join("share/text.txt")).unwrap();
    // A small file is one chunk; its digest hashes its record (size and chunk list).
    let record = FileRecord {
        size: text.len() as u64,
        chunks: vec![ChunkRef { offset: 0, len: text.len() as u32, id: Digest::of(Kind::Chunk, &text) }],
    };
    assert_eq!(xattr(&root.join("share/text.txt")), record.digest().to_hex());
    let meta = fs::metadata(root.join("share/text.txt")).unwrap();
    assert_eq!((meta.len(), meta.mtime()), (text.len() as u64, 1));
    assert_eq!(meta.mode() & 0o777, 0o444);
    assert_eq!(fs::metadata(root.join("bin/script")).unwrap().mode() & 0o777, 0o555);

    // Unknown names are ENOENT, at the top and below.
    let err = fs::metadata(m.path(&"0".repeat(64))).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    assert_eq!(fs::metadata(root.join("nope")).unwrap_err().raw_os_error(), Some(libc::ENOENT));
    assert_eq!(fs::metadata(m.path("not-a-digest")).unwrap_err().raw_os_error(), Some(libc::ENOENT));

    // Store commands keep working while the daemon owns the store.
    assert!(env.run(["store", "ls"]).ok().contains(&digest));
    let st = env.run(["status"]);
    assert!(st.ok().contains("mounted at"), "{}", st.stdout);
}

#[test]
fn programs_libraries_and_python_packages_run_from_the_mount() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("c/greet.c"), b"#include <stdio.h>\nvoid greet(void) { puts(\"hello from a shared library\"); }\n");
    write(&src.join("c/main.c"), b"void greet(void);\nint main(void) { greet(); return 0; }\n");
    fs::create_dir_all(src.join("lib")).unwrap();
    fs::create_dir_all(src.join("bin")).unwrap();
    sh(&format!(
        "cd '{s}' && cc -shared -fPIC -o lib/libgreet.so c/greet.c && cc -o bin/hello c/main.c -Llib -lgreet -Wl,-rpath,'$ORIGIN/../lib'",
        s = src.display()
    ));
    write(&src.join("py/pkg/__init__.py"), b"from .inner import VALUE\n");
    write(&src.join("py/pkg/inner.py"), b"VALUE = 42\n");
    let digest = env.add(&src);
    let m = env.mount();
    let root = m.path(&digest);

    // An executable straight from the mount, loading its library from the mount.
    let out = Command::new(root.join("bin/hello")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from a shared library\n");

    // A new program linked against the library in the mount.
    let exe = env.path("linked");
    sh(&format!(
        "cc -o '{}' '{}' -L'{lib}' -lgreet -Wl,-rpath,'{lib}'",
        exe.display(),
        src.join("c/main.c").display(),
        lib = root.join("lib").display()
    ));
    assert_eq!(String::from_utf8_lossy(&Command::new(&exe).output().unwrap().stdout), "hello from a shared library\n");

    // dlopen through ctypes, and an import of a package from the mount.
    let py = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import ctypes, pkg; ctypes.CDLL('{}').greet(); print(pkg.VALUE)",
            root.join("lib/libgreet.so").display()
        ))
        .env("PYTHONPATH", root.join("py"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    assert_eq!(String::from_utf8_lossy(&py.stdout), "hello from a shared library\n42\n");
}

#[test]
fn mmap_reads_and_random_reads_return_the_source_bytes() {
    let env = Env::new();
    let src = env.path("src");
    let data = random_bytes(12 << 20, 3);
    write(&src.join("blob"), &data);
    let digest = env.add(&src);
    let m = env.mount();
    let path = m.path(&digest).join("blob");

    let out = Command::new("python3")
        .arg("-c")
        .arg("import mmap,hashlib,sys; f=open(sys.argv[1],'rb'); m=mmap.mmap(f.fileno(),0,prot=mmap.PROT_READ); print(hashlib.sha256(m).hexdigest(), len(m))")
        .arg(&path)
        .output()
        .unwrap();
    let expected = sh(&format!("sha256sum '{}' | cut -d' ' -f1", src.join("blob").display()));
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{} {}\n", expected.trim(), data.len()));

    let f = fs::File::open(&path).unwrap();
    for (off, len) in [(0usize, 1usize), (4095, 2), (1 << 20, 300_000), (data.len() - 10, 100), (5_000_000, 3 << 20)] {
        let mut buf = vec![0u8; len];
        let n = f.read_at(&mut buf, off as u64).unwrap();
        let end = (off + len).min(data.len());
        assert_eq!(&buf[..n], &data[off..end], "read_at({off}, {len})");
    }
}

#[test]
fn every_kind_of_write_fails_with_erofs() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("file"), b"content");
    fs::create_dir_all(src.join("dir")).unwrap();
    let digest = env.add(&src);
    let m = env.mount();
    let root = m.path(&digest);
    let file = root.join("file");
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).unwrap();
    let erofs = |what: &str, r: std::io::Result<()>| {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}");
    };
    let libc_rc = |rc: i32| if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };

    for dir in [&root, &m.dir] {
        erofs("create", fs::File::create(dir.join("new")).map(drop));
        erofs("mkdir", fs::create_dir(dir.join("newdir")));
        erofs("symlink", symlink("x", dir.join("newlink")));
    }
    erofs("open for writing", fs::OpenOptions::new().write(true).open(&file).map(drop));
    erofs("open for append", fs::OpenOptions::new().append(true).open(&file).map(drop));
    erofs("truncate", fs::OpenOptions::new().write(true).truncate(true).open(&file).map(drop));
    erofs("unlink", fs::remove_file(&file));
    erofs("rmdir", fs::remove_dir(root.join("dir")));
    erofs("rmdir of an artifact", fs::remove_dir(&root));
    erofs("rename", fs::rename(&file, root.join("moved")));
    erofs("link", fs::hard_link(&file, root.join("hard")));
    erofs("chmod", fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o777)));
    // SAFETY (all below): plain syscalls on valid NUL-terminated paths.
    erofs("chown", libc_rc(unsafe { libc::chown(c(&file).as_ptr(), 1, 1) }));
    erofs("truncate(2)", libc_rc(unsafe { libc::truncate(c(&file).as_ptr(), 0) }));
    erofs("utimensat", libc_rc(unsafe { libc::utimensat(libc::AT_FDCWD, c(&file).as_ptr(), std::ptr::null(), 0) }));
    erofs("mknod", libc_rc(unsafe { libc::mknod(c(&root.join("fifo")).as_ptr(), libc::S_IFIFO | 0o644, 0) }));
    let name = CString::new("user.x").unwrap();
    erofs("setxattr", libc_rc(unsafe { libc::setxattr(c(&file).as_ptr(), name.as_ptr(), b"v".as_ptr().cast(), 1, 0) }));
    erofs("removexattr", libc_rc(unsafe { libc::removexattr(c(&file).as_ptr(), c"user.vorpalfs.digest".as_ptr()) }));
    assert_eq!(fs::read(&file).unwrap(), b"content");
}

#[test]
fn a_walk_of_fifty_thousand_files_stats_them_all_and_forgets_them_after() {
    let _caches = kernel_caches();
    let env = Env::new();
    let src = env.path("src");
    for d in 0..200 {
        let dir = src.join(format!("d{d:03}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..250 {
            fs::write(dir.join(format!("f{f:03}")), format!("{d}/{f}\n")).unwrap();
        }
    }
    let digest = env.add(&src);
    let m = env.mount();
    let root = m.path(&digest);
    let out = sh(&format!(
        "cd '{}' && find . -type f -print0 | xargs -0 stat -c %s | awk '{{n++; s+=$1}} END {{print n, s}}'",
        root.display()
    ));
    let expected = sh(&format!(
        "cd '{}' && find . -type f -print0 | xargs -0 stat -c %s | awk '{{n++; s+=$1}} END {{print n, s}}'",
        src.display()
    ));
    assert_eq!(out, expected);
    assert!(out.starts_with("50000 "), "{out}");

    // The daemon holds only what the kernel holds: dropping the kernel's caches forgets them.
    let held = |env: &Env| -> u64 {
        let st: serde_json::Value = serde_json::from_str(env.run(["--json", "status"]).ok()).unwrap();
        st["fs"]["inodes"].as_u64().unwrap()
    };
    let before = held(&env);
    assert!(before > 1000, "{before} inodes held after the walk");
    sh("sync && echo 2 > /proc/sys/vm/drop_caches");
    // Forgets arrive asynchronously.
    let t = std::time::Instant::now();
    while held(&env) > before / 2 && t.elapsed().as_secs() < 20 {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(held(&env) <= before / 2, "inodes not forgotten: {} of {before}", held(&env));
}

#[test]
fn sixteen_threads_reading_the_same_and_different_files_get_the_right_bytes() {
    let env = Env::new();
    let src = env.path("src");
    let files: Vec<(String, Vec<u8>)> =
        (0..8).map(|i| (format!("f{i}"), random_bytes((3 << 20) + i * 1000, 40 + i as u64))).collect();
    for (n, d) in &files {
        write(&src.join(n), d);
    }
    let digest = env.add(&src);
    let m = env.mount();
    let root = Arc::new(m.path(&digest));
    let files = Arc::new(files);
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let (root, files) = (root.clone(), files.clone());
            std::thread::spawn(move || {
                // Half the threads read f0 (the same chunks at once), the others each their own.
                for round in 0..3 {
                    let i = if t % 2 == 0 { 0 } else { (t / 2 + round) % files.len() };
                    let (name, data) = &files[i];
                    let mut got = Vec::new();
                    fs::File::open(root.join(name)).unwrap().read_to_end(&mut got).unwrap();
                    assert!(got == *data, "thread {t} read wrong bytes from {name}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn a_root_added_while_mounted_appears_at_once() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("hello.txt"), b"hello\n");
    // The digest is known before it is added here (content addressing): compute it elsewhere.
    let digest = Env::new().add(&src);
    let m = env.mount();
    let path = m.path(&digest).join("hello.txt");
    // Looked up before it exists: the kernel caches the negative entry.
    assert_eq!(fs::metadata(&path).unwrap_err().raw_os_error(), Some(libc::ENOENT));
    assert_eq!(fs::metadata(m.path(&digest)).unwrap_err().raw_os_error(), Some(libc::ENOENT));
    assert_eq!(env.add(&src), digest);
    assert_eq!(fs::read(&path).unwrap(), b"hello\n");
    assert!(fs::read_dir(&m.dir).unwrap().any(|e| e.unwrap().file_name() == digest.as_str()));

    // Removing the root name makes it disappear again.
    env.run(["store", "rm", &digest]).ok();
    assert_eq!(fs::metadata(m.path(&digest)).unwrap_err().raw_os_error(), Some(libc::ENOENT));
}

#[test]
fn a_corrupted_chunk_reads_as_eio_with_a_log_line_never_wrong_bytes() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("dir/victim"), &random_bytes(2 << 20, 9));
    write(&src.join("fine"), b"fine");
    let digest = env.add(&src);
    // The victim's pack: the largest (ingest workers write packs of their own).
    let pack = fs::read_dir(env.store.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = fs::read(&pack).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x40;
    fs::write(&pack, &bytes).unwrap();

    let m = env.mount();
    let root = m.path(&digest);
    let mut f = fs::File::open(root.join("dir/victim")).unwrap();
    let mut buf = Vec::new();
    let err = f.read_to_end(&mut buf).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    let good = random_bytes(2 << 20, 9);
    assert!(good.starts_with(&buf), "bytes that were returned must be right");
    assert_eq!(fs::read(root.join("fine")).unwrap(), b"fine");
    let log = m.log();
    assert!(
        log.contains("read failed")
            && log.contains(&digest)
            && log.contains("dir/victim")
            && log.contains("corrupt chunk"),
        "{log}"
    );
}

#[test]
fn sigterm_sigint_and_umount_unmount_cleanly() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("f"), b"x");
    env.add(&src);
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut m = env.mount();
        assert!(vorpalfs_fs_mounted(&m.dir));
        assert!(m.stop_with(signal).success());
        assert!(!vorpalfs_fs_mounted(&m.dir), "still mounted after signal {signal}");
    }
    let mut m = env.mount();
    env.run(["umount", m.dir.to_str().unwrap()]).ok();
    assert!(m.wait().success());
    assert!(!vorpalfs_fs_mounted(&m.dir));
    env.run(["status"]).ok().contains("not mounted");
    env.run(["umount", m.dir.to_str().unwrap()]).fails_with(&["nothing is mounted"]);
}

#[test]
fn a_stale_mount_left_by_a_killed_daemon_is_replaced_or_cleared() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("f"), b"still here");
    let digest = env.add(&src);
    let mut m = env.mount();
    let dir = m.dir.clone();
    m.stop_with(libc::SIGKILL);
    assert_eq!(fs::metadata(&dir).unwrap_err().raw_os_error(), Some(libc::ENOTCONN), "the mount is stale");

    let m2 = env.mount_at(&dir);
    assert_eq!(fs::read(m2.path(&digest).join("f")).unwrap(), b"still here");
    assert!(m2.log().contains("stale mount"));
    drop(m2);

    let mut m3 = env.mount_at(&dir);
    m3.stop_with(libc::SIGKILL);
    let r = env.run(["umount", dir.to_str().unwrap()]);
    assert!(r.ok().is_empty());
    assert!(r.stderr.contains("detached"), "{}", r.stderr);
    assert!(!vorpalfs_fs_mounted(&dir));
    // A root daemon's view of the mount for its sandboxes goes with it, not left to pile up.
    let view = env.builds_dir().join("store");
    assert!(!vorpalfs_fs_mounted(&view), "{} is still mounted", view.display());
}

#[test]
fn the_background_daemon_starts_serves_and_stops() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("f"), b"background");
    let digest = env.add(&src);
    let mnt = env.path("bg-mnt");
    let r = env.run(["mount", mnt.to_str().unwrap()]);
    assert_eq!(r.ok().trim(), mnt.to_str().unwrap());
    assert_eq!(fs::read(mnt.join(&digest).join("f")).unwrap(), b"background");
    // A second `mount` finds the running daemon.
    assert!(env.run(["mount", mnt.to_str().unwrap()]).stderr.contains("already mounted"));
    env.run(["umount", mnt.to_str().unwrap()]).ok();
    assert!(!vorpalfs_fs_mounted(&mnt));
    assert!(fs::read_to_string(env.store.join("daemon.log")).unwrap().contains("serving"));
}

fn vorpalfs_fs_mounted(dir: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines().any(|l| l.split(' ').nth(4) == Some(dir.to_str().unwrap()))
}

#[test]
fn a_directory_of_thirty_thousand_entries_lists_whole_with_any_buffer_size() {
    let _caches = kernel_caches();
    let env = Env::new();
    let src = env.path("src");
    let big = src.join("big");
    fs::create_dir_all(&big).unwrap();
    for i in 0..30_000 {
        fs::write(big.join(format!("f{i:05}")), b"").unwrap();
    }
    let digest = env.add(&src);
    let m = env.mount();
    let dir = m.path(&digest).join("big");
    let list_dir = env!("CARGO_BIN_EXE_vorpalfs-list-dir");
    // 32 bytes hold one entry per getdents call: 30,002 resumed requests, each answered at its
    // offset (this ran for minutes when every request rebuilt the listing up to the offset).
    for buf in ["32", "4096", "65536"] {
        sh("echo 3 > /proc/sys/vm/drop_caches");
        let n = sh(&format!("{list_dir} '{}' {buf}", dir.display()));
        assert_eq!(n.trim(), "30002", "entries listed with a {buf}-byte buffer");
    }
    // Names exactly the source's, none twice; and ls -l (readdirplus) agrees.
    let names = |d: &Path| sh(&format!("ls -f '{}' | sort", d.display()));
    assert_eq!(names(&dir), names(&big));
    let long = sh(&format!("ls -l '{}' | grep -c '^-r--r--r--'", dir.display()));
    assert_eq!(long.trim(), "30000");
}

#[test]
fn a_name_longer_than_255_bytes_is_enametoolong_and_ioctls_are_enotty_quietly() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("f"), b"data");
    let digest = env.add(&src);
    let m = env.mount();
    let long = "x".repeat(300);
    let e = fs::metadata(m.path(&digest).join(&long)).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG), "{e}");
    let e = fs::metadata(m.dir.join(&long)).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG), "{e}");
    // 255 bytes is a valid name, just not there.
    let e = fs::metadata(m.path(&digest).join("y".repeat(255))).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");

    // FS_IOC_GETFLAGS (what lsattr and cp probe with): no such ioctl, and nothing logged.
    let f = fs::File::open(m.path(&digest).join("f")).unwrap();
    let mut flags: libc::c_long = 0;
    const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
    use std::os::unix::io::AsRawFd;
    for _ in 0..3 {
        // SAFETY: a valid descriptor and a pointer to a long, as the ioctl expects.
        let rc = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_GETFLAGS, &mut flags) };
        assert_eq!(rc, -1);
        let errno = std::io::Error::last_os_error().raw_os_error();
        assert!(matches!(errno, Some(libc::ENOTTY) | Some(libc::ENOSYS)), "{errno:?}");
    }
    assert!(!m.log().contains("Not Implemented"), "{}", m.log());
    // The mount names itself: type `fuse.vorpalfs` (so `findmnt -t fuse.vorpalfs` finds it),
    // source `vorpalfs`.
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info.lines().find(|l| l.split(' ').nth(4) == Some(m.dir.to_str().unwrap())).unwrap();
    let fields: Vec<&str> = line.split(" - ").nth(1).unwrap().split(' ').collect();
    assert_eq!(fields[..2], ["fuse.vorpalfs", "vorpalfs"], "{line}");
}

/// Where `fd` has data, by `SEEK_DATA`/`SEEK_HOLE`: `[start, end)` ranges.
fn data_ranges(f: &fs::File, size: u64) -> Vec<(u64, u64)> {
    use std::os::unix::io::AsRawFd;
    let mut out = Vec::new();
    let mut at = 0i64;
    loop {
        // SAFETY: a valid descriptor; lseek only moves its offset.
        let start = unsafe { libc::lseek(f.as_raw_fd(), at, libc::SEEK_DATA) };
        if start < 0 {
            assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::ENXIO));
            return out;
        }
        // SAFETY: as above.
        let end = unsafe { libc::lseek(f.as_raw_fd(), start, libc::SEEK_HOLE) };
        assert!(end > start && end as u64 <= size, "hole at {end} after data at {start}");
        out.push((start as u64, end as u64));
        if end as u64 == size {
            return out;
        }
        at = end;
    }
}

#[test]
fn a_sparse_file_reads_whole_reports_its_holes_and_copies_out_sparse() {
    let env = Env::new();
    let src = env.path("src");
    // 1 MiB of data, a 20 MiB hole, 1 MiB of data, a 12 MiB hole to the end.
    const M: usize = 1 << 20;
    let mut data = vec![0u8; 34 * M];
    data[..M].copy_from_slice(&random_bytes(M, 5));
    data[21 * M..22 * M].copy_from_slice(&random_bytes(M, 6));
    write(&src.join("disk.img"), &data);
    let digest = env.add(&src);
    let m = env.mount();
    let path = m.path(&digest).join("disk.img");

    assert_eq!(fs::read(&path).unwrap(), data, "the bytes, holes included");
    // Holes are whole 4 MiB chunks of zeros: of 32 MiB of zeros at least 32 - 3*4 are reported.
    let meta = fs::metadata(&path).unwrap();
    let allocated = meta.blocks() * 512;
    assert!(allocated >= 2 * M as u64 && allocated <= 14 * M as u64, "st_blocks {} of {}", meta.blocks(), data.len());
    let f = fs::File::open(&path).unwrap();
    let ranges = data_ranges(&f, data.len() as u64);
    let in_data = |i: usize| ranges.iter().any(|&(s, e)| (s..e).contains(&(i as u64)));
    assert!(ranges.iter().map(|(s, e)| e - s).sum::<u64>() == allocated, "{ranges:?} against st_blocks");
    assert!(in_data(0) && in_data(22 * M - 1), "{ranges:?}");
    assert!(data.iter().enumerate().all(|(i, &b)| b == 0 || in_data(i)), "data reported as a hole: {ranges:?}");
    // The trailing zeros are a hole but for a short last chunk (a hole is a whole 4 MiB chunk).
    assert!(!(26 * M..30 * M).any(in_data), "the trailing zeros are a hole: {ranges:?}");

    // cp keeps it sparse (it walks SEEK_DATA/SEEK_HOLE when st_blocks shows holes).
    let copy = env.path("copy.img");
    let out = Command::new("cp").arg(&path).arg(&copy).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::read(&copy).unwrap(), data);
    let copied = fs::metadata(&copy).unwrap().blocks() * 512;
    assert!(copied <= 14 * M as u64, "the copy takes {copied} bytes");
    // A file without holes is all data.
    write(&src.join("dense"), &random_bytes(6 * M, 7));
    let dense = env.add(&src);
    let p = m.path(&dense).join("dense");
    assert_eq!(fs::metadata(&p).unwrap().blocks() * 512, 6 * M as u64);
    assert_eq!(data_ranges(&fs::File::open(&p).unwrap(), 6 * M as u64), vec![(0, 6 * M as u64)]);
}

#[test]
fn extended_attributes_are_off_by_default_so_ls_l_costs_no_getxattr_round_trips() {
    let env = Env::new();
    let src = env.path("src");
    for i in 0..200 {
        write(&src.join(format!("d/f{i:03}")), format!("{i}\n").as_bytes());
    }
    let digest = env.add(&src);
    let m = env.mount();
    let dir = m.path(&digest).join("d");
    // The daemon answers ENOSYS, after which the kernel answers every getxattr itself with
    // EOPNOTSUPP (scripts/bench/dirs.sh measures the round trips this saves on `ls -l`).
    let probe = CString::new(dir.join("f000").as_os_str().as_bytes()).unwrap();
    let name = CString::new("user.vorpalfs.digest").unwrap();
    for _ in 0..2 {
        // SAFETY: valid C strings; a null buffer of size 0 asks only for the value's length.
        let rc = unsafe { libc::getxattr(probe.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
        assert_eq!(rc, -1);
        assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EOPNOTSUPP));
    }
    let out = Command::new("ls").arg("-l").arg(&dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("-r--r--r--")).count(), 200);
    // Everything else is as with attributes on.
    assert_eq!(fs::read(dir.join("f123")).unwrap(), b"123\n");
    drop(m);
    // `--xattrs=false` says so explicitly (over a config file's `xattrs = true`, say), and
    // `config show` names where the setting came from.
    let shown = env.run(["--xattrs=false", "config", "show"]).stdout;
    assert!(shown.lines().any(|l| l.contains("xattrs") && l.contains("false") && l.contains("--xattrs")), "{shown}");
}
