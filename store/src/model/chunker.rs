//! Content-defined chunking (FastCDC 2020) with the store's parameters.
//!
//! 256 KiB min / 1 MiB average / 4 MiB max: chunks large enough that one S3 ranged GET or one
//! zstd frame is worth its overhead (zstd's ratio on a shared library grows from 2.03 at 16 KiB to
//! 2.34 at 1 MiB), small enough that a lazy read of a few pages fetches little. Files no larger
//! than the minimum are one chunk and skip the chunker (and its 4 MiB buffer) entirely.

use std::io::{ErrorKind, Read};

use fastcdc::v2020::FastCDC;

pub const MIN_SIZE: usize = 256 << 10;
pub const AVG_SIZE: usize = 1 << 20;
pub const MAX_SIZE: usize = 4 << 20;

/// The read buffer: several maximal chunks, so the unchunked tail moved to its front before a
/// refill is at most a quarter of what is read.
const BUF_SIZE: usize = 4 * MAX_SIZE;

/// Cuts streams into chunks, reusing one read buffer (allocated on first use) across streams.
/// Chunks are handed out as slices of it: no copy per chunk. The cut points are FastCDC's over
/// the whole stream, whatever the reads return.
#[derive(Default)]
pub struct Chunker {
    buf: Vec<u8>,
}

impl Chunker {
    pub fn new() -> Chunker {
        Chunker::default()
    }

    /// Feeds `f` the chunks of `reader` in order. `size` is the expected length: at most
    /// [`MIN_SIZE`] means one chunk, read directly. Returns the number of bytes read.
    pub fn chunks<R: Read>(
        &mut self,
        mut reader: R,
        size: u64,
        mut f: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<u64> {
        if self.buf.is_empty() {
            self.buf = vec![0; BUF_SIZE];
        }
        let buf = &mut self.buf[..];
        if size <= MIN_SIZE as u64 {
            // Read one byte past the limit so that a file that grew is noticed.
            let n = fill(&mut reader, &mut buf[..MIN_SIZE + 1])?;
            if n > MIN_SIZE {
                // It grew past the one-chunk limit: the caller reports the change.
                return Ok(n as u64);
            }
            if n > 0 {
                f(&buf[..n])?;
            }
            return Ok(n as u64);
        }
        let (mut start, mut len, mut eof, mut total) = (0usize, 0usize, false, 0u64);
        loop {
            if !eof && len - start < MAX_SIZE {
                buf.copy_within(start..len, 0);
                len -= start;
                start = 0;
                let n = fill(&mut reader, &mut buf[len..])?;
                eof = len + n < BUF_SIZE;
                len += n;
            }
            if start == len {
                return Ok(total);
            }
            let window = (len - start).min(MAX_SIZE);
            let (_, end) = FastCDC::new(&buf[..len], MIN_SIZE, AVG_SIZE, MAX_SIZE).cut(start, window);
            f(&buf[start..end])?;
            total += (end - start) as u64;
            start = end;
        }
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn fill(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::pseudo_random;

    fn cut(data: &[u8]) -> Vec<Vec<u8>> {
        cut_from(data, data.len())
    }

    /// Chunks `data` read through a reader that returns at most `step` bytes per read.
    fn cut_from(data: &[u8], step: usize) -> Vec<Vec<u8>> {
        struct Short<'a>(&'a [u8], usize);
        impl Read for Short<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(self.1).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut out = Vec::new();
        let n = Chunker::new()
            .chunks(Short(data, step), data.len() as u64, |c| {
                out.push(c.to_vec());
                Ok(())
            })
            .unwrap();
        assert_eq!(n, data.len() as u64);
        out
    }

    #[test]
    fn cuts_are_fastcdc_over_the_whole_stream_whatever_the_reads() {
        let data = pseudo_random(40 << 20, 9);
        let whole: Vec<usize> =
            FastCDC::new(&data, MIN_SIZE, AVG_SIZE, MAX_SIZE).map(|c| c.offset + c.length).collect();
        for step in [data.len(), 1 << 20, 100_003] {
            let ends: Vec<usize> = cut_from(&data, step)
                .iter()
                .scan(0, |at, c| {
                    *at += c.len();
                    Some(*at)
                })
                .collect();
            assert_eq!(ends, whole, "reads of {step} bytes");
        }
    }

    #[test]
    fn one_chunker_serves_many_streams() {
        let (a, b) = (pseudo_random(9 << 20, 1), pseudo_random(100, 2));
        let mut ch = Chunker::new();
        for data in [&a, &b, &a] {
            let mut got = Vec::new();
            ch.chunks(&data[..], data.len() as u64, |c| {
                got.extend_from_slice(c);
                Ok(())
            })
            .unwrap();
            assert_eq!(&got, data);
        }
    }

    #[test]
    fn chunks_cover_the_input_within_bounds() {
        let data = pseudo_random(9 << 20, 42);
        let chunks = cut(&data);
        assert_eq!(chunks.concat(), data);
        assert!(chunks.len() > 3);
        for c in &chunks[..chunks.len() - 1] {
            assert!(c.len() >= MIN_SIZE && c.len() <= MAX_SIZE, "{}", c.len());
        }
    }

    #[test]
    fn an_insertion_changes_only_nearby_chunks() {
        let data = pseudo_random(12 << 20, 7);
        let mut edited = data.clone();
        edited.splice(5 << 20..5 << 20, b"inserted".iter().copied());
        let a: std::collections::HashSet<_> = cut(&data).into_iter().collect();
        let b = cut(&edited);
        let shared = b.iter().filter(|c| a.contains(*c)).count();
        assert!(shared + 2 >= b.len(), "only the edited chunk(s) differ: {shared}/{}", b.len());
    }

    #[test]
    fn small_input_is_one_chunk_and_empty_is_none() {
        assert_eq!(cut(b"hello").len(), 1);
        assert!(cut(b"").is_empty());
    }
}
