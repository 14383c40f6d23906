//! Where Redis is, as `--redis` says it: one server, or the primary a set
//! of Sentinels names.
//!
//! - `redis://[:PASSWORD@]HOST[:PORT][/DB]`: one server (port 6379);
//! - `redis+sentinel://[:PASSWORD@]HOST[:PORT][,HOST[:PORT]…]/MASTER[/DB]`:
//!   Sentinels (port 26379), asked in order for the primary named MASTER.
//!   The password and the database are the data nodes'; Sentinels are
//!   asked without either.

use std::fmt;
use std::str::FromStr;

/// One Redis server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub host: String,
    pub port: u16,
    pub db: u32,
    pub password: Option<String>,
}

/// What `--redis` points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Node(Address),
    Sentinel(Sentinels),
}

/// Sentinels, and what to ask them for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sentinels {
    /// Where the Sentinels listen (no password, database 0).
    pub sentinels: Vec<Address>,
    /// The name they monitor the primary under.
    pub master: String,
    /// The data nodes' password and database.
    pub password: Option<String>,
    pub db: u32,
}

impl Sentinels {
    /// The data node at `host:port`, with the password and database.
    pub fn node(&self, host: String, port: u16) -> Address {
        Address {
            host,
            port,
            db: self.db,
            password: self.password.clone(),
        }
    }
}

/// Sentinels one URL may name, at most: far above any deployment's.
const MAX_SENTINELS: usize = 16;
const FORMS: &str =
    "redis://[:PASSWORD@]HOST[:PORT][/DB] or redis+sentinel://[:PASSWORD@]HOST[:PORT][,…]/MASTER[/DB]";

impl FromStr for Target {
    type Err = String;

    fn from_str(url: &str) -> Result<Target, String> {
        let bad = || format!("{url:?} is not {FORMS}");
        if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            let (authority, path) = rest.split_once('/').ok_or_else(bad)?;
            let (master, db) = match path.split_once('/') {
                Some((m, "")) => (m, 0),
                Some((m, db)) => (m, db.parse().map_err(|_| bad())?),
                None => (path, 0),
            };
            let (password, hosts) = split_password(authority);
            let sentinels = hosts
                .split(',')
                .map(|h| host_port(h, 26379).map(|(host, port)| node(host, port, 0, None)))
                .collect::<Option<Vec<_>>>()
                .filter(|s| (1..=MAX_SENTINELS).contains(&s.len()))
                .ok_or_else(bad)?;
            if master.is_empty() || master.contains(char::is_whitespace) {
                return Err(bad());
            }
            return Ok(Target::Sentinel(Sentinels {
                sentinels,
                master: master.to_owned(),
                password,
                db,
            }));
        }
        let rest = url.strip_prefix("redis://").ok_or_else(bad)?;
        let (authority, db) = match rest.split_once('/') {
            Some((a, "")) => (a, 0),
            Some((a, db)) => (a, db.parse().map_err(|_| bad())?),
            None => (rest, 0),
        };
        let (password, host_port_text) = split_password(authority);
        let (host, port) = host_port(host_port_text, 6379).ok_or_else(bad)?;
        Ok(Target::Node(node(host, port, db, password)))
    }
}

fn node(host: &str, port: u16, db: u32, password: Option<String>) -> Address {
    Address {
        host: host.to_owned(),
        port,
        db,
        password,
    }
}

/// `[[USER]:PASSWORD@]REST` as the password and the rest.
fn split_password(authority: &str) -> (Option<String>, &str) {
    match authority.rsplit_once('@') {
        Some((user_pass, rest)) => {
            let pass = user_pass.split_once(':').map_or(user_pass, |(_, p)| p);
            (Some(pass.to_owned()), rest)
        }
        None => (None, authority),
    }
}

/// `HOST[:PORT]` (an IPv6 host in brackets), `default` when no port.
fn host_port(text: &str, default: u16) -> Option<(&str, u16)> {
    let (host, port) = match text.strip_prefix('[') {
        Some(bracketed) => {
            let (host, after) = bracketed.split_once(']')?;
            (host, after)
        }
        None => match text.split_once(':') {
            Some((host, port)) => (host, text.get(host.len()..).unwrap_or(port)),
            None => (text, ""),
        },
    };
    let port = match port {
        "" => default,
        port => port.strip_prefix(':')?.parse().ok()?,
    };
    (!host.is_empty() && !host.contains(['/', '@', ','])).then_some((host, port))
}

impl FromStr for Address {
    type Err = String;

    /// One server's `redis://` URL.
    fn from_str(url: &str) -> Result<Address, String> {
        match url.parse()? {
            Target::Node(address) => Ok(address),
            Target::Sentinel(_) => Err(format!("{url:?} is not one server's redis:// URL")),
        }
    }
}

/// Both without the password, for logs.
impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redis://{}/{}", host_and_port(self), self.db)
    }
}

/// `HOST:PORT`, an IPv6 host in brackets.
fn host_and_port(a: &Address) -> String {
    match a.host.contains(':') {
        true => format!("[{}]:{}", a.host, a.port),
        false => format!("{}:{}", a.host, a.port),
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Node(address) => address.fmt(f),
            Target::Sentinel(s) => {
                let hosts: Vec<String> = s.sentinels.iter().map(host_and_port).collect();
                let master = s.master.escape_debug();
                write!(f, "redis+sentinel://{}/{master}/{}", hosts.join(","), s.db)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_their_defaults() {
        let a: Address = "redis://127.0.0.1:7000/2".parse().unwrap();
        assert_eq!((a.host.as_str(), a.port, a.db), ("127.0.0.1", 7000, 2));
        let a: Address = "redis://:s3cret@cache".parse().unwrap();
        assert_eq!((a.host.as_str(), a.port, a.db), ("cache", 6379, 0));
        assert_eq!(a.password.as_deref(), Some("s3cret"));
        assert_eq!(a.to_string(), "redis://cache:6379/0");
        let a: Address = "redis://[::1]:7001".parse().unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 7001));
        for bad in ["http://x", "redis://", "redis://h:port", "redis://h/db"] {
            assert!(bad.parse::<Address>().is_err(), "{bad}");
        }
    }

    #[test]
    fn sentinel_urls_name_the_sentinels_the_master_and_the_data_nodes_settings() {
        let t: Target = "redis+sentinel://:pw@10.0.0.1,10.0.0.2:5000,[::1]/chat/3"
            .parse()
            .unwrap();
        let Target::Sentinel(s) = &t else {
            panic!("{t:?}")
        };
        let hosts: Vec<_> = s
            .sentinels
            .iter()
            .map(|a| (a.host.as_str(), a.port, a.password.is_none()))
            .collect();
        assert_eq!(
            hosts,
            [
                ("10.0.0.1", 26379, true),
                ("10.0.0.2", 5000, true),
                ("::1", 26379, true)
            ]
        );
        assert_eq!((s.master.as_str(), s.db), ("chat", 3));
        assert_eq!(s.password.as_deref(), Some("pw"));
        assert_eq!(s.node("h".into(), 1).password.as_deref(), Some("pw"));
        assert_eq!(
            t.to_string(),
            "redis+sentinel://10.0.0.1:26379,10.0.0.2:5000,[::1]:26379/chat/3"
        );
        let many = format!("redis+sentinel://{}/m", vec!["h"; 17].join(","));
        for bad in [
            "redis+sentinel://h",
            "redis+sentinel://h/",
            "redis+sentinel:///m",
            "redis+sentinel://h,,h/m",
            "redis+sentinel://h:x/m",
            "redis+sentinel://h/m/x",
            many.as_str(),
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
        assert!("redis+sentinel://h/m".parse::<Address>().is_err());
    }

    mod arbitrary {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            #[test]
            fn any_url_parses_or_is_refused_and_prints_without_its_password(
                url in "(redis|redis\\+sentinel)://(:[a-z@:]{0,8}@)?[a-z0-9:,\\[\\]/ .-]{0,40}",
            ) {
                if let Ok(target) = url.parse::<Target>() {
                    let printed = target.to_string();
                    if let Target::Node(Address { password: Some(p), .. })
                    | Target::Sentinel(Sentinels { password: Some(p), .. }) = &target
                    {
                        prop_assert!(p.len() < 3 || !printed.contains(p.as_str()));
                    }
                    if let Target::Sentinel(s) = &target {
                        prop_assert!((1..=MAX_SENTINELS).contains(&s.sentinels.len()));
                    }
                }
            }
        }
    }
}
