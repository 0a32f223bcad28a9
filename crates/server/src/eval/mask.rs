//! Expanding a seeded LWE list: the masks of the client's input ciphertexts, drawn from their compression seed.
//!
//! tfhe-rs's `decompress_into_lwe_ciphertext_list` gives the same words, but draws each uniform u64 as eight calls
//! of its byte generator, each with the generator's 128-bit table-index bookkeeping: about 250 MB/s a core, and
//! 384 masks of 801 words are 2.4 MB a sample, nearly all of the linear stage's time (docs/benchmarks.md). The
//! stream itself is AES-128 in counter mode (tfhe-csprng checks it against the `ctr` crate's `Ctr128LE`): with a
//! plain seed the key is the seed and the counter starts at the seed's first table index. So the masks are the
//! words of one contiguous run of that keystream, ciphertext after ciphertext (tfhe-rs forks one child per
//! ciphertext, each taking exactly `n * 8` bytes for a native 64-bit modulus, and a fork's children take the
//! parent's bytes in order). [`expand`] draws that run with tfhe-csprng's own AES-NI block cipher, eight blocks a
//! call, and falls back to tfhe-rs's expansion for anything else (an XOF seed, another modulus). The tests compare
//! the two word for word.
//!
//! A seed is also where a hostile client could make tfhe-rs panic: a stream that starts near the end of its
//! 2^132-byte table cannot be forked into the masks it needs. [`check_seed`] refuses such seeds (inputs and keys
//! alike) before anything expands them.

use tfhe::core_crypto::commons::math::random::CompressionSeed;
use tfhe::core_crypto::prelude::*;
use tfhe_csprng::generators::aes_ctr::{AES_CALLS_PER_BATCH, Aes128Key, AesBlockCipher, BYTES_PER_AES_CALL, BYTES_PER_BATCH, TableIndex};
use tfhe_csprng::generators::default::DefaultAes128BlockCipher;
use tfhe_csprng::seeders::SeedKind;

use crate::error::{HeError, Result};

/// Where a seed's stream may start, in bytes: tfhe-rs starts a fresh seed at byte 0 or 1, and a seed taken from a
/// generator in use where its last object ended, so an honest start is far below this.
pub const MAX_FIRST_BYTE: u128 = 1 << 64;

/// Refuse a compression seed whose stream starts past [`MAX_FIRST_BYTE`]: its objects' masks could run past the end
/// of the stream's table, where tfhe-rs's expansion panics.
///
/// ```
/// use tfhe::core_crypto::commons::math::random::{CompressionSeed, Seed};
/// use cryptotl_server::eval::mask::check_seed;
/// assert!(check_seed("input", &CompressionSeed::from(Seed(3))).is_ok());
/// ```
pub fn check_seed(what: &'static str, seed: &CompressionSeed) -> Result<()> {
    first_byte(what, seed).map(|_| ())
}

/// The byte of its stream at which `seed` starts, if [`check_seed`] accepts it.
fn first_byte(what: &'static str, seed: &CompressionSeed) -> Result<u128> {
    match TableIndex::distance(&seed.inner.first_index, &TableIndex::FIRST) {
        Some(start) if start.0 < MAX_FIRST_BYTE => Ok(start.0),
        _ => Err(HeError::Shape {
            what,
            message: format!("its compression seed starts the mask stream at {:?}, past the first 2^64 bytes (a tfhe-rs seed starts at byte 0 or 1)", seed.inner.first_index),
        }),
    }
}

/// The list's ciphertexts in full: `count x (n + 1)` words, each ciphertext's mask then its body, exactly as
/// tfhe-rs's `decompress_into_lwe_ciphertext_list` gives them. A seed [`check_seed`] refuses is an error.
///
/// ```
/// use tfhe::core_crypto::prelude::*;
/// use tfhe::core_crypto::commons::math::random::Seed;
/// use cryptotl_server::eval::mask::expand;
/// let list = SeededLweCiphertextList::new(0u64, LweSize(5), LweCiphertextCount(3), Seed(7).into(), CiphertextModulus::new_native());
/// let words = expand(&list).unwrap();
/// assert_eq!(words.len(), 3 * 5);
/// assert_eq!(words, list.decompress_into_lwe_ciphertext_list().into_container());
/// ```
pub fn expand(list: &SeededLweCiphertextListOwned<u64>) -> Result<Vec<u64>> {
    let seed = list.compression_seed();
    let start = first_byte("seeded ciphertext list", &seed)?;
    let size = list.lwe_size().0;
    if size < 2 {
        // No mask to draw (tfhe-rs's expansion panics on such a list too); `EncryptedInput::check` refuses it first.
        return Err(HeError::Shape { what: "seeded ciphertext list", message: format!("LWE size {size}: no mask") });
    }
    let n = size - 1;
    let count = list.lwe_ciphertext_count().0;
    // An XOF seed or another modulus: tfhe-rs's own expansion.
    let (SeedKind::Ctr(key), true) = (seed.inner.seed, list.ciphertext_modulus().is_native_modulus()) else {
        return Ok(list.clone().decompress_into_lwe_ciphertext_list().into_container());
    };
    let stream = keystream(Aes128Key::new(u128::from_le(key.0)), start, count * n * 8);
    let mut out = vec![0u64; count * size];
    for ((ct, mask), &body) in out.chunks_exact_mut(size).zip(stream.chunks_exact(n * 8)).zip(list.as_ref()) {
        for (w, b) in ct[..n].iter_mut().zip(mask.chunks_exact(8)) {
            *w = u64::from_le_bytes(b.try_into().expect("chunks of 8"));
        }
        ct[n] = body;
    }
    Ok(out)
}

/// `len` bytes of the AES-128-CTR keystream of `key` from byte `start` on: byte p is byte `p % 16` of the block
/// that encrypts counter `p / 16` (little-endian), as tfhe-csprng's generator makes it with a zero offset.
fn keystream(key: Aes128Key, start: u128, len: usize) -> Vec<u8> {
    let mut cipher = DefaultAes128BlockCipher::new(key);
    let skip = (start % BYTES_PER_AES_CALL as u128) as usize;
    let mut counter = start / BYTES_PER_AES_CALL as u128;
    let mut bytes = Vec::with_capacity((skip + len).next_multiple_of(BYTES_PER_BATCH));
    while bytes.len() < skip + len {
        let blocks: [u128; AES_CALLS_PER_BATCH] = std::array::from_fn(|i| counter.wrapping_add(i as u128).to_le());
        bytes.extend_from_slice(&cipher.generate_batch(blocks));
        counter = counter.wrapping_add(AES_CALLS_PER_BATCH as u128);
    }
    bytes.drain(..skip);
    bytes.truncate(len);
    bytes
}

#[cfg(test)]
mod tests {
    use tfhe::core_crypto::commons::math::random::{Seed, XofSeed};
    use tfhe_csprng::generators::aes_ctr::{AesCtrParams, AesIndex, ByteIndex};

    use super::*;

    /// A seeded list of `count` ciphertexts of dimension `n`, its masks drawn from `seed`. The bodies are arbitrary
    /// words: expansion copies them and never reads them, so no key is needed (and this crate has none).
    fn seeded(seed: CompressionSeed, n: usize, count: usize) -> SeededLweCiphertextListOwned<u64> {
        let bodies = (0..count as u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).collect();
        SeededLweCiphertextList::from_container(bodies, LweSize(n + 1), seed, CiphertextModulus::new_native())
    }

    fn tfhe_rs(list: &SeededLweCiphertextListOwned<u64>) -> Vec<u64> {
        list.clone().par_decompress_into_lwe_ciphertext_list().into_container()
    }

    /// Seeds as the client makes them (a plain seed), of the shipped sets' dimensions and odd ones, with lists whose
    /// masks end mid-block and mid-batch.
    #[test]
    fn plain_seeds_give_tfhe_rs_words() {
        for (seed, n, count) in [(1u128, 801, 384), (u128::MAX, 742, 3), (0xdead_beef << 64 | 5, 7, 1), (42, 1, 129), (3, 801, 1)] {
            let list = seeded(Seed(seed).into(), n, count);
            assert_eq!(expand(&list).unwrap(), tfhe_rs(&list), "seed {seed:#x}, n = {n}, {count} ciphertexts");
        }
    }

    fn starting_at(aes: u128, byte: usize) -> CompressionSeed {
        CompressionSeed { inner: AesCtrParams { seed: SeedKind::Ctr(Seed(99)), first_index: TableIndex::new(AesIndex(aes), ByteIndex(byte)) } }
    }

    /// Seeds whose stream starts inside a block, or a little way in (a seed taken from a generator in use).
    #[test]
    fn any_first_index_gives_tfhe_rs_words() {
        for (aes, byte) in [(0u128, 0usize), (0, 1), (5, 7), (1 << 50, 15), ((1 << 60) - 1, 15)] {
            let list = seeded(starting_at(aes, byte), 13, 11);
            assert_eq!(expand(&list).unwrap(), tfhe_rs(&list), "first index ({aes}, {byte})");
        }
    }

    /// A stream that starts at the end of its table is an error (tfhe-rs's expansion panics on it), and so is any
    /// start past the first 2^64 bytes; the last start within them is accepted.
    #[test]
    fn a_stream_starting_near_its_end_is_refused() {
        let list = seeded(starting_at(u128::MAX - 3, 9), 13, 11);
        assert!(std::panic::catch_unwind(|| tfhe_rs(&list)).is_err(), "tfhe-rs panics on it");
        assert!(matches!(expand(&list), Err(HeError::Shape { .. })));
        let past = starting_at(1 << 60, 0); // byte 2^64
        assert!(check_seed("input", &past).is_err());
        assert!(check_seed("input", &starting_at((1 << 60) - 1, 15)).is_ok());
    }

    /// An XOF seed (another client's tfhe-rs may send one) takes tfhe-rs's own path, with the same result.
    #[test]
    fn xof_seeds_fall_back_to_tfhe_rs() {
        let seed = CompressionSeed { inner: AesCtrParams::from(XofSeed::new_u128(77, *b"cryptotl")) };
        let list = seeded(seed, 17, 4);
        assert_eq!(expand(&list).unwrap(), tfhe_rs(&list));
    }

    /// A list with no mask (LWE size 0 or 1) is an error, not a panic.
    #[test]
    fn a_list_without_masks_is_refused() {
        for size in [0, 1] {
            let list = SeededLweCiphertextList::from_container(vec![5u64; 3], LweSize(size), Seed(1).into(), CiphertextModulus::new_native());
            assert!(matches!(expand(&list), Err(HeError::Shape { .. })), "LWE size {size}");
        }
    }

    /// The masks are not all zero or repeated: the comparison above would pass for two equally broken paths only if
    /// tfhe-rs were broken too, but check the words look like a keystream.
    #[test]
    fn masks_are_distinct_words() {
        let list = seeded(Seed(5).into(), 64, 8);
        let words = expand(&list).unwrap();
        let mut masks: Vec<u64> = words.chunks_exact(65).flat_map(|ct| ct[..64].to_vec()).collect();
        masks.sort_unstable();
        masks.dedup();
        assert_eq!(masks.len(), 8 * 64);
    }
}
