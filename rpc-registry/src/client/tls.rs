//! The TLS query of `rpcs://`, `etcds://` and `zookeepers://` URLs (the `tls`
//! feature): `?ca=PATH&cert=PATH&key=PATH&server_name=NAME`, all optional, values
//! taken as written (no percent-decoding). The files are read here, so a missing one
//! fails when the URL is parsed, not at the first call.

use super::Error;

/// What a URL's TLS query asks for, its files read.
#[derive(Debug, Default)]
pub(super) struct TlsQuery {
    /// PEM CA certificates to trust (`ca`); `None`: the operating system's trust store
    /// (`rpcs://`), the web PKI's roots built in (`etcds://`), or refused
    /// (`zookeepers://`).
    pub(super) ca: Option<Vec<u8>>,
    /// PEM certificate chain and key to present (`cert` and `key`), for mutual TLS.
    pub(super) identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name the servers' certificates must carry (`server_name`); `None`: each
    /// host as written in the URL.
    pub(super) server_name: Option<String>,
}

/// `url` cut for an error message.
fn shown(url: &str) -> String {
    url.chars().take(128).collect()
}

/// An [`Error::InvalidUrl`] about `url`.
pub(super) fn invalid(url: &str, reason: String) -> Error {
    Error::InvalidUrl {
        url: shown(url),
        reason,
    }
}

/// An [`Error::Tls`] about `url`.
pub(super) fn refused(url: &str, reason: impl std::fmt::Display) -> Error {
    Error::Tls {
        url: shown(url),
        reason: reason.to_string(),
    }
}

/// Splits `rest` (what follows `scheme://` in `url`) at its `?` and reads the TLS
/// query after it; returns the part before it and the query.
pub(super) fn split<'a>(
    url: &str,
    scheme: &str,
    rest: &'a str,
) -> Result<(&'a str, TlsQuery), Error> {
    let (before, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (mut ca, mut cert, mut key, mut server_name) = (None, None, None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').ok_or_else(|| {
            invalid(
                url,
                format!("query parameter {pair:?} has no value (name=value)"),
            )
        })?;
        if value.is_empty() {
            return Err(invalid(url, format!("query parameter {name:?} is empty")));
        }
        let slot = match name {
            "ca" => &mut ca,
            "cert" => &mut cert,
            "key" => &mut key,
            "server_name" => &mut server_name,
            other => {
                return Err(invalid(
                    url,
                    format!(
                        "unknown query parameter {other:?} ({scheme}:// takes ca, cert, key \
                         and server_name)"
                    ),
                ))
            }
        };
        if slot.replace(value).is_some() {
            return Err(invalid(
                url,
                format!("query parameter {name:?} given twice"),
            ));
        }
    }
    let read = |what: &str, path: &str| {
        std::fs::read(path).map_err(|e| refused(url, format!("{what} file {path:?}: {e}")))
    };
    let identity = match (cert, key) {
        (Some(cert), Some(key)) => Some((read("cert", cert)?, read("key", key)?)),
        (None, None) => None,
        _ => {
            return Err(invalid(
                url,
                "cert and key go together: give both or neither".into(),
            ))
        }
    };
    let query = TlsQuery {
        ca: ca.map(|path| read("ca", path)).transpose()?,
        identity,
        server_name: server_name.map(str::to_owned),
    };
    Ok((before, query))
}
