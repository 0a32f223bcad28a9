//! A batch of wire objects in one body: `count` (u32, little endian), then for each item its length (u32, little
//! endian) and its bytes. Decoding checks every length against the reader's limits before it looks further, so a
//! truncated, padded or oversized batch is an error, never a panic or a large allocation.
//!
//! ```
//! use cryptotl_server::frames;
//! let body = frames::encode(&[b"ab".to_vec(), b"c".to_vec()]);
//! assert_eq!(frames::decode(&body, 4, 16).unwrap(), vec![&b"ab"[..], &b"c"[..]]);
//! assert!(frames::decode(&body[..body.len() - 1], 4, 16).is_err()); // truncated
//! assert!(frames::decode(&body, 1, 16).is_err()); // more items than allowed
//! ```

use crate::error::{HeError, Result};

fn bad(message: String) -> HeError {
    HeError::Deserialize { what: "batch", message }
}

/// Bytes of the framing around `items` items.
///
/// ```
/// use cryptotl_server::frames;
/// let body = frames::encode(&[vec![0u8; 10], vec![1u8; 5]]);
/// assert_eq!(body.len() as u64, 15 + frames::overhead(2));
/// ```
pub fn overhead(items: usize) -> u64 {
    4 + 4 * items as u64
}

/// Frame `items` into one body.
///
/// ```
/// let body = cryptotl_server::frames::encode(&[b"xy".to_vec()]);
/// assert_eq!(body, [1, 0, 0, 0, 2, 0, 0, 0, b'x', b'y']);
/// ```
pub fn encode<T: AsRef<[u8]>>(items: &[T]) -> Vec<u8> {
    let total: usize = items.iter().map(|i| i.as_ref().len() + 4).sum();
    let mut out = Vec::with_capacity(4 + total);
    out.extend_from_slice(&(items.len() as u32).to_le_bytes());
    for item in items {
        out.extend_from_slice(&(item.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(item.as_ref());
    }
    out
}

/// Split a body into its items, refusing more than `max_items` items, an item over `max_item_bytes`, an empty
/// batch, and any byte missing or left over.
///
/// ```
/// use cryptotl_server::frames;
/// let body = frames::encode(&[b"abc".to_vec()]);
/// assert_eq!(frames::decode(&body, 1, 3).unwrap(), vec![&b"abc"[..]]);
/// assert!(frames::decode(&body, 1, 2).is_err()); // the item is over 2 bytes
/// assert!(frames::decode(&frames::encode::<Vec<u8>>(&[]), 1, 3).is_err()); // an empty batch
/// ```
pub fn decode(body: &[u8], max_items: usize, max_item_bytes: u64) -> Result<Vec<&[u8]>> {
    let word = |at: usize| -> Result<usize> {
        body.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
            .ok_or_else(|| bad(format!("truncated at byte {at} of {}", body.len())))
    };
    let count = word(0)?;
    if count == 0 || count > max_items {
        return Err(bad(format!("{count} items; a batch holds 1 to {max_items}")));
    }
    let mut items = Vec::with_capacity(count);
    let mut at = 4;
    for i in 0..count {
        let len = word(at)?;
        if len as u64 > max_item_bytes {
            return Err(bad(format!("item {i} is {len} bytes, over the limit of {max_item_bytes}")));
        }
        at += 4;
        let item = body.get(at..at + len).ok_or_else(|| bad(format!("item {i} truncated: {len} bytes announced, {} left", body.len() - at)))?;
        items.push(item);
        at += len;
    }
    if at != body.len() {
        return Err(bad(format!("{} bytes after the last item", body.len() - at)));
    }
    Ok(items)
}
