//! Finding headless Chromium and the flags every test starts it with. Shared with the
//! examples' tests (`#[path]`), so it needs nothing but the standard library.

use std::path::PathBuf;

/// The Chromium binary on the `PATH`, if one is installed (Debian's `chromium`
/// package; `.ci/run` installs it when missing).
pub fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// Headless, as root in a container, on a machine with a closed network.
pub const HEADLESS: &[&str] = &[
    "--headless=new",
    // Tests run as root in containers, where Chromium's sandbox cannot start.
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    // The machine's network is closed: no update checks, sync or QUIC.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--hide-scrollbars",
    "--window-size=1400,900",
];
