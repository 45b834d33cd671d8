//! Test trees and comparisons.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// Deterministic pseudo-random bytes (the store's own xorshift), incompressible enough to
/// defeat zstd.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    vorpalfs_store::testing::pseudo_random(n, seed)
}

pub fn write(path: &Path, data: &[u8]) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    fs::write(path, data).unwrap();
}

pub fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs a shell command, asserting success; returns stdout.
#[track_caller]
pub fn sh(script: &str) -> String {
    let o = Command::new("bash").arg("-c").arg(script).output().expect("bash");
    assert!(o.status.success(), "`{script}` failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `diff -r --no-dereference A B` is empty, and modes and symlink targets agree too.
#[track_caller]
pub fn assert_same_tree(a: &Path, b: &Path) {
    let o = Command::new("diff").arg("-r").arg("--no-dereference").arg(a).arg(b).output().expect("diff");
    assert!(o.status.success(), "diff -r {} {}:\n{}", a.display(), b.display(), String::from_utf8_lossy(&o.stdout));
    // diff ignores modes and empty directories; compare a listing of type, exec bit and size.
    assert_eq!(listing(a), listing(b), "type/mode listing differs");
}

/// Listing of a tree: relative path, type, exec bit and size (files), target (symlinks).
/// Directory sizes are filesystem-specific and left out.
pub fn listing(root: &Path) -> Vec<String> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<String>) {
        let mut names: Vec<_> = fs::read_dir(root.join(rel)).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        for name in names {
            let rel = rel.join(&name);
            let p = root.join(&rel);
            let meta = fs::symlink_metadata(&p).unwrap();
            let line = if meta.is_dir() {
                walk(root, &rel, out);
                format!("{rel:?} dir")
            } else if meta.is_symlink() {
                format!("{rel:?} symlink -> {:?}", fs::read_link(&p).unwrap())
            } else {
                format!("{rel:?} file size={} exec={}", meta.len(), meta.permissions().mode() & 0o111 != 0)
            };
            out.push(line);
        }
    }
    let mut out = Vec::new();
    walk(root, Path::new(""), &mut out);
    out
}

/// `sha256sum` of every regular file below `root`, as `path  hash` lines sorted by path.
pub fn sha256_all(root: &Path) -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg("find . -type f -print0 | sort -z | xargs -0 -r sha256sum")
        .current_dir(root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
