//! The format rules for names and addresses, checked by the registry on every
//! operation and by providers before they send anything (one set of rules, owned
//! here). The registry's configurable caps (TTL bounds, metadata size, counts) are
//! checked by the registry state, where they are configured.

use std::net::SocketAddr;

use crate::api::RegistryError;

/// Longest service name, group, version, owner or client name, in bytes.
pub(crate) const MAX_NAME_LEN: usize = 256;

/// Cuts untrusted text for an error message, so an error never echoes a megabyte.
fn excerpt(text: &str) -> String {
    text.chars().take(64).collect()
}

/// Checks a service name: 1 to [`MAX_NAME_LEN`] bytes of `[A-Za-z0-9._:/-]`.
pub(crate) fn service_name(name: &str) -> Result<(), RegistryError> {
    let invalid = |reason: &str| RegistryError::InvalidService {
        name: excerpt(name),
        reason: reason.to_owned(),
    };
    if name.is_empty() {
        return Err(invalid("empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(&format!("longer than {MAX_NAME_LEN} bytes")));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '/' | '-')))
    {
        return Err(invalid(&format!(
            "character {c:?} is not allowed (use A-Z a-z 0-9 . _ : / -)"
        )));
    }
    Ok(())
}

/// Checks a provider address: `ip:port`, port not 0, ip not unspecified. Returns it
/// parsed.
pub(crate) fn provider_addr(addr: &str) -> Result<SocketAddr, RegistryError> {
    let invalid = |reason: &str| RegistryError::InvalidAddress {
        addr: excerpt(addr),
        reason: reason.to_owned(),
    };
    let parsed: SocketAddr = addr
        .parse()
        .map_err(|_| invalid("not an ip:port address"))?;
    if parsed.port() == 0 {
        return Err(invalid("port 0 cannot be called"));
    }
    if parsed.ip().is_unspecified() {
        return Err(invalid(
            "an unspecified address (0.0.0.0 or ::) cannot be called; advertise a reachable ip",
        ));
    }
    Ok(parsed)
}

/// Checks a short free-text field (group, version, owner, client name): at most
/// [`MAX_NAME_LEN`] bytes.
pub(crate) fn short_field(field: &str, value: &str) -> Result<(), RegistryError> {
    if value.len() > MAX_NAME_LEN {
        return Err(RegistryError::InvalidField {
            field: field.to_owned(),
            reason: format!("longer than {MAX_NAME_LEN} bytes"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names() {
        assert!(service_name("example.Inventory").is_ok());
        assert!(service_name("a/b:c-d_e").is_ok());
        assert!(matches!(
            service_name(""),
            Err(RegistryError::InvalidService { .. })
        ));
        assert!(service_name("has space").is_err());
        assert!(service_name(&"x".repeat(MAX_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn addresses() {
        assert!(provider_addr("127.0.0.1:7001").is_ok());
        assert!(provider_addr("[::1]:7001").is_ok());
        for bad in [
            "",
            "localhost:7001",
            "127.0.0.1",
            "127.0.0.1:0",
            "0.0.0.0:7001",
        ] {
            assert!(
                matches!(
                    provider_addr(bad),
                    Err(RegistryError::InvalidAddress { .. })
                ),
                "{bad:?} accepted"
            );
        }
    }
}
