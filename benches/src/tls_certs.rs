//! The certificates of `rpc-bench --tls`: a CA and a server certificate for
//! `127.0.0.1`, made at start-up (rcgen) and handed to the server processes as PEM
//! files in a directory.

use std::io;
use std::path::Path;
use std::sync::OnceLock;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rpc_core::{ClientTls, ServerTls};

/// The PEM texts of one TLS setup.
#[derive(Debug, Clone)]
pub struct BenchTls {
    /// The CA that signed the server's certificate: what clients trust.
    pub ca_pem: String,
    /// The server's certificate (for `127.0.0.1`).
    pub cert_pem: String,
    /// The server's private key.
    pub key_pem: String,
}

/// File names inside a TLS directory.
const FILES: [&str; 3] = ["ca.pem", "cert.pem", "key.pem"];

/// The TLS setup this process uses, once [`BenchTls::install`]ed.
static INSTALLED: OnceLock<BenchTls> = OnceLock::new();

impl BenchTls {
    /// A fresh CA and a server certificate it signed.
    ///
    /// # Errors
    ///
    /// If rcgen cannot make a key or sign.
    pub fn generate() -> io::Result<BenchTls> {
        let fail = |e: rcgen::Error| io::Error::other(format!("making test certificates: {e}"));
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "rpc-bench CA");
        let issuer =
            CertifiedIssuer::self_signed(ca, KeyPair::generate().map_err(fail)?).map_err(fail)?;
        let mut server =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .map_err(fail)?;
        server
            .distinguished_name
            .push(DnType::CommonName, "rpc-bench server");
        let key = KeyPair::generate().map_err(fail)?;
        let cert = server.signed_by(&key, &issuer).map_err(fail)?;
        Ok(BenchTls {
            ca_pem: issuer.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes the three PEM files into `dir` (created if missing).
    ///
    /// # Errors
    ///
    /// If the directory or a file cannot be written.
    pub fn write_to(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (name, text) in FILES
            .iter()
            .zip([&self.ca_pem, &self.cert_pem, &self.key_pem])
        {
            std::fs::write(dir.join(name), text)?;
        }
        Ok(())
    }

    /// Reads what [`write_to`](Self::write_to) wrote.
    ///
    /// # Errors
    ///
    /// If a file is missing or unreadable.
    pub fn read_from(dir: &Path) -> io::Result<BenchTls> {
        let read = |name: &str| std::fs::read_to_string(dir.join(name));
        Ok(BenchTls {
            ca_pem: read(FILES[0])?,
            cert_pem: read(FILES[1])?,
            key_pem: read(FILES[2])?,
        })
    }

    /// Makes this the setup the `ours-tls` system uses in this process (the first
    /// call wins).
    pub fn install(self) {
        let _ = INSTALLED.set(self);
    }

    /// The installed setup.
    fn installed() -> io::Result<&'static BenchTls> {
        INSTALLED.get().ok_or_else(|| {
            io::Error::other("the ours-tls system needs certificates (rpc-bench --tls makes them)")
        })
    }

    /// The server side of the installed setup.
    pub(crate) fn server() -> io::Result<ServerTls> {
        let tls = Self::installed()?;
        ServerTls::from_pem(tls.cert_pem.as_bytes(), tls.key_pem.as_bytes())
            .map_err(io::Error::other)
    }

    /// The client side of the installed setup: trusts its CA.
    pub(crate) fn client() -> io::Result<ClientTls> {
        let tls = Self::installed()?;
        ClientTls::with_ca_pem(tls.ca_pem.as_bytes()).map_err(io::Error::other)
    }
}
