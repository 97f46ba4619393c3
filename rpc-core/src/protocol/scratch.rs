//! A per-thread encode buffer for messages that cannot be encoded straight into a
//! connection's write buffer (replies of handlers on the business pool): they are
//! written into one large allocation and split off it, so encoding one costs no
//! allocation of its own and never regrows a small buffer (as a fresh `Vec` would,
//! several times, for a 1 KiB payload).

use std::cell::RefCell;

use bytes::BytesMut;

/// Capacity reserved whenever the remaining space runs low.
const CHUNK: usize = 64 * 1024;
/// Reserve a new chunk when less than this is left.
const LOW_WATER: usize = 4 * 1024;

thread_local! {
    static SCRATCH: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// Runs `encode` on this thread's scratch buffer (empty on entry) and returns what it
/// wrote, split off as its own `BytesMut` that shares the big allocation.
pub(crate) fn encode_with<E>(
    encode: impl FnOnce(&mut BytesMut) -> Result<(), E>,
) -> Result<BytesMut, E> {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => {
            if scratch.capacity() < LOW_WATER {
                scratch.reserve(CHUNK);
            }
            let result = encode(&mut scratch);
            let written = scratch.split();
            result.map(|()| written)
        }
        // Re-entered (an encoder that itself encodes): use a buffer of its own.
        Err(_) => {
            let mut own = BytesMut::with_capacity(256);
            encode(&mut own).map(|()| own)
        }
    })
}
