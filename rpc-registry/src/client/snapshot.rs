//! The consumer's on-disk snapshot (Dubbo's registry cache file): the last provider
//! list of a service, so a consumer can start and call while every registry is down.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Error;
use crate::api::Instance;

/// Largest snapshot file read. A list of thousands of instances is a few hundred KiB;
/// the cap keeps a corrupt or hostile file from being read into memory whole.
const MAX_SNAPSHOT_BYTES: u64 = 8 << 20;

/// The file's content.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotFile {
    /// Format version, 1.
    format: u32,
    /// The service the list is for.
    service: String,
    /// When it was written (milliseconds since the Unix epoch).
    saved_at_ms: u64,
    /// The providers.
    instances: Vec<Instance>,
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Snapshot {
        path: path.to_owned(),
        source: Arc::new(source),
    }
}

/// Reads the providers of `service` saved in `path`.
///
/// # Errors
///
/// The file is missing, unreadable, too large, not a snapshot, or of another service.
pub(super) fn load(path: &Path, service: &str) -> Result<Vec<Instance>, Error> {
    let file = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
    let mut text = String::new();
    file.take(MAX_SNAPSHOT_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| io_error(path, e))?;
    let invalid = |reason: String| {
        io_error(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, reason),
        )
    };
    if text.len() as u64 > MAX_SNAPSHOT_BYTES {
        return Err(invalid(format!("larger than {MAX_SNAPSHOT_BYTES} bytes")));
    }
    let snapshot: SnapshotFile = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    if snapshot.format != 1 || snapshot.service != service {
        return Err(invalid(format!(
            "format {} snapshot of {:?}, expected format 1 of {service:?}",
            snapshot.format, snapshot.service
        )));
    }
    Ok(snapshot.instances)
}

/// Saves the providers of `service` to `path`, atomically (a temporary file renamed
/// over it), so a crash mid-write never leaves half a list.
///
/// # Errors
///
/// The file cannot be written.
pub(super) fn save(path: &Path, service: &str, instances: &[Instance]) -> Result<(), Error> {
    let snapshot = SnapshotFile {
        format: 1,
        service: service.to_owned(),
        saved_at_ms: crate::api::unix_millis_now(),
        instances: instances.to_vec(),
    };
    let text = serde_json::to_vec_pretty(&snapshot)
        .map_err(|e| io_error(path, std::io::Error::other(e)))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text).map_err(|e| io_error(path, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_error(path, e))
}
