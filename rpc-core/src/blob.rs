//! [`Blob`]: a byte payload that is sent as MessagePack `bin` and received without a
//! copy.

use std::borrow::Borrow;
use std::cell::RefCell;
use std::fmt;
use std::ops::Deref;

use bytes::Bytes;
use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use serde::{Serialize, Serializer};

/// A byte payload for arguments and results: encoded as one MessagePack `bin` (never
/// element by element), and, when decoded from a frame, a view into the frame's receive
/// buffer rather than a copy of it.
///
/// Use it for file chunks, images, pre-encoded messages: anything large that is just
/// bytes. Cloning is a reference-count increment. It dereferences to `[u8]` and
/// converts to and from [`bytes::Bytes`] and `Vec<u8>` without copying.
///
/// ```
/// use rpc_core::Blob;
///
/// #[rpc_core::service]
/// trait Store {
///     /// Stores a chunk and returns its length.
///     async fn put(&self, key: String, chunk: Blob) -> u64;
///     /// Returns a stored chunk.
///     async fn get(&self, key: String) -> Option<Blob>;
/// }
///
/// let chunk = Blob::from(vec![1, 2, 3]);
/// assert_eq!(&chunk[..], &[1, 2, 3]);
/// let bytes: bytes::Bytes = chunk.into();
/// assert_eq!(bytes.len(), 3);
/// ```
///
/// Wire-compatible with `serde_bytes::ByteBuf` and `Vec<u8>` marked
/// `#[serde(with = "serde_bytes")]`: a peer may use either.
///
/// A received `Blob` keeps the receive buffer it points into alive (typically up to
/// 64 KiB, shared with the other frames read with it). To keep a small piece of a
/// received payload for long, copy it out with [`Blob::copy_from_slice`] or
/// [`to_vec`](slice::to_vec).
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Blob(Bytes);

impl Blob {
    /// An empty blob.
    pub const fn new() -> Blob {
        Blob(Bytes::new())
    }

    /// A blob of static bytes (no allocation).
    ///
    /// ```
    /// assert_eq!(rpc_core::Blob::from_static(b"hi").len(), 2);
    /// ```
    pub const fn from_static(bytes: &'static [u8]) -> Blob {
        Blob(Bytes::from_static(bytes))
    }

    /// A blob holding a copy of `bytes`, sharing no buffer with anything.
    pub fn copy_from_slice(bytes: &[u8]) -> Blob {
        Blob(Bytes::copy_from_slice(bytes))
    }

    /// The bytes, as a [`bytes::Bytes`] (no copy).
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// The bytes, as a [`bytes::Bytes`].
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }
}

impl Deref for Blob {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Blob {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Borrow<[u8]> for Blob {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl From<Bytes> for Blob {
    fn from(bytes: Bytes) -> Blob {
        Blob(bytes)
    }
}

impl From<Vec<u8>> for Blob {
    fn from(bytes: Vec<u8>) -> Blob {
        Blob(Bytes::from(bytes))
    }
}

impl From<&'static [u8]> for Blob {
    fn from(bytes: &'static [u8]) -> Blob {
        Blob(Bytes::from_static(bytes))
    }
}

impl From<String> for Blob {
    fn from(text: String) -> Blob {
        Blob(Bytes::from(text))
    }
}

impl From<Blob> for Bytes {
    fn from(blob: Blob) -> Bytes {
        blob.0
    }
}

impl From<Blob> for Vec<u8> {
    fn from(blob: Blob) -> Vec<u8> {
        blob.0.into()
    }
}

impl PartialEq<[u8]> for Blob {
    fn eq(&self, other: &[u8]) -> bool {
        self.0 == other
    }
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Blob, D::Error> {
        deserializer.deserialize_bytes(BlobVisitor)
    }
}

/// Builds a [`Blob`] from whatever form the decoder offers.
struct BlobVisitor;

impl<'de> Visitor<'de> for BlobVisitor {
    type Value = Blob;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Blob, E> {
        Ok(Blob(share_or_copy(bytes)))
    }

    fn visit_byte_buf<E: de::Error>(self, bytes: Vec<u8>) -> Result<Blob, E> {
        Ok(Blob::from(bytes))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Blob, E> {
        Ok(Blob(share_or_copy(text.as_bytes())))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<Blob, E> {
        Ok(Blob::from(text))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Blob, A::Error> {
        // A peer that sent an array of integers; bounded by what it actually sent.
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(byte) = seq.next_element::<u8>()? {
            bytes.push(byte);
        }
        Ok(Blob::from(bytes))
    }
}

thread_local! {
    /// The buffer being decoded on this thread, if the decoder was given one: a
    /// [`Blob`] decoded from inside it is a view into it instead of a copy.
    static SOURCE: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Runs `decode` on the bytes of `source`, with [`Blob`]s decoded from inside them
/// sharing `source`'s buffer instead of copying. Returns `decode`'s result and
/// `source`, given back. Decodes nested in another `decode_from` on this thread copy.
pub(crate) fn decode_from<R>(source: Bytes, decode: impl FnOnce(&[u8]) -> R) -> (R, Bytes) {
    if source.len() < SHARE_MIN {
        // No blob inside can be big enough to share.
        let result = decode(&source);
        return (result, source);
    }
    SOURCE.with(|cell| {
        let Ok(mut slot) = cell.try_borrow_mut() else {
            // Nested inside another decode: plain (copying) decode.
            let result = decode(&source);
            return (result, source);
        };
        let previous = slot.replace(source);
        drop(slot);
        let result = {
            let slot = cell.borrow();
            decode(slot.as_deref().unwrap_or_default())
        };
        let mut slot = cell.borrow_mut();
        let source = std::mem::replace(&mut *slot, previous).unwrap_or_default();
        (result, source)
    })
}

/// Below this many bytes a blob is copied even out of a frame buffer: copying a small
/// payload costs less than sharing the buffer (an atomic reference count increment and
/// decrement), and a small blob then pins no receive buffer. Measured with `rpc-bench`
/// (`--cpus shared`): sharing made 16 B echoes ~8 % slower and 1 KiB ones ~2 %.
const SHARE_MIN: usize = 2048;

/// `bytes` as a view into the buffer being decoded if they lie inside it and are not
/// small, else a copy.
pub(crate) fn share_or_copy(bytes: &[u8]) -> Bytes {
    if bytes.len() < SHARE_MIN {
        return Bytes::copy_from_slice(bytes);
    }
    SOURCE
        .with(|cell| {
            let slot = cell.try_borrow().ok()?;
            let source = slot.as_ref()?;
            let start = (bytes.as_ptr() as usize).checked_sub(source.as_ptr() as usize)?;
            let end = start.checked_add(bytes.len())?;
            (end <= source.len()).then(|| source.slice(start..end))
        })
        .unwrap_or_else(|| Bytes::copy_from_slice(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode<T: Serialize>(value: &T) -> Bytes {
        Bytes::from(rmp_serde::to_vec(value).unwrap())
    }

    #[test]
    fn decoded_from_a_source_it_shares_the_buffer() {
        let wire = encode(&(Blob::from(vec![7u8; SHARE_MIN]), 5u32));
        let ((blob, n), wire) = decode_from(wire, |body| {
            rmp_serde::from_slice::<(Blob, u32)>(body).unwrap()
        });
        assert_eq!(n, 5);
        assert_eq!(&blob[..], &[7u8; SHARE_MIN][..]);
        let inside = wire.as_ptr_range();
        assert!(
            inside.contains(&blob.as_ptr()),
            "the blob points into the frame buffer: no copy"
        );
    }

    #[test]
    fn small_blobs_are_copied_even_from_a_source() {
        let wire = encode(&Blob::from(vec![1u8; SHARE_MIN - 1]));
        let (blob, wire) = decode_from(wire, |body| rmp_serde::from_slice::<Blob>(body).unwrap());
        assert_eq!(blob.len(), SHARE_MIN - 1);
        assert!(!wire.as_ptr_range().contains(&blob.as_ptr()));
    }

    #[test]
    fn decoded_without_a_source_it_copies() {
        let wire = encode(&Blob::from(vec![2u8; SHARE_MIN]));
        let blob: Blob = rmp_serde::from_slice(&wire).unwrap();
        assert_eq!(&blob[..], &[2u8; SHARE_MIN][..]);
        assert!(!wire.as_ptr_range().contains(&blob.as_ptr()));
    }

    #[test]
    fn bytes_outside_the_source_are_copied() {
        let other = encode(&Blob::from(vec![3u8; SHARE_MIN]));
        let (blob, _) = decode_from(Bytes::from(vec![0u8; 4 * SHARE_MIN]), |_| {
            rmp_serde::from_slice::<Blob>(&other).unwrap()
        });
        assert_eq!(&blob[..], &[3u8; SHARE_MIN][..]);
        assert!(!other.as_ptr_range().contains(&blob.as_ptr()));
    }

    #[test]
    fn nested_decodes_copy_and_the_outer_one_still_shares() {
        let outer = encode(&Blob::from(vec![4u8; SHARE_MIN]));
        let inner = encode(&Blob::from(vec![5u8; SHARE_MIN]));
        let ((a, b), outer) = decode_from(outer, |body| {
            let (b, inner) = decode_from(inner.clone(), |inner_body| {
                rmp_serde::from_slice::<Blob>(inner_body).unwrap()
            });
            assert!(
                !inner.as_ptr_range().contains(&b.as_ptr()),
                "nested: copied"
            );
            (rmp_serde::from_slice::<Blob>(body).unwrap(), b)
        });
        assert_eq!((a[0], b[0]), (4, 5));
        assert!(outer.as_ptr_range().contains(&a.as_ptr()), "outer: shared");
    }

    #[test]
    fn wire_compatible_with_byte_buf_and_accepts_integer_arrays() {
        let blob = Blob::from(vec![1, 2, 255]);
        assert_eq!(
            encode(&blob),
            encode(&serde_bytes::ByteBuf::from(vec![1, 2, 255]))
        );
        let from_buf: Blob =
            rmp_serde::from_slice(&encode(&serde_bytes::ByteBuf::from(vec![9, 8]))).unwrap();
        assert_eq!(&from_buf[..], &[9, 8]);
        let from_array: Blob = rmp_serde::from_slice(&encode(&vec![3u8, 4, 5])).unwrap();
        assert_eq!(&from_array[..], &[3, 4, 5]);
    }
}
