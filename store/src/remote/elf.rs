//! What a dynamic loader reads of an ELF shared library or executable before the program runs,
//! found from the file's own headers. A loader reads the file header, the program headers, the
//! `.dynamic` section and the tables it names (symbols, strings, hashes, versions, relocations),
//! then writes every page of the writable segments it relocates; faulted one page at a time
//! through a lazy mount, each of those places would be a round trip. Lazy reads use these
//! ranges to fetch them at once, in parallel, as soon as the first bytes of a large ELF file
//! arrive (`lazy.rs`).
//!
//! The bytes come from S3 (verified against their digests, but of an artifact nobody reviewed):
//! every count is capped, every offset and size is checked against the file's size, and nothing
//! is allocated by a count read from the file. Only 64-bit little-endian files are understood
//! (x86-64, AArch64, RISC-V); anything else gives no ranges, which only costs speed.

use std::ops::Range;

/// The ELF file header, and one program header, of a 64-bit file.
#[cfg(test)]
const EHDR_LEN: usize = 64;
const PHDR_LEN: usize = 56;
/// The most program headers read (linkers write about a dozen).
const MAX_PHDRS: usize = 256;
/// One `.dynamic` entry, and the most read (linkers write a few dozen).
const DYN_LEN: usize = 16;
const MAX_DYN: usize = 1024;
/// The most any one table may span: a symbol table's size is not written down, so it is taken
/// to run to the next table, never further than this.
const MAX_TABLE: u64 = 256 << 20;

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PF_X: u32 = 1;
const PF_W: u32 = 2;

/// The `.dynamic` tags whose tables a loader reads: start tags with their size tags (`None`:
/// the size is not written down).
const TABLES: &[(i64, Option<i64>)] = &[
    (5, Some(10)),       // DT_STRTAB, DT_STRSZ
    (6, None),           // DT_SYMTAB
    (4, None),           // DT_HASH
    (0x6fff_fef5, None), // DT_GNU_HASH
    (0x6fff_fff0, None), // DT_VERSYM
    (0x6fff_fffe, None), // DT_VERNEED
    (7, Some(8)),        // DT_RELA, DT_RELASZ
    (17, Some(18)),      // DT_REL, DT_RELSZ
    (23, Some(2)),       // DT_JMPREL, DT_PLTRELSZ
    (36, Some(35)),      // DT_RELR, DT_RELRSZ
];

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// `start..start+len` if it lies within a file of `size` bytes.
fn within(start: u64, len: u64, size: u64) -> Option<Range<u64>> {
    let end = start.checked_add(len)?;
    (end <= size).then_some(start..end)
}

/// Where the program headers are, if `head` (the first bytes of a file of `size` bytes)
/// starts a 64-bit little-endian ELF executable or shared object.
pub(crate) fn program_headers(head: &[u8], size: u64) -> Option<Range<u64>> {
    if head.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    // ET_EXEC or ET_DYN: relocatable objects and core files are not loaded.
    if !matches!(u16_at(head, 16)?, 2 | 3) || usize::from(u16_at(head, 54)?) != PHDR_LEN {
        return None;
    }
    let count = usize::from(u16_at(head, 56)?);
    if count == 0 || count > MAX_PHDRS {
        return None;
    }
    within(u64_at(head, 32)?, (count * PHDR_LEN) as u64, size)
}

/// What the program headers say a loader maps.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Segments {
    /// Each loaded segment: its address, its offset in the file, its size there and its flags.
    loads: Vec<(u64, u64, u64, u32)>,
    /// The file ranges of the writable segments (relocated, so read whole).
    pub writable: Vec<Range<u64>>,
    /// The file range of `.dynamic`.
    pub dynamic: Option<Range<u64>>,
}

impl Segments {
    /// The file ranges of every loaded segment, the executable ones first (a program runs
    /// through its code before it reads most of its data).
    pub fn mapped(&self) -> Vec<Range<u64>> {
        let mut loads: Vec<_> = self.loads.iter().collect();
        loads.sort_by_key(|(_, _, _, flags)| flags & PF_X == 0);
        loads.iter().map(|(_, off, len, _)| *off..off + len).collect()
    }

    /// The file offset of address `vaddr`, and how many bytes of its segment follow it.
    fn offset_of(&self, vaddr: u64) -> Option<(u64, u64)> {
        self.loads
            .iter()
            .find(|(at, _, len, _)| vaddr >= *at && vaddr - at < *len)
            .map(|(at, off, len, _)| (off + (vaddr - at), len - (vaddr - at)))
    }
}

/// Parses the program headers `ph` (the bytes [`program_headers`] located) of a file of `size`
/// bytes. Segments that do not fit in the file are left out.
pub(crate) fn segments(ph: &[u8], size: u64) -> Segments {
    let mut s = Segments::default();
    for h in ph.chunks_exact(PHDR_LEN).take(MAX_PHDRS) {
        let (Some(kind), Some(flags), Some(offset), Some(vaddr), Some(filesz)) =
            (u32_at(h, 0), u32_at(h, 4), u64_at(h, 8), u64_at(h, 16), u64_at(h, 32))
        else {
            continue;
        };
        let Some(range) = within(offset, filesz, size) else { continue };
        match kind {
            PT_LOAD if filesz > 0 => {
                s.loads.push((vaddr, offset, filesz, flags));
                if flags & PF_W != 0 {
                    s.writable.push(range);
                }
            }
            PT_DYNAMIC if filesz > 0 => {
                s.dynamic = Some(range.start..range.end.min(range.start + (MAX_DYN * DYN_LEN) as u64));
            }
            _ => {}
        }
    }
    s
}

/// The file ranges of the tables `.dynamic` (its bytes `dynamic`) names, merged and in offset
/// order. A table whose size is not written down runs to the next table's start or its
/// segment's end, at most [`MAX_TABLE`].
pub(crate) fn tables(dynamic: &[u8], segs: &Segments) -> Vec<Range<u64>> {
    let mut tags: Vec<(i64, u64)> = Vec::new();
    for e in dynamic.chunks_exact(DYN_LEN).take(MAX_DYN) {
        let (Some(tag), Some(val)) = (u64_at(e, 0), u64_at(e, 8)) else { break };
        let tag = tag as i64;
        if tag == 0 {
            break;
        }
        if TABLES.iter().any(|(s, z)| *s == tag || *z == Some(tag)) {
            tags.push((tag, val));
        }
    }
    let value = |t: i64| tags.iter().find(|(k, _)| *k == t).map(|(_, v)| *v);
    // Each table as (file offset, size if written down, bytes left in its segment).
    let mut found: Vec<(u64, Option<u64>, u64)> = TABLES
        .iter()
        .filter_map(|(start, len)| {
            let (off, left) = segs.offset_of(value(*start)?)?;
            Some((off, len.and_then(value), left))
        })
        .collect();
    found.sort_unstable();
    let starts: Vec<u64> = found.iter().map(|(o, _, _)| *o).collect();
    let mut out: Vec<Range<u64>> = Vec::new();
    for (off, len, left) in found {
        let len = len.unwrap_or_else(|| {
            let next = starts.iter().find(|s| **s > off).map_or(u64::MAX, |s| s - off);
            next.min(left)
        });
        let r = off..off + len.min(left).min(MAX_TABLE);
        if r.is_empty() {
            continue;
        }
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal 64-bit shared object: header, `phdrs` at 64, and `body` after them.
    fn elf(phdrs: &[(u32, u32, u64, u64, u64)], body: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; EHDR_LEN];
        b[..6].copy_from_slice(b"\x7fELF\x02\x01");
        b[16..18].copy_from_slice(&3u16.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&(PHDR_LEN as u16).to_le_bytes());
        b[56..58].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
        for &(kind, flags, offset, vaddr, filesz) in phdrs {
            let mut h = [0u8; PHDR_LEN];
            h[0..4].copy_from_slice(&kind.to_le_bytes());
            h[4..8].copy_from_slice(&flags.to_le_bytes());
            h[8..16].copy_from_slice(&offset.to_le_bytes());
            h[16..24].copy_from_slice(&vaddr.to_le_bytes());
            h[32..40].copy_from_slice(&filesz.to_le_bytes());
            b.extend_from_slice(&h);
        }
        b.extend_from_slice(body);
        b
    }

    fn dynamic(entries: &[(i64, u64)]) -> Vec<u8> {
        let mut b = Vec::new();
        for (t, v) in entries.iter().chain(&[(0, 0)]) {
            b.extend_from_slice(&t.to_le_bytes());
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    #[test]
    fn finds_the_writable_segments_dynamic_and_its_tables() {
        // Read-only segment at 0 (64 KiB), writable at file 0x10000 / address 0x11000 (8 KiB).
        let phdrs = [
            (PT_LOAD, 4, 0, 0, 0x10000),
            (PT_LOAD, 6, 0x10000, 0x11000, 0x2000),
            (PT_DYNAMIC, 6, 0x10100, 0x11100, 0x100),
        ];
        let size = 0x12000;
        let file = elf(&phdrs, &[]);
        let ph = program_headers(&file, size).expect("an ELF file");
        assert_eq!(ph, 64..64 + 3 * PHDR_LEN as u64);
        let segs = segments(&file[ph.start as usize..ph.end as usize], size);
        assert_eq!(segs.writable, vec![0x10000..0x12000]);
        assert_eq!(segs.dynamic, Some(0x10100..0x10200));
        // symtab at 0x200 runs to the hash at 0x800; strtab 0x1000 + 0x300; rela at 0x2000 + 0x600
        // (touching the relr at 0x2600 + 0x10: merged); jmprel in the writable segment's address.
        let d = dynamic(&[
            (6, 0x200),
            (0x6fff_fef5, 0x800),
            (5, 0x1000),
            (10, 0x300),
            (7, 0x2000),
            (8, 0x600),
            (36, 0x2600),
            (35, 0x10),
            (23, 0x11800),
            (2, 0x100),
        ]);
        assert_eq!(tables(&d, &segs), vec![0x200..0x1300, 0x2000..0x2610, 0x10800..0x10900]);
    }

    #[test]
    fn phdrs_past_the_end_of_the_file_are_not_read() {
        let file = elf(&[(PT_LOAD, 4, 0, 0, 0x1000)], &[]);
        assert!(program_headers(&file, 100).is_none());
        // Nor anything not a 64-bit little-endian executable or shared object.
        let mut obj = file.clone();
        obj[16] = 1; // ET_REL
        assert!(program_headers(&obj, 1 << 20).is_none());
        let mut be = file.clone();
        be[5] = 2;
        assert!(program_headers(&be, 1 << 20).is_none());
        assert!(program_headers(b"#!/bin/sh\n", 1 << 20).is_none());
    }

    #[test]
    fn segments_beyond_the_file_and_tables_outside_every_segment_are_left_out() {
        let phdrs = [(PT_LOAD, 6, 0x1000, 0x1000, u64::MAX - 10), (PT_LOAD, 4, 0, 0, 0x800)];
        let file = elf(&phdrs, &[]);
        let segs = segments(&file[64..64 + 2 * PHDR_LEN], 0x1000);
        assert!(segs.writable.is_empty());
        // A symbol table at an address no segment maps, and one whose size is not written down
        // running to the segment's end.
        let d = dynamic(&[(6, 0x9000), (0x6fff_fff0, 0x700)]);
        assert_eq!(tables(&d, &segs), vec![0x700..0x800]);
        // A table of size 0 is no range (found by the fuzz target).
        let d = dynamic(&[(5, 0x100), (10, 0)]);
        assert_eq!(tables(&d, &segs), Vec::<Range<u64>>::new());
    }
}
