//! Finding the primary: the one server of a `redis://` URL, or whichever
//! server the Sentinels name now, checked with `ROLE` (a Sentinel a moment
//! behind a failover can still name the old primary, now a replica).
//! Each thread asks again whenever its connection fails or its primary
//! turns out not to be one: that is how a failover is followed.

use std::io;
use std::time::Duration;

use super::resp::{Connection, Value};
use super::url::{Address, Sentinels, Target};

/// The most a Sentinel's or `ROLE`'s reply may take: a few short strings.
const SMALL_REPLY: usize = 64 * 1024;

/// A connection to the primary `target` names, and where that is.
pub fn open(
    target: &Target,
    timeout: Duration,
    max_reply: usize,
) -> io::Result<(Connection, Address)> {
    match target {
        Target::Node(address) => {
            Connection::open(address, timeout, max_reply).map(|c| (c, address.clone()))
        }
        Target::Sentinel(sentinels) => {
            let mut last = None;
            for sentinel in &sentinels.sentinels {
                match ask(sentinel, sentinels, timeout) {
                    Ok(primary) => match open_primary(&primary, timeout, max_reply) {
                        Ok(connection) => return Ok((connection, primary)),
                        Err(e) => last = Some(e),
                    },
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| io::Error::other("no sentinel")))
        }
    }
}

/// Asks one Sentinel where the primary is.
fn ask(sentinel: &Address, sentinels: &Sentinels, timeout: Duration) -> io::Result<Address> {
    let mut connection = Connection::open(sentinel, timeout, SMALL_REPLY)?;
    let reply = connection.call(&[
        "SENTINEL",
        "get-master-addr-by-name",
        sentinels.master.as_str(),
    ])?;
    match named(reply) {
        Some((host, port)) => Ok(sentinels.node(host, port)),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "sentinel {sentinel} knows no primary named {:?}, or named it in a form \
                 that is not HOST PORT",
                sentinels.master
            ),
        )),
    }
}

/// The `HOST PORT` of a `get-master-addr-by-name` reply.
fn named(reply: Value) -> Option<(String, u16)> {
    let mut parts = reply.into_array().into_iter();
    let (host, port) = (parts.next()?, parts.next()?);
    let port = u16::try_from(port.as_int()?).ok()?;
    let host = host.as_str().filter(|h| !h.is_empty() && h.len() <= 255)?;
    Some((host.to_owned(), port))
}

/// Opens `address` and checks that it is a primary.
fn open_primary(address: &Address, timeout: Duration, max_reply: usize) -> io::Result<Connection> {
    let mut connection = Connection::open(address, timeout, max_reply)?;
    if !is_primary(&connection.call(&["ROLE"])?) {
        return Err(io::Error::other(format!(
            "{address} is not a primary (yet): a failover is under way"
        )));
    }
    Ok(connection)
}

/// Whether a `ROLE` reply is a primary's.
pub fn is_primary(role: &Value) -> bool {
    match role {
        Value::Array(parts) => parts.first().and_then(Value::as_str) == Some("master"),
        _ => false,
    }
}

/// Which history of Redis the primary is, as the script takes it (see
/// `start_anew_if_new_history` in `room.lua`): its replication id, the one
/// it was promoted from (empty: none, it started afresh), and which changes
/// of history keep a room's log (`p`: a promotion, `r`: a restart).
pub struct History {
    pub replid: String,
    pub promoted_from: String,
    pub keeps: String,
}

impl History {
    /// Asks the primary. `confirmed`: members are shown only what replicas
    /// confirmed, so a promotion keeps everything they saw.
    pub fn of(connection: &mut Connection, confirmed: bool) -> io::Result<History> {
        let info = connection.call(&["INFO", "replication"])?;
        let info = info.as_str().unwrap_or_default();
        let field = |name: &str| info_field(info, name).to_owned();
        let replid = field("master_replid");
        if replid.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "INFO replication gave no master_replid",
            ));
        }
        let promoted_from = field("master_replid2");
        let promoted_from = match promoted_from.bytes().all(|b| b == b'0') {
            true => String::new(),
            false => promoted_from,
        };
        let mut keeps = String::new();
        if confirmed {
            keeps.push('p');
        }
        if writes_reach_disk_first(connection) {
            keeps.push('r');
        }
        Ok(History {
            replid,
            promoted_from,
            keeps,
        })
    }
}

/// The value of `name:value` in an `INFO` text (empty when absent).
fn info_field<'a>(info: &'a str, name: &str) -> &'a str {
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map_or("", str::trim)
}

/// Whether the server answers a write only once it is in its append-only
/// file (`appendfsync always`): a restart then comes back with all of it.
/// A server that will not say (`CONFIG` renamed away) is taken not to.
fn writes_reach_disk_first(connection: &mut Connection) -> bool {
    let Ok(config) = connection.call(&["CONFIG", "GET", "append*"]) else {
        return false;
    };
    let config = config.into_array();
    let value = |name: &str| {
        config
            .chunks_exact(2)
            .find(|pair| pair[0].as_str() == Some(name))
            .and_then(|pair| pair[1].as_str())
    };
    value("appendonly") == Some("yes") && value("appendfsync") == Some("always")
}

#[cfg(test)]
mod tests {
    use super::super::resp::read_reply;
    use super::*;

    #[test]
    fn a_sentinels_answer_names_host_and_port() {
        let reply = |bytes: &[u8]| read_reply(&mut &bytes[..], SMALL_REPLY).unwrap();
        let named_in = |bytes: &[u8]| named(reply(bytes));
        assert_eq!(
            named_in(b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n"),
            Some(("127.0.0.1".into(), 6380))
        );
        assert_eq!(named_in(b"*-1\r\n"), None); // no such master
        assert_eq!(named_in(b"*2\r\n$0\r\n\r\n$4\r\n6380\r\n"), None);
        assert_eq!(named_in(b"*2\r\n$1\r\nh\r\n$5\r\n70000\r\n"), None);
        let info = "# Replication\r\nrole:master\r\nmaster_replid:abc\r\nmaster_replid2:000\r\n";
        assert_eq!(info_field(info, "master_replid"), "abc");
        assert_eq!(info_field(info, "master_replid2"), "000");
        assert_eq!(info_field(info, "absent"), "");
    }

    mod arbitrary {
        use super::super::super::resp::read_reply;
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            #[test]
            fn any_sentinel_reply_names_a_primary_or_none(
                bytes in proptest::collection::vec(any::<u8>(), 0..200),
            ) {
                if let Ok(reply) = read_reply(&mut &bytes[..], SMALL_REPLY) {
                    if let Some((host, _)) = named(reply) {
                        prop_assert!(!host.is_empty() && host.len() <= 255);
                    }
                }
            }

            #[test]
            fn any_info_text_gives_a_value_from_one_line(info in "\\PC{0,200}", name in "[a-z_]{1,8}") {
                prop_assert!(!info_field(&info, &name).contains('\n'));
            }
        }
    }
}
