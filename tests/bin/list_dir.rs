//! `vorpalfs-list-dir DIR [BUFFER_BYTES]`: lists DIR with `getdents64` calls of the given
//! buffer size (default 4096; 32 is the smallest that holds an entry with a short name), the
//! way `ls -f` does with its own buffer, and prints the number of entries, `.` and `..`
//! included. For tests of resumed listings and for `scripts/bench/dirs.sh`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let Some(dir) = args.first() else {
        eprintln!("usage: vorpalfs-list-dir DIR [BUFFER_BYTES]");
        std::process::exit(2);
    };
    let size: usize = args.get(1).map_or(4096, |a| a.to_str().and_then(|s| s.parse().ok()).expect("a buffer size"));
    let path = CString::new(dir.as_bytes()).expect("a path without NUL");
    // SAFETY: a valid NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        eprintln!("{}: {}", dir.to_string_lossy(), std::io::Error::last_os_error());
        std::process::exit(1);
    }
    // u64 elements: the kernel writes 8-byte aligned records.
    let mut buf = vec![0u64; size.div_ceil(8)];
    let mut count = 0u64;
    loop {
        // SAFETY: the buffer is valid for `size` bytes for the call's duration.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), size) };
        if n < 0 {
            eprintln!("{}: getdents64: {}", dir.to_string_lossy(), std::io::Error::last_os_error());
            std::process::exit(1);
        }
        if n == 0 {
            break;
        }
        let bytes = &buf_bytes(&buf)[..n as usize];
        let mut at = 0;
        while at < bytes.len() {
            // struct linux_dirent64 { u64 ino; i64 off; u16 reclen; u8 type; char name[]; }
            let reclen = u16::from_ne_bytes([bytes[at + 16], bytes[at + 17]]) as usize;
            count += 1;
            at += reclen;
        }
    }
    println!("{count}");
}

fn buf_bytes(buf: &[u64]) -> &[u8] {
    // SAFETY: u64s are plain bytes; the slice covers exactly their storage.
    unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), buf.len() * 8) }
}
