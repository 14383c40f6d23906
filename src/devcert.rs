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
        replace(path, text.as_bytes(), mode).map_err(|e| fail(&path.display().to_string(), &e))
    };
    save(&files.ca, &ca.pem(), 0o644)?;
    save(&files.cert, &(leaf.pem() + &ca.pem()), 0o644)?;
    save(&files.key, &key.serialize_pem(), 0o600)?;
    Ok(files)
}

/// Puts `bytes` at `path` as a new file of `mode`: written to a file of its
/// own created beside it (never one already there, never through a
/// symlink), then renamed over whatever `path` was, a symlink included, so
/// a key never lands in a file someone else made or can read.
fn replace(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let fresh = path.with_file_name(format!(".{name}.{}.{nanos}", std::process::id()));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&fresh)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()));
    let done = written.and_then(|()| fs::rename(&fresh, path));
    if done.is_err() {
        let _ = fs::remove_file(&fresh);
    }
    done
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

    #[test]
    fn the_key_is_a_new_file_of_its_owners_never_what_was_there() {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let dir = std::env::temp_dir().join(format!("papo-devcert-old-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        // A key file left readable by all, and a certificate that is a
        // symlink to a file of someone else's.
        fs::write(dir.join("key.pem"), "old").unwrap();
        fs::set_permissions(dir.join("key.pem"), fs::Permissions::from_mode(0o644)).unwrap();
        let target = dir.join("elsewhere");
        fs::write(&target, "not papo's").unwrap();
        symlink(&target, dir.join("cert.pem")).unwrap();
        let files = write(&dir, &[]).unwrap();
        let key = fs::symlink_metadata(&files.key).unwrap();
        assert_eq!(key.permissions().mode() & 0o777, 0o600);
        assert!(fs::read_to_string(&files.key)
            .unwrap()
            .contains("PRIVATE KEY"));
        assert!(!fs::symlink_metadata(&files.cert).unwrap().is_symlink());
        assert_eq!(fs::read_to_string(&target).unwrap(), "not papo's");
        // A key that is a symlink is replaced, its target untouched.
        fs::remove_file(&files.key).unwrap();
        symlink(&target, &files.key).unwrap();
        write(&dir, &[]).unwrap();
        assert!(!fs::symlink_metadata(&files.key).unwrap().is_symlink());
        assert_eq!(fs::read_to_string(&target).unwrap(), "not papo's");
        let left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 4, "{left:?}");
        let _ = fs::remove_dir_all(&dir);
    }
}
