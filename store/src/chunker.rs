//! Content-defined chunking (FastCDC 2020) with the store's parameters.
//!
//! 256 KiB min / 1 MiB average / 4 MiB max: chunks large enough that one S3 ranged GET or one
//! zstd frame is worth its overhead (zstd's ratio on a shared library grows from 2.03 at 16 KiB to
//! 2.34 at 1 MiB), small enough that a lazy read of a few pages fetches little. Files no larger
//! than the minimum are one chunk and skip the chunker (and its 4 MiB buffer) entirely.

use std::io::Read;

use fastcdc::v2020::StreamCDC;

pub const MIN_SIZE: usize = 256 << 10;
pub const AVG_SIZE: usize = 1 << 20;
pub const MAX_SIZE: usize = 4 << 20;

/// Feeds `f` the chunks of `reader` in order. `size` is the expected length: at most
/// [`MIN_SIZE`] means one chunk, read directly. Returns the number of bytes read.
pub fn chunk_stream<R: Read>(
    mut reader: R,
    size: u64,
    mut f: impl FnMut(Vec<u8>) -> std::io::Result<()>,
) -> std::io::Result<u64> {
    if size <= MIN_SIZE as u64 {
        // Read one byte past the expected size so that a file that grew is noticed.
        let mut buf = Vec::with_capacity(size as usize + 1);
        (&mut reader).take(MIN_SIZE as u64 + 1).read_to_end(&mut buf)?;
        if buf.len() > MIN_SIZE {
            // It grew past the one-chunk limit: the caller reports the change.
            return Ok(buf.len() as u64);
        }
        let n = buf.len() as u64;
        if n > 0 {
            f(buf)?;
        }
        return Ok(n);
    }
    let mut total = 0u64;
    for chunk in StreamCDC::new(reader, MIN_SIZE, AVG_SIZE, MAX_SIZE) {
        let chunk = chunk.map_err(std::io::Error::from)?;
        total += chunk.length as u64;
        f(chunk.data)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn cut(data: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        chunk_stream(data, data.len() as u64, |c| {
            out.push(c);
            Ok(())
        })
        .unwrap();
        out
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
