//! Redis Sentinel: a primary, two replicas, three Sentinels (Debian's
//! `redis-server` and `redis-sentinel`, on free loopback ports), two papo
//! instances given `redis+sentinel://`, fifty WebSocket members on each,
//! and a sender at 200 messages a second; the primary is killed mid-stream.
//! With either durability no number is given to two texts and every member
//! hears the end; with `replica`, nothing acknowledged is lost; with
//! `memory`, the room's numbering starts anew.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{chat_client, connect, eventually, kind, serve, RedisServer, ServeProcess, SOON};
use papo::proto::chat::message::Kind;
use papo::proto::chat::Message as ChatMessage;
use papo::redis::resp::{Connection, Value};
use tungstenite::stream::MaybeTlsStream;

const MASTER: &str = "m";
const ROOM: &str = "failover";
const MEMBERS_EACH: usize = 50;
/// How long anything here may take, at most: a failover takes a few seconds.
const LONG: Duration = Duration::from_secs(45);

struct Sentinel {
    port: u16,
    child: Child,
    dir: PathBuf,
}

impl Sentinel {
    fn start(primary: &RedisServer) -> Sentinel {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("papo-sentinel-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory for the sentinel");
        // A Sentinel rewrites its configuration file: it needs one of its own.
        let config = dir.join("sentinel.conf");
        let text = format!(
            "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {dir}\n\
             sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n\
             sentinel down-after-milliseconds {MASTER} 500\n\
             sentinel failover-timeout {MASTER} 3000\n\
             sentinel parallel-syncs {MASTER} 2\n",
            dir = dir.display(),
            primary = primary.port,
        );
        std::fs::write(&config, text).expect("the sentinel's configuration");
        let child = Command::new("redis-sentinel")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-sentinel (Debian: apt-get install redis-sentinel; `make test` installs it)",
            );
        Sentinel { port, child, dir }
    }

    fn call(&self, args: &[&str]) -> Option<Value> {
        let address = format!("redis://127.0.0.1:{}", self.port).parse().ok()?;
        let mut connection = Connection::open(&address, Duration::from_secs(2), 1 << 20).ok()?;
        connection.call(args).ok()
    }

    /// How many replicas and other Sentinels it knows of.
    fn knows(&self) -> (usize, usize) {
        let count = |what: &str| {
            self.call(&["SENTINEL", what, MASTER])
                .map_or(0, |v| v.into_array().len())
        };
        (count("replicas"), count("sentinels"))
    }

    /// The port of the primary it names.
    fn primary_port(&self) -> Option<u16> {
        let reply = self.call(&["SENTINEL", "get-master-addr-by-name", MASTER])?;
        let port = reply.into_array().get(1)?.as_int()?;
        u16::try_from(port).ok()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// What one member heard: every (epoch, seq) with its text.
type Heard = Arc<Mutex<Vec<(String, u64, String)>>>;

/// A member of the room on `ws_addr`, reading until it has heard both
/// instances' last words (or `LONG` passes).
fn member(ws_addr: &str, name: &str) -> (thread::JoinHandle<()>, Heard) {
    let url = format!("ws://{ws_addr}/chat?room={ROOM}&name={name}");
    let (mut ws, _) = connect(url.as_str()).expect("member connects");
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(LONG)).expect("timeout");
    }
    // Its own JOIN first: it is in the room before anything is said.
    loop {
        let m: ChatMessage = common::ws_next(&mut ws);
        if kind(&m) == Kind::JOIN && m.sender == name {
            break;
        }
    }
    let heard: Heard = Arc::default();
    let mine = Arc::clone(&heard);
    let reading = thread::spawn(move || {
        let start = Instant::now();
        let mut ends = 0;
        while ends < 2 && start.elapsed() < LONG {
            let m = common::ws_next(&mut ws);
            if kind(&m) != Kind::MESSAGE {
                continue;
            }
            if m.text.starts_with("end ") {
                ends += 1;
            }
            mine.lock().unwrap().push((m.epoch, m.seq, m.text));
        }
    });
    (reading, heard)
}

/// Sends until stopped, alternating between the instances, one message
/// every 5 ms; returns the texts acknowledged, each with when.
fn sender(grpc: Vec<String>, stop: Arc<Mutex<bool>>) -> thread::JoinHandle<Vec<(String, Instant)>> {
    thread::spawn(move || {
        let clients: Vec<_> = grpc.iter().map(|a| chat_client(a)).collect();
        let mut acked = Vec::new();
        let mut i = 0usize;
        while !*stop.lock().unwrap() {
            let text = format!("m{i}");
            let post = ChatMessage {
                sender: "svc".into(),
                room: ROOM.into(),
                text: text.clone(),
                ..Default::default()
            };
            let call = grpcio::CallOption::default().timeout(Duration::from_secs(3));
            if clients[i % clients.len()]
                .send_message_opt(&post, call)
                .is_ok()
            {
                acked.push((text, Instant::now()));
            }
            i += 1;
            thread::sleep(Duration::from_millis(5));
        }
        acked
    })
}

fn instance(url: &str, durability: &str) -> ServeProcess {
    serve(&[
        "--redis",
        url,
        "--redis-durability",
        durability,
        "--redis-replicas",
        "1",
        "--redis-wait-timeout",
        "500ms",
        "--rate-limit",
        "0",
        "--send-queue",
        "4096",
    ])
}

/// The failover, under load, with `durability`; returns how many messages
/// were acknowledged and then lost, and the epochs members heard
/// acknowledged messages in.
fn failover(durability: &str) -> (usize, HashSet<String>) {
    let mut primary = RedisServer::start();
    let replicas = [
        RedisServer::start_replica_of(&primary),
        RedisServer::start_replica_of(&primary),
    ];
    eventually(SOON, "both replicas online", || {
        primary.replicas_online() == 2
    });
    let sentinels: Vec<_> = (0..3).map(|_| Sentinel::start(&primary)).collect();
    eventually(
        LONG,
        "the sentinels to know each other and the replicas",
        || sentinels.iter().all(|s| s.knows() == (2, 2)),
    );
    let hosts: Vec<_> = sentinels
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    let url = format!("redis+sentinel://{}/{MASTER}", hosts.join(","));
    let instances = [instance(&url, durability), instance(&url, durability)];
    let grpc: Vec<String> = instances.iter().map(|i| i.grpc.clone().unwrap()).collect();

    let members: Vec<_> = (0..2 * MEMBERS_EACH)
        .map(|n| {
            let ws = instances[n % 2].ws.clone().unwrap();
            member(&ws, &format!("m{n}"))
        })
        .collect();

    let stop = Arc::new(Mutex::new(false));
    let sending = sender(grpc.clone(), Arc::clone(&stop));
    thread::sleep(Duration::from_secs(1));
    let old_port = primary.port;
    primary.kill();
    let killed = Instant::now();
    eventually(LONG, "the sentinels to promote a replica", || {
        sentinels
            .iter()
            .filter_map(Sentinel::primary_port)
            .any(|p| p != old_port)
    });
    // Both instances serve again: each takes a message.
    for addr in &grpc {
        eventually(LONG, "the instance to take messages again", || {
            let post = ChatMessage {
                sender: "probe".into(),
                room: ROOM.into(),
                text: "probe".into(),
                ..Default::default()
            };
            chat_client(addr).send_message(&post).is_ok()
        });
    }
    eprintln!(
        "{durability}: both instances serve again {:?} after the kill",
        killed.elapsed()
    );
    thread::sleep(Duration::from_secs(1));
    *stop.lock().unwrap() = true;
    let acked = sending.join().unwrap();
    for (n, addr) in grpc.iter().enumerate() {
        let post = ChatMessage {
            sender: "svc".into(),
            room: ROOM.into(),
            text: format!("end {n}"),
            ..Default::default()
        };
        chat_client(addr)
            .send_message(&post)
            .expect("the last word");
    }
    let heard: Vec<Vec<(String, u64, String)>> = members
        .into_iter()
        .map(|(reading, heard)| {
            reading.join().expect("a member read to the end");
            let heard = heard.lock().unwrap().clone();
            heard
        })
        .collect();

    // No number given to two texts, across every member.
    let mut texts: HashMap<(String, u64), String> = HashMap::new();
    for (epoch, seq, text) in heard.iter().flatten() {
        let first = texts
            .entry((epoch.clone(), *seq))
            .or_insert_with(|| text.clone());
        assert_eq!(
            first, text,
            "{durability}: seq {seq} of {epoch} given to two texts"
        );
    }
    // Every member heard both last words.
    for (n, member) in heard.iter().enumerate() {
        let ends = member
            .iter()
            .filter(|(_, _, t)| t.starts_with("end "))
            .count();
        assert_eq!(ends, 2, "{durability}: member m{n} did not hear the end");
    }
    // What was acknowledged and is not in the new primary's log.
    let new_port = sentinels
        .iter()
        .find_map(Sentinel::primary_port)
        .expect("a primary");
    let new_primary = replicas
        .iter()
        .find(|r| r.port == new_port)
        .expect("the new primary is one of the replicas");
    let log: HashSet<String> = new_primary
        .call(&["XRANGE", &format!("papo:{{{ROOM}}}:log"), "-", "+"])
        .into_array()
        .into_iter()
        .filter_map(|entry| {
            let fields = entry.into_array().into_iter().nth(1)?.into_array();
            let at = fields.iter().position(|f| f.as_str() == Some("text"))?;
            fields.get(at + 1)?.as_str().map(str::to_owned)
        })
        .collect();
    // Lost: acknowledged, yet in neither the log nor what any member heard
    // (a log started anew no longer holds what members heard before).
    let all_heard: HashSet<&str> = heard.iter().flatten().map(|(_, _, t)| t.as_str()).collect();
    let lost = acked
        .iter()
        .filter(|(t, _)| !log.contains(t) && !all_heard.contains(t.as_str()))
        .count();
    if durability == "replica" {
        for (n, member) in heard.iter().enumerate() {
            let got: HashSet<&str> = member.iter().map(|(_, _, t)| t.as_str()).collect();
            let missed = acked
                .iter()
                .filter(|(t, _)| !got.contains(t.as_str()))
                .count();
            assert_eq!(
                missed, 0,
                "member m{n} missed {missed} acknowledged messages"
            );
        }
    }
    let before: HashSet<String> = acked_epochs(&heard, &acked, killed, true);
    let after: HashSet<String> = acked_epochs(&heard, &acked, killed, false);
    eprintln!(
        "{durability}: {} acknowledged, {lost} of them lost; epochs before {before:?}, after {after:?}",
        acked.len()
    );
    assert!(
        acked.len() > 200,
        "{durability}: too few acknowledged to say anything"
    );
    let mut epochs = before;
    epochs.extend(after);
    (lost, epochs)
}

/// The epochs members heard acknowledged messages in, from before the
/// kill (`before`) or after it.
fn acked_epochs(
    heard: &[Vec<(String, u64, String)>],
    acked: &[(String, Instant)],
    killed: Instant,
    before: bool,
) -> HashSet<String> {
    let when: HashMap<&str, Instant> = acked.iter().map(|(t, at)| (t.as_str(), *at)).collect();
    heard
        .iter()
        .flatten()
        .filter(|(_, _, t)| {
            when.get(t.as_str())
                .is_some_and(|at| (*at < killed) == before)
        })
        .map(|(e, _, _)| e.clone())
        .collect()
}

#[test]
fn with_replica_durability_a_failover_loses_nothing_acknowledged_and_keeps_the_numbering() {
    let (lost, epochs) = failover("replica");
    assert_eq!(lost, 0, "acknowledged, then lost");
    assert_eq!(epochs.len(), 1, "the numbering went on: {epochs:?}");
}

#[test]
fn with_memory_durability_a_failover_starts_the_numbering_anew() {
    let (_lost, epochs) = failover("memory");
    // Whatever the promotion lost, no number is given again: the log
    // starts anew under a new epoch.
    assert_eq!(
        epochs.len(),
        2,
        "one epoch before the failover, another after: {epochs:?}"
    );
}
