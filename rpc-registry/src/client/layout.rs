//! Dubbo's registry layout, shared by the etcd and ZooKeeper backends: how an instance
//! and a consumer are named as a key or node (a URL, percent-encoded into one path
//! segment), so operators who know Dubbo recognise what they see.

use crate::api::{ConsumerInfo, InstanceKey, LeaseId};

/// `rpc://addr/service?group=..&version=..`: how an instance is named in its key.
pub(super) fn instance_url(key: &InstanceKey) -> String {
    format!(
        "rpc://{}/{}?group={}&version={}",
        key.addr,
        key.service,
        encode(&key.group),
        encode(&key.version)
    )
}

/// `consumer://addr/service?client=..&lease=..`: how a consumer is named in its key
/// (the lease keeps two consumers of one process apart).
pub(super) fn consumer_url(consumer: &ConsumerInfo, lease: LeaseId) -> String {
    format!(
        "consumer://{}/{}?client={}&lease={}",
        consumer.addr, consumer.service, consumer.client_name, lease
    )
}

/// Percent-encodes everything but unreserved characters (RFC 3986), as Dubbo does for
/// the node names of its instance URLs: the result is one path segment.
pub(super) fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Reverses [`encode`] (invalid escapes are kept as they are).
pub(super) fn decode(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&String::from_utf8_lossy(&bytes[i + 1..i + 3]), 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_into_one_segment() {
        let text = "rpc://127.0.0.1:7/s?group=&version=1";
        assert_eq!(decode(encode(text).as_bytes()), text);
        assert!(!encode(text).contains('/'));
        assert_eq!(encode("a/b"), "a%2Fb");
        assert_eq!(decode(b"%2"), "%2");
        assert_eq!(decode(b"a%2F"), "a/");
    }
}
