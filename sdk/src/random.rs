//! Cryptographically secure randomness from the host.
//!
//! ```
//! let nonce = casework_sdk::random::bytes(16);
//! assert_eq!(nonce.len(), 16);
//! ```

/// `len` random bytes.
pub fn bytes(len: usize) -> Vec<u8> {
    // The host serves at most a few KiB per call, so ask in bounded chunks.
    const CHUNK: usize = 4096;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let want = (len - out.len()).min(CHUNK);
        // `want` is at most CHUNK, which fits in u32.
        let got = crate::host::random_bytes(want as u32);
        if got.is_empty() {
            // A host that returns nothing would loop forever; fail loudly.
            panic!("casework host returned no random bytes");
        }
        out.extend(got.into_iter().take(want));
    }
    out
}
