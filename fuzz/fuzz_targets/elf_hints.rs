#![no_main]
//! `vorpalfs_store::fuzzing::elf_hints`: see that module for what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| vorpalfs_store::fuzzing::elf_hints(data));
