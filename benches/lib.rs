//! Shared inputs of the criterion benchmarks (`cargo bench`).
//!
//! The system-level comparisons against other tools live in `scripts/bench/`.

use std::io::Read;

/// Up to `n` bytes of real binaries from `/usr/bin` (what an artifact store mostly holds),
/// padded with pseudo-random bytes if the machine has fewer.
pub fn real_data(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    if let Ok(dir) = std::fs::read_dir("/usr/bin") {
        let mut paths: Vec<_> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            if out.len() >= n {
                break;
            }
            if let Ok(f) = std::fs::File::open(&p) {
                let _ = f.take((n - out.len()) as u64).read_to_end(&mut out);
            }
        }
    }
    let pad = n - out.len();
    out.extend(vorpalfs_store::testing::pseudo_random(pad, 0x2545_F491_4F6C_DD1D));
    out
}
