#![no_main]
//! The manifest parser: any text is a manifest or an error naming a place, never a panic.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = vorpalfs_builder::manifest::parse(std::path::Path::new("/fuzz/vorpalfs.toml"), text);
    }
});
