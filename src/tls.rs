//! TLS settings: the server's certificate chain and key (and, for the gRPC
//! port, the CA its clients' certificates must be signed by), read from PEM
//! files, checked before anything is served, and read again on `SIGHUP`.
//! A reload that fails keeps what is in use.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use log::{error, info};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use crate::lock;

/// Where the server's TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// gRPC clients must present a certificate signed by this CA.
    pub grpc_client_ca: Option<PathBuf>,
}

/// Why TLS material could not be used.
#[derive(Debug)]
pub struct TlsError(String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

/// The material read from the files, as each port's rustls takes it.
pub struct Material {
    /// For the WebSocket port: HTTP/1.1.
    pub ws: Arc<ServerConfig>,
    /// For the gRPC port: HTTP/2, and a client certificate signed by the
    /// client CA when one is given (mutual TLS).
    pub grpc: Arc<ServerConfig>,
}

/// The provider every TLS endpoint of papo uses: rustls's `ring`.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS 1.3 and 1.2; nothing older.
pub const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn read(path: &Path, what: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path)
        .map_err(|e| TlsError(format!("cannot read the {what} {}: {e}", path.display())))
}

/// Every certificate in a PEM file; at least one.
pub fn certificates(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("{}: not PEM certificates: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "{}: no certificate in the file",
            path.display()
        )));
    }
    Ok(certs)
}

/// The private key of a PEM file: PKCS#8, RSA (PKCS#1) or SEC1.
pub fn private_key(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| TlsError(format!("{}: no usable private key: {e}", path.display())))
}

impl TlsFiles {
    /// Reads and checks everything: the chain parses, the key parses and
    /// belongs to the chain's first certificate, the CA parses.
    pub fn load(&self) -> Result<Material, TlsError> {
        let cert_pem = read(&self.cert, "certificate file")?;
        let key_pem = read(&self.key, "key file")?;
        let certs = certificates(&cert_pem, &self.cert)?;
        let key = private_key(&key_pem, &self.key)?;
        let mismatched = |e: rustls::Error| {
            TlsError(format!(
                "{} and {} do not make a certificate and its key: {e}",
                self.cert.display(),
                self.key.display()
            ))
        };
        let builder = || {
            ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(VERSIONS)
                .map_err(|e| TlsError(format!("TLS setup: {e}")))
        };
        let mut ws = builder()?
            .with_no_client_auth()
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(mismatched)?;
        ws.alpn_protocols = vec![b"http/1.1".to_vec()];
        // No TLS 1.3 session tickets: they arrive after the handshake, while
        // the client is already writing its request, and a client that reads
        // and writes one TLS session from two threads (Python websockets'
        // sync client does) loses its request to that race now and then.
        // Resumption would save one handshake's CPU per reconnect.
        ws.send_tls13_tickets = 0;
        let grpc = match &self.grpc_client_ca {
            Some(path) => {
                let pem = read(path, "client CA file")?;
                let mut roots = rustls::RootCertStore::empty();
                for cert in certificates(&pem, path)? {
                    roots
                        .add(cert)
                        .map_err(|e| TlsError(format!("{}: {e}", path.display())))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .map_err(|e| TlsError(format!("{}: {e}", path.display())))?;
                builder()?.with_client_cert_verifier(verifier)
            }
            None => builder()?.with_no_client_auth(),
        };
        let mut grpc = grpc.with_single_cert(certs, key).map_err(mismatched)?;
        grpc.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Material {
            ws: Arc::new(ws),
            grpc: Arc::new(grpc),
        })
    }
}

/// The material in use, replaced whole by a reload that succeeds.
pub struct Tls {
    files: TlsFiles,
    current: Mutex<Arc<Material>>,
    /// Bumped by every successful reload.
    generation: AtomicU64,
}

impl Tls {
    pub fn load(files: TlsFiles) -> Result<Arc<Tls>, TlsError> {
        let material = files.load()?;
        Ok(Arc::new(Tls {
            files,
            current: Mutex::new(Arc::new(material)),
            generation: AtomicU64::new(0),
        }))
    }

    /// What new handshakes use.
    pub fn current(&self) -> Arc<Material> {
        Arc::clone(&lock(&self.current))
    }

    /// Which load [`Tls::current`] is: changes with every reload.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Reads the files again; on any error keeps the material in use.
    pub fn reload(&self) -> bool {
        match self.files.load() {
            Ok(material) => {
                *lock(&self.current) = Arc::new(material);
                self.generation.fetch_add(1, Ordering::AcqRel);
                info!(
                    "tls: certificate reloaded from {}",
                    self.files.cert.display()
                );
                true
            }
            Err(e) => {
                error!("tls: reload failed, keeping the certificate in use: {e}");
                false
            }
        }
    }
}

/// The CAs a client trusts when not given one: Debian's bundle (or
/// `SSL_CERT_FILE`, as OpenSSL reads it).
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The PEM file of CAs a client trusts: `ca`, or the system's.
pub fn trusted_cas(ca: Option<&Path>) -> PathBuf {
    match ca {
        Some(path) => path.to_owned(),
        None => std::env::var_os("SSL_CERT_FILE")
            .map_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE), PathBuf::from),
    }
}

/// A rustls client that trusts the CAs of `ca` (or the system's).
pub fn client_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let path = trusted_cas(ca);
    let pem = read(&path, "CA file")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(&pem, &path)? {
        roots
            .add(cert)
            .map_err(|e| TlsError(format!("{}: {e}", path.display())))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// A certificate or key file of arbitrary bytes, or a PEM block of
        /// them, is refused with a reason.
        #[test]
        fn arbitrary_pem_files_are_refused(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            label in prop::sample::select(vec!["CERTIFICATE", "PRIVATE KEY", "EC PRIVATE KEY"]),
        ) {
            use base64::Engine as _;
            let dir = std::env::temp_dir().join(format!("papo-tls-pem-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let (raw, pem) = (dir.join("raw.pem"), dir.join("block.pem"));
            std::fs::write(&raw, &bytes).unwrap();
            let body = base64::engine::general_purpose::STANDARD.encode(&bytes);
            std::fs::write(&pem, format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n")).unwrap();
            for (cert, key) in [(&raw, &raw), (&pem, &pem), (&pem, &raw)] {
                let files = TlsFiles { cert: cert.clone(), key: key.clone(), grpc_client_ca: Some(pem.clone()) };
                prop_assert!(files.load().is_err());
            }
        }
    }
}
