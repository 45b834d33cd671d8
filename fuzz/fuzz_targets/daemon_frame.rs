#![no_main]
//! The daemon's frame reader, as a client (or the daemon) sees a peer's bytes: frames decode or
//! fail, never panic, never allocate past the frame cap.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut r = data;
    while let Ok(Some(_)) = vorpalfs_cli::daemon::protocol::read_frame(&mut r) {}
});
