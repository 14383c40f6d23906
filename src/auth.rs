//! Who is speaking: signed tokens (JWT, RFC 7519) that the application
//! which knows its users mints, and papo verifies. A token names its member
//! (`sub`), how long it is good for (`exp`, `nbf`), which rooms it may join
//! (`rooms`) and whether it may speak (`pub`).
//!
//! Signatures are HS256 (a shared secret) or EdDSA (an Ed25519 public key),
//! checked with `ring`, which TLS already brings in. The algorithm a token
//! names must be one papo was given a key for: `none` is never accepted, and
//! an HS256 token is checked against the secret only, never against the
//! public key (the classic algorithm confusion).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use log::{debug, warn};
use ring::{hmac, signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::SubjectPublicKeyInfoDer;

use crate::json::{self, Unknown, Value};
use crate::throttle::{Throttle, INTERVAL};

/// Where the verification keys are, as `papo serve` was told.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthFiles {
    /// An HMAC-SHA256 secret (HS256), the file's bytes less a final newline.
    pub secret: Option<PathBuf>,
    /// A PEM Ed25519 public key (EdDSA).
    pub public_key: Option<PathBuf>,
    /// How far `exp` and `nbf` may be off, for clocks that disagree.
    pub leeway: Duration,
}

/// The keys tokens are checked against.
pub struct Verifier {
    secret: Option<hmac::Key>,
    public_key: Option<Vec<u8>>,
    leeway: Duration,
    /// Refused tokens: a client with a bad token in a retry loop must not
    /// flood the log.
    refusals: Throttle,
}

/// Why a member was not let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No valid token: HTTP 401, gRPC `UNAUTHENTICATED`.
    Unauthenticated(AuthError),
    /// A valid token that does not allow this: HTTP 403, gRPC
    /// `PERMISSION_DENIED`.
    Forbidden(String),
}

impl Denied {
    /// The reason as `/metrics` labels it.
    pub fn reason(&self) -> &'static str {
        match self {
            Denied::Unauthenticated(e) => e.reason(),
            Denied::Forbidden(_) => "forbidden",
        }
    }
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Denied::Unauthenticated(e) => write!(f, "{e}"),
            Denied::Forbidden(why) => f.write_str(why),
        }
    }
}

/// The token in an `Authorization: Bearer <token>` value.
pub fn bearer(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Who a valid token says the member is, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The member's name.
    pub sub: String,
    /// Room patterns it may join (exact, or a prefix ending in `*`);
    /// `None`: every room.
    pub rooms: Option<Vec<String>>,
    /// Whether it may speak (`pub`, true unless the token says false).
    pub publish: bool,
    /// When the token expires, in seconds since the epoch.
    pub expires: u64,
}

/// Why a token was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Malformed(&'static str),
    /// Its `alg` is none papo accepts, or none it has a key for.
    Algorithm(String),
    BadSignature,
    Expired,
    NotYetValid,
}

impl AuthError {
    /// The reason as `/metrics` labels it.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed(_) => "malformed",
            AuthError::Algorithm(_) => "algorithm",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
        }
    }
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::Missing => f.write_str("a token is required"),
            AuthError::Malformed(why) => write!(f, "malformed token: {why}"),
            AuthError::Algorithm(alg) => write!(f, "token algorithm {alg:?} not accepted"),
            AuthError::BadSignature => f.write_str("token signature does not verify"),
            AuthError::Expired => f.write_str("token expired"),
            AuthError::NotYetValid => f.write_str("token not valid yet"),
        }
    }
}

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): what
/// precedes the 32 bytes of the key.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

impl Verifier {
    /// Reads the keys; `Err` says which file and why.
    pub fn load(files: &AuthFiles) -> Result<Verifier, String> {
        let secret = match &files.secret {
            None => None,
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
                let secret = trim_newline(&bytes);
                if secret.len() < 32 {
                    return Err(format!(
                        "{}: an HS256 secret needs at least 32 bytes, this has {}",
                        path.display(),
                        secret.len()
                    ));
                }
                Some(hmac::Key::new(hmac::HMAC_SHA256, secret))
            }
        };
        let public_key = match &files.public_key {
            None => None,
            Some(path) => Some(ed25519_key(path)?),
        };
        Ok(Verifier {
            secret,
            public_key,
            leeway: files.leeway,
            refusals: Throttle::new(),
        })
    }

    /// Lets a member named `name` (empty: the token's `sub`) into `room`
    /// with `token`; returns who it is. Every refusal is logged at debug,
    /// and at most every ten seconds at warn with how many there were.
    pub fn admit(&self, token: Option<&str>, room: &str, name: &str) -> Result<Identity, Denied> {
        let admitted = self.check(token.unwrap_or_default(), room, name);
        if let Err(denied) = &admitted {
            debug!("chat token refused for room {room:?}: {denied}");
            if let Some(times) = self.refusals.occurred() {
                warn!(
                    "chat tokens refused: {times} in the last {}s (the last: {denied})",
                    INTERVAL.as_secs()
                );
            }
        }
        admitted
    }

    fn check(&self, token: &str, room: &str, name: &str) -> Result<Identity, Denied> {
        let identity = self.verify(token).map_err(Denied::Unauthenticated)?;
        if crate::chat::member_name(&identity.sub) != Ok(identity.sub.as_str()) {
            return Err(Denied::Unauthenticated(AuthError::Malformed(
                "\"sub\" is not a name papo shows",
            )));
        }
        if !name.is_empty() && name != identity.sub {
            return Err(Denied::Forbidden(format!(
                "the name must be the token's sub ({:?}), not {name:?}",
                identity.sub
            )));
        }
        if !identity.may_join(room) {
            return Err(Denied::Forbidden(format!(
                "the token does not allow room {room:?}"
            )));
        }
        Ok(identity)
    }

    /// The identity `token` carries, if it is valid now.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_at(token, unix_now())
    }

    fn verify_at(&self, token: &str, now: u64) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed("not three dot-separated parts"));
        };
        let mut header = part(header, &["alg"])?;
        let signed = &token[..header_and_claims_len(token)];
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| AuthError::Malformed("signature is not base64url"))?;
        let alg = match header.take(0) {
            Some(Value::String(alg)) => alg,
            _ => String::new(),
        };
        match alg.as_str() {
            "HS256" => {
                let key = self
                    .secret
                    .as_ref()
                    .ok_or_else(|| AuthError::Algorithm("HS256".into()))?;
                hmac::verify(key, signed.as_bytes(), &signature)
                    .map_err(|_| AuthError::BadSignature)?;
            }
            "EdDSA" => {
                let key = self
                    .public_key
                    .as_ref()
                    .ok_or_else(|| AuthError::Algorithm("EdDSA".into()))?;
                signature::UnparsedPublicKey::new(&signature::ED25519, key)
                    .verify(signed.as_bytes(), &signature)
                    .map_err(|_| AuthError::BadSignature)?;
            }
            _ => return Err(AuthError::Algorithm(alg)),
        }
        // Only a token whose signature holds is read further.
        let mut claims = part(claims, &CLAIMS)?;
        let sub = match claims.take(0) {
            Some(Value::String(sub)) if !sub.is_empty() => sub,
            _ => return Err(AuthError::Malformed("no \"sub\"")),
        };
        let leeway = self.leeway.as_secs();
        let expires = seconds(claims.get(1))?.ok_or(AuthError::Malformed("no \"exp\""))?;
        if now > expires.saturating_add(leeway) {
            return Err(AuthError::Expired);
        }
        if seconds(claims.get(2))?.is_some_and(|nbf| now.saturating_add(leeway) < nbf) {
            return Err(AuthError::NotYetValid);
        }
        let rooms = match claims.take(3) {
            None | Some(Value::Null) => None,
            Some(Value::Strings(list)) => Some(list),
            Some(Value::Other) => return Err(AuthError::Malformed("\"rooms\" holds a non-string")),
            Some(_) => return Err(AuthError::Malformed("\"rooms\" is not a list")),
        };
        let publish = match claims.get(4) {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(AuthError::Malformed("\"pub\" is not a boolean")),
        };
        Ok(Identity {
            sub,
            rooms,
            publish,
            expires,
        })
    }
}

impl Identity {
    /// Whether the token lets its member into `room`.
    pub fn may_join(&self, room: &str) -> bool {
        self.rooms.as_ref().is_none_or(|patterns| {
            patterns.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => room.starts_with(prefix),
                None => p == room,
            })
        })
    }

    /// Whether the token's `exp` has come: nothing it says is taken from
    /// then on, whatever the timers that end its connection have done yet.
    pub fn has_expired(&self) -> bool {
        unix_now() >= self.expires
    }

    /// How long until the token expires (zero if it has).
    pub fn lifetime(&self) -> Duration {
        Duration::from_secs(self.expires.saturating_sub(unix_now()))
    }
}

/// What `papo token` signs.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub sub: String,
    pub rooms: Option<Vec<String>>,
    pub ttl: Duration,
    pub read_only: bool,
}

/// An HS256 token for `request`, signed with the secret in `secret_file`.
pub fn mint(secret_file: &Path, request: &TokenRequest) -> Result<String, String> {
    let bytes =
        std::fs::read(secret_file).map_err(|e| format!("{}: {e}", secret_file.display()))?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, trim_newline(&bytes));
    let now = unix_now();
    let mut claims = format!(
        "{{\"sub\":{},\"iat\":{now},\"exp\":{}",
        json_string(&request.sub),
        now.saturating_add(request.ttl.as_secs())
    );
    if let Some(rooms) = &request.rooms {
        let list: Vec<String> = rooms.iter().map(|r| json_string(r)).collect();
        claims.push_str(&format!(",\"rooms\":[{}]", list.join(",")));
    }
    if request.read_only {
        claims.push_str(",\"pub\":false");
    }
    claims.push('}');
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let tag = hmac::sign(&key, signed.as_bytes());
    Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref())))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn trim_newline(bytes: &[u8]) -> &[u8] {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    bytes.strip_suffix(b"\r").unwrap_or(bytes)
}

/// The raw 32 bytes of the Ed25519 public key in a PEM file.
fn ed25519_key(path: &Path) -> Result<Vec<u8>, String> {
    let der = SubjectPublicKeyInfoDer::from_pem_file(path)
        .map_err(|e| format!("{}: no PEM public key: {e}", path.display()))?;
    match der.strip_prefix(&ED25519_SPKI_PREFIX[..]) {
        Some(key) if key.len() == 32 => Ok(key.to_vec()),
        _ => Err(format!(
            "{}: not an Ed25519 public key (EdDSA is the public-key algorithm papo takes)",
            path.display()
        )),
    }
}

/// The length of `header.claims`, the signed part of a token.
fn header_and_claims_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(0)
}

/// The claims papo reads, in the order [`part`] keeps them.
const CLAIMS: [&str; 5] = ["sub", "exp", "nbf", "rooms", "pub"];

/// The fields `wanted` of a base64url part of a token, a JSON object.
/// The part's size is the request's or the call's, already bounded; its
/// nesting is bounded here, and only what is wanted is kept.
fn part(part: &str, wanted: &[&str]) -> Result<json::Fields, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::Malformed("a part is not base64url"))?;
    json::object(&bytes, wanted, Unknown::Skip)
        .map_err(|_| AuthError::Malformed("a part is not a JSON object"))
}

/// A NumericDate claim: seconds since the epoch (fractions dropped; a date
/// past what a `u64` holds is the farthest one).
fn seconds(value: Option<&Value>) -> Result<Option<u64>, AuthError> {
    match value {
        None => Ok(None),
        Some(Value::Number(n)) if *n >= 0.0 => Ok(Some(*n as u64)),
        Some(_) => Err(AuthError::Malformed("a date is not a number of seconds")),
    }
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a secret of at least thirty-two bytes, for tests";

    fn verifier(dir: &Path) -> (Verifier, PathBuf) {
        let secret = dir.join("secret");
        std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
        let files = AuthFiles {
            secret: Some(secret.clone()),
            public_key: None,
            leeway: Duration::from_secs(5),
        };
        (Verifier::load(&files).unwrap(), secret)
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("papo-auth-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A token with `header` and `claims` as given, signed HS256 with `key`.
    fn signed(header: &str, claims: &str, key: &[u8]) -> String {
        let body = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), body.as_bytes());
        format!("{body}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    #[test]
    fn a_minted_token_verifies_with_its_claims() {
        let dir = scratch("mint");
        let (verifier, secret) = verifier(&dir);
        let request = TokenRequest {
            sub: "ana \"a\"".into(),
            rooms: Some(vec!["geral".into(), "dev-*".into()]),
            ttl: Duration::from_secs(60),
            read_only: true,
        };
        let identity = verifier.verify(&mint(&secret, &request).unwrap()).unwrap();
        assert_eq!(identity.sub, "ana \"a\"");
        assert!(!identity.publish);
        assert!(identity.may_join("geral") && identity.may_join("dev-ops"));
        assert!(!identity.may_join("geral2") && !identity.may_join("ops"));
        assert!(identity.lifetime() <= Duration::from_secs(60));
    }

    #[test]
    fn forged_expired_and_confused_tokens_are_refused() {
        let dir = scratch("refuse");
        let (verifier, _) = verifier(&dir);
        let now = unix_now();
        let hs = r#"{"alg":"HS256","typ":"JWT"}"#;
        let good = format!(r#"{{"sub":"ana","exp":{}}}"#, now + 60);
        assert!(verifier
            .verify(&signed(hs, &good, SECRET.as_bytes()))
            .is_ok());
        let cases = [
            (String::new(), AuthError::Missing),
            (
                "a.b".into(),
                AuthError::Malformed("not three dot-separated parts"),
            ),
            (
                signed(hs, &good, b"another secret, also long enough!!"),
                AuthError::BadSignature,
            ),
            (
                signed(r#"{"alg":"none"}"#, &good, SECRET.as_bytes()),
                AuthError::Algorithm("none".into()),
            ),
            (
                signed(r#"{"alg":"EdDSA"}"#, &good, SECRET.as_bytes()),
                AuthError::Algorithm("EdDSA".into()),
            ),
            (
                signed(
                    hs,
                    &format!(r#"{{"sub":"ana","exp":{}}}"#, now - 60),
                    SECRET.as_bytes(),
                ),
                AuthError::Expired,
            ),
            (
                signed(
                    hs,
                    &format!(r#"{{"sub":"ana","exp":{},"nbf":{}}}"#, now + 600, now + 60),
                    SECRET.as_bytes(),
                ),
                AuthError::NotYetValid,
            ),
            (
                signed(hs, r#"{"sub":"ana"}"#, SECRET.as_bytes()),
                AuthError::Malformed("no \"exp\""),
            ),
            (
                signed(hs, &format!(r#"{{"exp":{}}}"#, now + 60), SECRET.as_bytes()),
                AuthError::Malformed("no \"sub\""),
            ),
            (
                signed(
                    hs,
                    &format!(r#"{{"sub":"a","exp":{},"rooms":"x"}}"#, now + 60),
                    SECRET.as_bytes(),
                ),
                AuthError::Malformed("\"rooms\" is not a list"),
            ),
        ];
        for (token, expected) in cases {
            assert_eq!(verifier.verify(&token), Err(expected), "{token}");
        }
        // Within the leeway, an expired token still counts.
        let late = format!(r#"{{"sub":"ana","exp":{}}}"#, now - 2);
        assert!(verifier
            .verify(&signed(hs, &late, SECRET.as_bytes()))
            .is_ok());
        // An empty room list lets its member in nowhere.
        let nowhere = format!(r#"{{"sub":"ana","exp":{},"rooms":[]}}"#, now + 60);
        let identity = verifier
            .verify(&signed(hs, &nowhere, SECRET.as_bytes()))
            .unwrap();
        assert!(!identity.may_join("geral"));
    }

    #[test]
    fn an_hs256_token_signed_with_the_public_key_is_refused() {
        let dir = scratch("confusion");
        let pem = "-----BEGIN PUBLIC KEY-----\n\
                   MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n\
                   -----END PUBLIC KEY-----\n";
        let public = dir.join("public.pem");
        std::fs::write(&public, pem).unwrap();
        let files = AuthFiles {
            secret: None,
            public_key: Some(public),
            leeway: Duration::ZERO,
        };
        let verifier = Verifier::load(&files).unwrap();
        let claims = format!(r#"{{"sub":"ana","exp":{}}}"#, unix_now() + 60);
        for key in [pem.as_bytes(), &verifier.public_key.clone().unwrap()[..]] {
            let token = signed(r#"{"alg":"HS256"}"#, &claims, key);
            assert_eq!(
                verifier.verify(&token),
                Err(AuthError::Algorithm("HS256".into()))
            );
        }
    }

    mod arbitrary {
        use super::*;
        use proptest::prelude::*;

        fn b64(bytes: &[u8]) -> String {
            URL_SAFE_NO_PAD.encode(bytes)
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

            #[test]
            fn arbitrary_tokens_are_refused(token in any::<String>()) {
                let dir = scratch("any");
                let (verifier, _) = verifier(&dir);
                prop_assert!(verifier.verify(&token).is_err());
            }

            /// Each part arbitrary bytes, the whole correctly signed, so the
            /// claims are read too: taken or refused, never a panic.
            #[test]
            fn signed_arbitrary_parts_are_taken_or_refused(
                header in proptest::collection::vec(any::<u8>(), 0..200),
                claims in proptest::collection::vec(any::<u8>(), 0..300),
            ) {
                let dir = scratch("parts");
                let (verifier, _) = verifier(&dir);
                let body = format!("{}.{}", b64(&header), b64(&claims));
                let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes()), body.as_bytes());
                let token = format!("{body}.{}", b64(tag.as_ref()));
                if let Ok(identity) = verifier.verify(&token) {
                    prop_assert!(!identity.sub.is_empty());
                }
            }

            /// A valid token's claims, mutated and signed again.
            #[test]
            fn mutated_claims_are_taken_or_refused(
                flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
                nest in 0usize..3000,
            ) {
                let dir = scratch("mutated");
                let (verifier, _) = verifier(&dir);
                let mut claims = format!(
                    r#"{{"sub":"ana","exp":1e300,"nbf":0,"rooms":["a*","b"],"pub":true,"x":{}1{}}}"#,
                    "[".repeat(nest),
                    "]".repeat(nest)
                )
                .into_bytes();
                for (at, byte) in flips {
                    let at = at % claims.len();
                    claims[at] = byte;
                }
                let token = signed(r#"{"alg":"HS256"}"#, &String::from_utf8_lossy(&claims), SECRET.as_bytes());
                let _ = verifier.verify(&token);
            }

            #[test]
            fn arbitrary_key_files_load_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
                let dir = scratch("keys");
                let path = dir.join("key");
                std::fs::write(&path, &bytes).unwrap();
                for files in [
                    AuthFiles { secret: Some(path.clone()), public_key: None, leeway: Duration::ZERO },
                    AuthFiles { secret: None, public_key: Some(path.clone()), leeway: Duration::ZERO },
                ] {
                    let _ = Verifier::load(&files);
                }
            }
        }
    }
}
