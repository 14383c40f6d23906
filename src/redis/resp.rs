//! Just enough of a Redis client: RESP2 over a blocking `TcpStream`, with
//! pipelining (queue several commands, flush once, read the replies in
//! order). papo uses a handful of commands; a full client would bring
//! dozens of crates for them.

use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::url::Address;

/// A Redis reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Nil,
    Int(i64),
    /// A bulk or simple string.
    Bytes(Vec<u8>),
    Array(Vec<Value>),
    /// An error reply: the command failed, the connection is fine.
    Error(String),
}

impl Value {
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            Value::Bytes(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    pub fn into_array(self) -> Vec<Value> {
        match self {
            Value::Array(items) => items,
            _ => Vec::new(),
        }
    }
}

/// Longest array papo accepts from Redis, and the deepest nesting: far
/// above any reply to what it asks.
const MAX_ARRAY: usize = 1 << 20;
const MAX_DEPTH: usize = 8;
/// What a value costs against a reply's bound besides its bytes: its place
/// in memory, so a reply of many small values is weighed as it is held.
const VALUE_COST: usize = std::mem::size_of::<Value>();

/// A connection to Redis.
pub struct Connection {
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
    /// The most memory one reply may take as read (`--redis-max-reply`).
    max_reply: usize,
}

impl Connection {
    /// Connects, authenticates and selects the database; `timeout` bounds
    /// connecting and every read and write (a read blocked in Redis, as
    /// `XREAD BLOCK`'s, must be shorter).
    /// A reply that would take more than `max_reply` bytes to hold is an
    /// `InvalidData` error, and the connection is not to be used again.
    pub fn open(address: &Address, timeout: Duration, max_reply: usize) -> io::Result<Connection> {
        let addr = (address.host.as_str(), address.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut connection = Connection {
            reader: BufReader::new(stream.try_clone()?),
            writer: BufWriter::new(stream),
            max_reply,
        };
        if let Some(password) = &address.password {
            connection.call(&[b"AUTH", password.as_bytes()])?;
        }
        if address.db != 0 {
            connection.call(&[b"SELECT", address.db.to_string().as_bytes()])?;
        }
        Ok(connection)
    }

    /// How long a read may wait from now on.
    pub fn set_read_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        self.reader.get_ref().set_read_timeout(Some(timeout))
    }

    /// Queues a command; [`Connection::flush`] sends what is queued.
    pub fn send<A: AsRef<[u8]>>(&mut self, args: &[A]) -> io::Result<()> {
        write!(self.writer, "*{}\r\n", args.len())?;
        for arg in args {
            let arg = arg.as_ref();
            write!(self.writer, "${}\r\n", arg.len())?;
            self.writer.write_all(arg)?;
            self.writer.write_all(b"\r\n")?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }

    /// Reads the next reply.
    pub fn read(&mut self) -> io::Result<Value> {
        read_reply(&mut self.reader, self.max_reply)
    }

    /// Sends one command and reads its reply; an error reply is an `Err`.
    pub fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> io::Result<Value> {
        self.send(args)?;
        self.flush()?;
        match self.read()? {
            Value::Error(e) => Err(io::Error::other(e)),
            value => Ok(value),
        }
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("redis: {what}"))
}

fn read_line(reader: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    reader
        .by_ref()
        .take(64 * 1024)
        .read_until(b'\n', &mut line)?;
    if !line.ends_with(b"\r\n") {
        return Err(invalid("truncated reply"));
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).map_err(|_| invalid("reply is not UTF-8"))
}

fn read_len(line: &str, max: usize) -> io::Result<Option<usize>> {
    match line.parse::<i64>() {
        Ok(-1) => Ok(None),
        Ok(n) if (0..=max as i64).contains(&n) => Ok(Some(n as usize)),
        _ => Err(invalid("bad length")),
    }
}

/// Reads one reply that takes at most `max` bytes to hold.
pub(super) fn read_reply(reader: &mut impl BufRead, max: usize) -> io::Result<Value> {
    let mut left = max;
    read_value(reader, 0, &mut left)
}

/// Charges `bytes` to what the reply may still take.
fn charge(left: &mut usize, bytes: usize) -> io::Result<()> {
    *left = left.checked_sub(bytes).ok_or_else(|| {
        invalid("a reply larger than --redis-max-reply: the connection is dropped")
    })?;
    Ok(())
}

fn read_value(reader: &mut impl BufRead, depth: usize, left: &mut usize) -> io::Result<Value> {
    if depth > MAX_DEPTH {
        return Err(invalid("reply nested too deep"));
    }
    charge(left, VALUE_COST)?;
    let line = read_line(reader)?;
    let (kind, rest) = line.split_at_checked(1).ok_or_else(|| invalid("empty"))?;
    match kind {
        "+" => charge(left, rest.len()).map(|()| Value::Bytes(rest.as_bytes().to_vec())),
        "-" => charge(left, rest.len()).map(|()| Value::Error(rest.to_owned())),
        ":" => rest
            .parse()
            .map(Value::Int)
            .map_err(|_| invalid("bad integer")),
        "$" => match read_len(rest, *left)? {
            None => Ok(Value::Nil),
            Some(len) => {
                charge(left, len)?;
                let mut bytes = vec![0; len + 2];
                reader.read_exact(&mut bytes)?;
                bytes.truncate(len);
                Ok(Value::Bytes(bytes))
            }
        },
        "*" => match read_len(rest, MAX_ARRAY)? {
            None => Ok(Value::Nil),
            Some(len) => {
                // The array's items are charged as they come, so the
                // length a reply claims reserves nothing.
                let mut items = Vec::new();
                for _ in 0..len {
                    items.push(read_value(reader, depth + 1, left)?);
                }
                Ok(Value::Array(items))
            }
        },
        _ => Err(invalid("unknown reply type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_and_garbage_is_an_error() {
        let mut input: &[u8] = b"*3\r\n:5\r\n$2\r\nhi\r\n*-1\r\n-ERR no\r\n+OK\r\n";
        let read = |input: &mut &[u8]| read_reply(input, 1 << 20);
        let value = read(&mut input).unwrap();
        assert_eq!(
            value,
            Value::Array(vec![
                Value::Int(5),
                Value::Bytes(b"hi".to_vec()),
                Value::Nil
            ])
        );
        assert_eq!(read(&mut input).unwrap(), Value::Error("ERR no".into()));
        assert_eq!(read(&mut input).unwrap().as_str(), Some("OK"));
        for bad in [&b"$99999999999\r\n"[..], b"?x\r\n", b"$5\r\nab", b":x\r\n"] {
            let mut input = bad;
            assert!(read(&mut input).is_err());
        }
    }

    #[test]
    fn a_whole_reply_is_bounded_by_what_it_takes_to_hold() {
        // Many small integers: each is a value held, whatever its bytes.
        let count = 100_000;
        let mut wire = format!("*{count}\r\n").into_bytes();
        for _ in 0..count {
            wire.extend_from_slice(b":1\r\n");
        }
        let held = (count + 1) * VALUE_COST;
        assert!(read_reply(&mut &wire[..], held).is_ok());
        let err = read_reply(&mut &wire[..], held - 1).unwrap_err();
        assert!(err.to_string().contains("--redis-max-reply"), "{err}");
        // A bulk string claiming more than the bound is refused before
        // anything is allocated for it.
        let err = read_reply(&mut &b"$1000000\r\n"[..], 1000).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // Nested arrays, each of them charged.
        let deep = b"*1\r\n*1\r\n*1\r\n:1\r\n";
        assert!(read_reply(&mut &deep[..], 4 * VALUE_COST).is_ok());
        assert!(read_reply(&mut &deep[..], 4 * VALUE_COST - 1).is_err());
    }

    mod arbitrary {
        use super::super::*;
        use proptest::prelude::*;

        /// What a reply takes to hold, as the bound weighs it.
        fn held(value: &Value) -> usize {
            VALUE_COST
                + match value {
                    Value::Nil | Value::Int(_) => 0,
                    Value::Bytes(b) => b.len(),
                    Value::Error(e) => e.len(),
                    Value::Array(items) => items.iter().map(held).sum(),
                }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            #[test]
            fn arbitrary_replies_are_read_within_the_bound_or_refused(
                bytes in proptest::collection::vec(any::<u8>(), 0..400),
                max in 0usize..4096,
            ) {
                if let Ok(value) = read_reply(&mut &bytes[..], max) {
                    prop_assert!(held(&value) <= max);
                }
            }

            #[test]
            fn mutated_replies_are_read_within_the_bound_or_refused(
                flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
                max in 0usize..4096,
            ) {
                let mut wire = b"*3\r\n$5\r\nhello\r\n:-42\r\n*2\r\n+OK\r\n$-1\r\n".to_vec();
                for (at, byte) in flips {
                    let at = at % wire.len();
                    wire[at] = byte;
                }
                if let Ok(value) = read_reply(&mut &wire[..], max) {
                    prop_assert!(held(&value) <= max);
                }
            }

            #[test]
            fn a_claimed_length_reserves_nothing(len in 0u64..u64::MAX, nested in 0usize..20) {
                let mut wire = "*1\r\n".repeat(nested).into_bytes();
                wire.extend_from_slice(format!("${len}\r\nab").as_bytes());
                // Either refused or read, and never more than the bound.
                if let Ok(value) = read_reply(&mut &wire[..], 1024) {
                    prop_assert!(held(&value) <= 1024);
                }
            }
        }
    }
}
