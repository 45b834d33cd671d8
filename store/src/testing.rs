//! Shared by the tests and benchmarks of every crate (not part of the API).

/// Deterministic pseudo-random bytes (xorshift64), incompressible enough to defeat zstd.
pub fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Compresses a chunk as the store does (zstd level 1; kept raw when that is not smaller).
pub fn compress_chunk(data: &[u8]) -> (crate::Codec, Vec<u8>) {
    let mut z = zstd::bulk::Compressor::new(1).expect("zstd context");
    crate::local::pack::encode_chunk(&mut z, data)
}

/// Decodes and verifies a chunk as every read does.
pub fn decode_chunk(
    id: &crate::Digest,
    codec: crate::Codec,
    raw_len: u32,
    stored: bytes::Bytes,
) -> crate::Result<bytes::Bytes> {
    let loc = crate::model::records::Locator { pack: 0, offset: 0, stored_len: stored.len() as u32, raw_len, codec };
    crate::local::pack::decode_chunk(id, &loc, stored, &|| "in a benchmark".to_string())
}
