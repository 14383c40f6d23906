//! `papo dev-cert`: a throwaway CA and a certificate it signs, for trying
//! `wss://` and gRPC over TLS on a machine of one's own. The certificate
//! names `localhost`, `127.0.0.1`, `::1` and any hosts asked for, and may
//! serve as a server's or a client's (mutual TLS).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// The files `dev-cert` writes.
pub struct DevCert {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Hosts every dev certificate names.
const LOCAL_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

fn this_year_and_serial() -> (i32, u64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    // Near enough: the certificate is valid from the start of the year.
    let year = 1970 + (now.as_secs() / 31_556_952) as i32;
    (year, now.as_nanos() as u64)
}

/// Writes `ca.pem`, `cert.pem` (the certificate, then the CA) and
/// `key.pem` (PKCS#8, readable by its owner only) into `dir`.
pub fn write(dir: &Path, hosts: &[String]) -> Result<DevCert, String> {
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("dev-cert: {what}: {e}");
    let (year, serial) = this_year_and_serial();
    let ca_key = KeyPair::generate().map_err(|e| fail("key", &e))?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(|e| fail("CA", &e))?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "papo development CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = date_time_ymd(year, 1, 1);
    ca.not_after = date_time_ymd(year + 2, 1, 1);
    ca.serial_number = Some(serial.into());
    let ca = ca.self_signed(&ca_key).map_err(|e| fail("CA", &e))?;

    let names: Vec<String> = LOCAL_HOSTS
        .iter()
        .map(|h| (*h).to_owned())
        .chain(hosts.iter().cloned())
        .collect();
    let key = KeyPair::generate().map_err(|e| fail("key", &e))?;
    let mut leaf = CertificateParams::new(names).map_err(|e| fail("a host name", &e))?;
    leaf.distinguished_name
        .push(DnType::CommonName, "papo development server");
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    leaf.not_before = date_time_ymd(year, 1, 1);
    leaf.not_after = date_time_ymd(year + 1, 12, 31);
    leaf.serial_number = Some(serial.wrapping_add(1).into());
    let leaf = leaf
        .signed_by(&key, &ca, &ca_key)
        .map_err(|e| fail("certificate", &e))?;

    fs::create_dir_all(dir).map_err(|e| fail(&dir.display().to_string(), &e))?;
    let files = DevCert {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    let save = |path: &Path, text: &str, mode: u32| {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| fail(&path.display().to_string(), &e))
    };
    save(&files.ca, &ca.pem(), 0o644)?;
    save(&files.cert, &(leaf.pem() + &ca.pem()), 0o644)?;
    save(&files.key, &key.serialize_pem(), 0o600)?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::TlsFiles;

    #[test]
    fn a_dev_certificate_loads_as_the_servers() {
        let dir = std::env::temp_dir().join(format!("papo-devcert-{}", std::process::id()));
        let files = write(&dir, &["chat.example".into()]).unwrap();
        let tls = TlsFiles {
            cert: files.cert.clone(),
            key: files.key.clone(),
            grpc_client_ca: Some(files.ca.clone()),
        };
        assert!(tls.load().is_ok());
        // A key that is not the certificate's is refused.
        let other = write(&dir.join("other"), &[]).unwrap();
        let mismatched = TlsFiles {
            key: other.key,
            ..tls
        };
        let err = mismatched.load().err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("do not make a certificate and its key")));
        let _ = fs::remove_dir_all(&dir);
    }
}
