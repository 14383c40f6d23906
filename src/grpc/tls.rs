//! gRPC over TLS: C-core's own TLS (OpenSSL), fed papo's certificate. C-core
//! asks a fetcher before every new connection; it hands over the material
//! again only after a reload, so `SIGHUP` reaches new handshakes and leaves
//! open connections alone.

use std::error::Error;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use grpcio::{
    CertificateRequestType, ServerCredentials, ServerCredentialsBuilder, ServerCredentialsFetcher,
};

use crate::tls::Tls;

/// What C-core asks of a client: a certificate signed by the client CA
/// (mutual TLS), or nothing.
fn client_certificates(tls: &Tls) -> CertificateRequestType {
    match tls.current().grpc_client_ca_pem {
        Some(_) => CertificateRequestType::RequestAndRequireClientCertificateAndVerify,
        None => CertificateRequestType::DontRequestClientCertificate,
    }
}

struct Fetcher {
    tls: Arc<Tls>,
    /// The reload generation C-core has; `u64::MAX` before the first fetch.
    given: AtomicU64,
}

impl ServerCredentialsFetcher for Fetcher {
    fn fetch(&self) -> Result<Option<ServerCredentialsBuilder>, Box<dyn Error>> {
        let generation = self.tls.generation();
        if self.given.swap(generation, Ordering::AcqRel) == generation {
            return Ok(None);
        }
        let material = self.tls.current();
        let mut builder = ServerCredentialsBuilder::new()
            .add_cert(material.cert_pem.clone(), material.key_pem.clone());
        if let Some(ca) = &material.grpc_client_ca_pem {
            builder = builder.root_cert(
                ca.clone(),
                CertificateRequestType::RequestAndRequireClientCertificateAndVerify,
            );
        }
        Ok(Some(builder))
    }
}

/// Credentials for the gRPC port that follow reloads of `tls`.
pub fn credentials(tls: Arc<Tls>) -> ServerCredentials {
    let request = client_certificates(&tls);
    let fetcher = Fetcher {
        tls,
        given: AtomicU64::new(u64::MAX),
    };
    ServerCredentials::with_fetcher(Box::new(fetcher), request)
}
