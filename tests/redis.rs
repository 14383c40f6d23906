//! Several `papo serve --redis` instances on one Redis: one room, one order,
//! members across instances, failover without loss, Redis going away.
//! Each test starts its own `redis-server` on a free port, persistence off.

mod common;

use std::collections::HashSet;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    chat_client, connect, eventually, kind, messages, next_within, serve, ws_next, RedisServer,
    ServeProcess, Ws, SOON,
};
use futures_util::SinkExt;
use grpcio::WriteFlags;
use papo::executor::block_on;
use papo::proto::chat::message::Kind;
use papo::proto::chat::{Message as ChatMessage, SubscribeRequest};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;

/// An instance on `redis`, without a rate limit (these tests say a lot).
fn instance(redis: &RedisServer, extra: &[&str]) -> ServeProcess {
    let url = redis.url();
    let mut args = vec!["--redis", &url, "--rate-limit", "0", "--send-queue", "4096"];
    args.extend_from_slice(extra);
    serve(&args)
}

/// A `/chat` connection (its JOIN not read yet).
fn ws_open(addr: &str, query: &str) -> Ws {
    let (ws, _) = connect(format!("ws://{addr}/chat?{query}")).expect("connect");
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
    }
    ws
}

fn ws_say(ws: &mut Ws, text: &str) {
    ws.send(Message::text(format!(r#"{{"text":"{text}"}}"#)))
        .expect("ws send");
}

/// Reads until `name`'s own JOIN; returns it.
fn own_join(mut next: impl FnMut() -> ChatMessage, name: &str) -> ChatMessage {
    loop {
        let m = next();
        if kind(&m) == Kind::JOIN && m.sender == name && !m.members.is_empty() {
            return m;
        }
    }
}

/// Reads until `name`'s JOIN, as the others see it.
fn next_join(mut next: impl FnMut() -> ChatMessage, name: &str) -> ChatMessage {
    loop {
        let m = next();
        if kind(&m) == Kind::JOIN && m.sender == name {
            return m;
        }
    }
}

#[test]
fn three_instances_share_a_room_in_one_order_across_protocols() {
    let redis = RedisServer::start();
    let (a, b, c) = (
        instance(&redis, &[]),
        instance(&redis, &[]),
        instance(&redis, &[]),
    );
    let (a_ws, b_grpc, c_grpc) = (
        a.ws.clone().unwrap(),
        b.grpc.clone().unwrap(),
        c.grpc.clone().unwrap(),
    );

    // A WebSocket member on A, a `Chat` member on B, a `Subscribe` on C.
    let mut ana = ws_open(&a_ws, "room=sala&name=ana");
    let joined = own_join(|| ws_next(&mut ana), "ana");
    assert_eq!(joined.members, ["ana"]);

    let on_b = chat_client(&b_grpc);
    let (mut bob_tx, mut bob_rx) = on_b.chat().expect("Chat");
    let hello = ChatMessage {
        sender: "bob".into(),
        room: "sala".into(),
        ..Default::default()
    };
    block_on(bob_tx.send((hello, WriteFlags::default()))).expect("first message");
    let bob_next = |rx: &mut grpcio::ClientDuplexReceiver<ChatMessage>| {
        next_within(rx, "bob's stream")
            .expect("open")
            .expect("message")
    };
    let joined = own_join(|| bob_next(&mut bob_rx), "bob");
    assert_eq!(
        joined.members,
        ["ana", "bob"],
        "the member list spans instances"
    );

    let on_c = chat_client(&c_grpc);
    let request = SubscribeRequest {
        room: "sala".into(),
        name: "cris".into(),
        ..Default::default()
    };
    let mut cris = on_c.subscribe(&request).expect("Subscribe");
    let joined = own_join(|| next_within(&mut cris, "cris").unwrap().unwrap(), "cris");
    assert_eq!(joined.members, ["ana", "bob", "cris"]);
    // Everyone hears about the others, whichever instance they are on.
    let heard = next_join(|| ws_next(&mut ana), "cris");
    assert_eq!(heard.seq, joined.seq);

    // 1,000 messages from all three instances at once.
    const EACH: usize = 334;
    let ana_sends = thread::spawn({
        let mut ana = ana;
        move || {
            for n in 0..EACH {
                ws_say(&mut ana, &format!("a{n}"));
            }
            ana
        }
    });
    let bob_sends = thread::spawn(move || {
        for n in 0..EACH {
            let m = ChatMessage {
                text: format!("b{n}"),
                ..Default::default()
            };
            block_on(bob_tx.send((m, WriteFlags::default()))).expect("bob says");
        }
        bob_tx
    });
    for n in 0..1000 - 2 * EACH {
        let m = ChatMessage {
            sender: "svc".into(),
            room: "sala".into(),
            text: format!("c{n}"),
            ..Default::default()
        };
        on_c.send_message(&m).expect("SendMessage on C");
    }
    let mut ana = ana_sends.join().unwrap();
    let _bob_tx = bob_sends.join().unwrap();

    let on_a = messages(|| ws_next(&mut ana), 1000);
    let on_b = messages(|| bob_next(&mut bob_rx), 1000);
    let on_c = messages(|| next_within(&mut cris, "cris").unwrap().unwrap(), 1000);
    assert_eq!(on_a, on_b, "A and B saw one sequence");
    assert_eq!(on_a, on_c, "A and C saw one sequence");
    let seqs: Vec<u64> = on_a.iter().map(|(seq, _, _)| *seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "numbers increase");
    let texts: HashSet<&str> = on_a.iter().map(|(_, _, t)| t.as_str()).collect();
    assert_eq!(texts.len(), 1000, "each message once");
    // Every sender's own messages in the order it said them.
    for (sender, prefix) in [("ana", "a"), ("bob", "b"), ("svc", "c")] {
        let own: Vec<&str> = on_a
            .iter()
            .filter(|(_, s, _)| s == sender)
            .map(|(_, _, t)| t.as_str())
            .collect();
        let expected: Vec<String> = (0..own.len()).map(|n| format!("{prefix}{n}")).collect();
        assert_eq!(own, expected, "{sender}'s messages in order");
    }
    drop((a, b, c));
}

/// What a failover member saw: its messages' texts in order, and when
/// (after the start) it saw each LEAVE.
struct Seen {
    texts: Vec<String>,
    leaves: Vec<(String, Instant)>,
    reconnects: usize,
}

/// A WebSocket member that, when its instance dies, reconnects to `fallback`
/// from the last seq and epoch it saw, until it has `want` messages and has
/// seen `leaves` LEAVEs.
fn resilient_member(
    first: String,
    fallback: String,
    name: String,
    want: usize,
    leaves: usize,
) -> Seen {
    let start = Instant::now();
    let mut seen = Seen {
        texts: Vec::new(),
        leaves: Vec::new(),
        reconnects: 0,
    };
    let (mut since, mut epoch) = (None::<u64>, String::new());
    let mut addr = first;
    let done = |seen: &Seen| seen.texts.len() >= want && seen.leaves.len() >= leaves;
    while !done(&seen) {
        assert!(start.elapsed() < Duration::from_secs(60), "{name} gave up");
        let query = match since {
            Some(s) => format!("room=failover&name={name}&since={s}&epoch={epoch}"),
            None => format!("room=failover&name={name}"),
        };
        let Ok((mut ws, _)) = connect(format!("ws://{addr}/chat?{query}")) else {
            addr = fallback.clone();
            seen.reconnects += 1;
            continue;
        };
        if let MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
        }
        while !done(&seen) {
            let Ok(frame) = ws.read() else {
                addr = fallback.clone();
                seen.reconnects += 1;
                break;
            };
            let Message::Text(json) = frame else { continue };
            let m: ChatMessage =
                protobuf_json_mapping::parse_from_str(json.as_str()).expect("JSON");
            since = Some(m.seq);
            epoch = m.epoch.clone();
            match kind(&m) {
                Kind::MESSAGE => seen.texts.push(m.text),
                Kind::LEAVE => seen.leaves.push((m.sender, Instant::now())),
                Kind::JOIN if m.sender == name && !m.members.is_empty() => {
                    assert!(
                        m.recovered || seen.texts.is_empty() && seen.reconnects == 0,
                        "{name} resumed without loss: {m:?}"
                    );
                }
                _ => {}
            }
        }
    }
    seen
}

#[test]
fn members_of_a_killed_instance_resume_on_another_without_loss() {
    const MESSAGES: usize = 600;
    const PRESENCE: Duration = Duration::from_secs(2);
    let redis = RedisServer::start();
    let mut a = instance(&redis, &["--presence-ttl", "2s"]);
    let b = instance(&redis, &["--presence-ttl", "2s"]);
    let (a_ws, b_ws) = (a.ws.clone().unwrap(), b.ws.clone().unwrap());
    let b_grpc = b.grpc.clone().unwrap();

    let members: Vec<_> = (0..100)
        .map(|n| {
            let (first, name) = match n < 50 {
                true => (a_ws.clone(), format!("a{n}")),
                false => (b_ws.clone(), format!("b{n}")),
            };
            let fallback = b_ws.clone();
            let leaves = if n < 50 { 0 } else { 50 };
            thread::spawn(move || resilient_member(first, fallback, name, MESSAGES, leaves))
        })
        .collect();
    // Everyone is in before the first message.
    let on_b = chat_client(&b_grpc);
    let request = SubscribeRequest {
        room: "failover".into(),
        name: "watcher".into(),
        ..Default::default()
    };
    let mut watcher = on_b.subscribe(&request).expect("Subscribe");
    let joined = own_join(
        || next_within(&mut watcher, "watcher").unwrap().unwrap(),
        "watcher",
    );
    let mut present: HashSet<String> = joined.members.into_iter().collect();
    while present.len() < 101 {
        let m = next_within(&mut watcher, "joins").unwrap().unwrap();
        if kind(&m) == Kind::JOIN {
            present.insert(m.sender);
        }
    }

    // A sender on B at 200 messages a second; A dies a third of the way in.
    let mut killed_at = None;
    let start = Instant::now();
    for n in 0..MESSAGES {
        if n == MESSAGES / 3 {
            a.child.kill().expect("kill -9 A");
            killed_at = Some(Instant::now());
        }
        let m = ChatMessage {
            sender: "svc".into(),
            room: "failover".into(),
            text: format!("m{n}"),
            ..Default::default()
        };
        on_b.send_message(&m).expect("SendMessage on B");
        let due = Duration::from_millis(5 * (n as u64 + 1));
        thread::sleep(due.saturating_sub(start.elapsed()));
    }
    let killed_at = killed_at.unwrap();
    let expected: Vec<String> = (0..MESSAGES).map(|n| format!("m{n}")).collect();
    let (mut received, mut duplicated, mut lost) = (0, 0, 0);
    let mut reconnected = 0;
    let mut slowest_leave = Duration::ZERO;
    for (n, member) in members.into_iter().enumerate() {
        let seen = member.join().expect("member thread");
        let distinct: HashSet<&String> = seen.texts.iter().collect();
        duplicated += seen.texts.len() - distinct.len();
        lost += expected.iter().filter(|t| !distinct.contains(t)).count();
        assert_eq!(
            seen.texts, expected,
            "member {n}: every message once, in order"
        );
        received += seen.texts.len();
        reconnected += usize::from(seen.reconnects > 0);
        if n >= 50 {
            // B's members hear each of A's members leave, once, in time.
            let left: HashSet<&str> = seen.leaves.iter().map(|(who, _)| who.as_str()).collect();
            assert_eq!(seen.leaves.len(), 50, "member {n}: {:?}", seen.leaves);
            assert!(left.iter().all(|who| who.starts_with('a')), "{left:?}");
            assert_eq!(left.len(), 50, "each of A's members left once");
            for (who, at) in &seen.leaves {
                let after = at.saturating_duration_since(killed_at);
                slowest_leave = slowest_leave.max(after);
                assert!(
                    after <= PRESENCE + Duration::from_secs(4),
                    "{who}'s LEAVE came {after:?} after the kill"
                );
            }
        }
    }
    assert_eq!(reconnected, 50, "A's members, and only they, reconnected");
    eprintln!(
        "failover: {MESSAGES} messages to 100 members: received {received}, lost {lost}, \
         duplicated {duplicated}; A's 50 LEAVEs announced by B at most {slowest_leave:?} after the kill"
    );
}

/// `papo_engine_up` as `/metrics` says it.
fn engine_up(ws_addr: &str) -> Option<u64> {
    let addr = ws_addr.parse().expect("address");
    let metrics = common::raw_exchange(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("papo_engine_up "))
        .and_then(|v| v.trim().parse().ok())
}

fn serving(grpc_addr: &str) -> bool {
    use papo::proto::health::health_check_response::ServingStatus;
    use papo::proto::health::HealthCheckRequest;
    common::health_client(grpc_addr)
        .check(&HealthCheckRequest::default())
        .is_ok_and(|r| r.status.enum_value_or_default() == ServingStatus::SERVING)
}

#[test]
fn while_redis_is_down_messages_are_refused_and_connections_stay() {
    let mut redis = RedisServer::start();
    let a = instance(&redis, &["--presence-ttl", "1s"]);
    let (ws_addr, grpc_addr) = (a.ws.clone().unwrap(), a.grpc.clone().unwrap());
    let mut ana = ws_open(&ws_addr, "room=r&name=ana");
    own_join(|| ws_next(&mut ana), "ana");
    ws_say(&mut ana, "before");
    let before = ws_next(&mut ana);
    assert_eq!(
        (kind(&before), before.text.as_str()),
        (Kind::MESSAGE, "before")
    );
    assert!(serving(&grpc_addr));
    assert_eq!(engine_up(&ws_addr), Some(1));

    redis.kill();
    eventually(SOON, "health to say NOT_SERVING", || !serving(&grpc_addr));
    assert_eq!(engine_up(&ws_addr), Some(0));
    // The WebSocket sender is told why, and stays; a gRPC sender gets UNAVAILABLE.
    ws_say(&mut ana, "lost?");
    let refused = ws_next(&mut ana);
    assert_eq!(kind(&refused), Kind::ERROR, "{refused:?}");
    assert!(refused.text.contains("unavailable"), "{refused:?}");
    let post = ChatMessage {
        sender: "svc".into(),
        room: "r".into(),
        text: "lost too?".into(),
        ..Default::default()
    };
    let error = chat_client(&grpc_addr).send_message(&post).unwrap_err();
    assert!(
        matches!(&error, grpcio::Error::RpcFailure(s) if s.code() == grpcio::RpcStatusCode::UNAVAILABLE),
        "{error:?}"
    );

    // Back, empty (no persistence): the log starts over under a new epoch.
    redis.restart();
    eventually(SOON, "health to say SERVING again", || serving(&grpc_addr));
    assert_eq!(engine_up(&ws_addr), Some(1));
    ws_say(&mut ana, "after");
    let after = loop {
        let m = ws_next(&mut ana);
        if kind(&m) == Kind::MESSAGE {
            break m;
        }
    };
    assert_eq!(after.text, "after", "the same connection carries on");
    assert_ne!(after.epoch, before.epoch, "the lost log's epoch is gone");
    // A member resuming from the old log is told it could not be recovered.
    let query = format!(
        "room=r&name=bea&since={}&epoch={}",
        before.seq, before.epoch
    );
    let mut bea = ws_open(&ws_addr, &query);
    let joined = own_join(|| ws_next(&mut bea), "bea");
    assert!(!joined.recovered, "{joined:?}");
    assert_eq!(joined.epoch, after.epoch);
    assert_eq!(
        joined.members,
        ["ana", "bea"],
        "ana's presence was put back"
    );
}

#[test]
fn with_persistence_a_redis_restart_loses_nothing() {
    let dir = std::env::temp_dir().join(format!("papo-redis-aof-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory for Redis's file");
    let mut redis = RedisServer::start_persistent(&dir);
    let a = instance(&redis, &[]);
    let (ws_addr, grpc_addr) = (a.ws.clone().unwrap(), a.grpc.clone().unwrap());
    let mut ana = ws_open(&ws_addr, "room=p&name=ana");
    let joined = own_join(|| ws_next(&mut ana), "ana");
    ws_say(&mut ana, "um");
    let um = ws_next(&mut ana);
    assert_eq!(um.text, "um");

    redis.kill();
    eventually(SOON, "health to say NOT_SERVING", || !serving(&grpc_addr));
    redis.restart();
    eventually(SOON, "health to say SERVING again", || serving(&grpc_addr));
    ws_say(&mut ana, "dois");
    let dois = ws_next(&mut ana);
    assert_eq!(dois.text, "dois", "the connection carries on");
    assert_eq!(
        (dois.epoch.as_str(), dois.seq),
        (um.epoch.as_str(), um.seq + 1),
        "the same log, its numbering going on"
    );
    // A member resuming from before "um" gets it all back.
    let query = format!(
        "room=p&name=bea&since={}&epoch={}",
        joined.seq, joined.epoch
    );
    let mut bea = ws_open(&ws_addr, &query);
    let replayed: Vec<String> = (0..2).map(|_| ws_next(&mut bea).text).collect();
    assert_eq!(replayed, ["um", "dois"]);
    assert!(own_join(|| ws_next(&mut bea), "bea").recovered);
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn with_tokens_a_name_is_one_member_on_every_instance() {
    let secret = std::env::temp_dir().join(format!("papo-redis-secret-{}", std::process::id()));
    std::fs::write(&secret, "the Redis tests' secret, thirty-two bytes or more").unwrap();
    let secret = secret.to_str().unwrap().to_owned();
    let redis = RedisServer::start();
    let a = instance(&redis, &["--auth-secret-file", &secret]);
    let b = instance(&redis, &["--auth-secret-file", &secret]);
    let token = |sub: &str| {
        let out = common::papo()
            .args(["token", "--secret-file", &secret, "--sub", sub])
            .output()
            .expect("papo token");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let (ana, bob) = (token("ana"), token("bob"));
    let mut watcher = ws_open(&b.ws.clone().unwrap(), &format!("room=id&token={bob}"));
    own_join(|| ws_next(&mut watcher), "bob");
    // ana on A, then ana again on B: one member with two connections.
    let mut on_a = ws_open(&a.ws.clone().unwrap(), &format!("room=id&token={ana}"));
    own_join(|| ws_next(&mut on_a), "ana");
    let mut on_b = ws_open(&b.ws.clone().unwrap(), &format!("room=id&token={ana}"));
    let joined = own_join(|| ws_next(&mut on_b), "ana");
    assert_eq!(joined.members, ["ana", "bob"]);
    assert_eq!(joined.connections, [2, 1]);
    // bob heard one JOIN; ana's LEAVE comes only with her last connection.
    let heard = |ws: &mut Ws, until: &str| {
        let mut events = Vec::new();
        loop {
            let m = ws_next(ws);
            if kind(&m) == Kind::MESSAGE && m.text == until {
                return events;
            }
            if kind(&m) != Kind::MESSAGE {
                events.push((kind(&m), m.sender));
            }
        }
    };
    let _ = on_a.close(None);
    while on_a.read().is_ok() {}
    ws_say(&mut watcher, "one gone");
    assert_eq!(
        heard(&mut watcher, "one gone"),
        [(Kind::JOIN, "ana".to_owned())]
    );
    let _ = on_b.close(None);
    while on_b.read().is_ok() {}
    let start = std::time::Instant::now();
    loop {
        ws_say(&mut watcher, "still?");
        let events = heard(&mut watcher, "still?");
        if !events.is_empty() {
            assert_eq!(events, [(Kind::LEAVE, "ana".to_owned())]);
            break;
        }
        assert!(start.elapsed() < SOON, "no LEAVE");
    }
}

/// The next message (not an event) a WebSocket member receives.
fn next_message(ws: &mut Ws) -> ChatMessage {
    loop {
        let m = ws_next(ws);
        if kind(&m) == Kind::MESSAGE {
            return m;
        }
    }
}

#[test]
fn a_redis_that_comes_back_with_less_never_gives_a_number_twice() {
    let dir = std::env::temp_dir().join(format!("papo-redis-rdb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory for Redis's dump");
    let mut redis = RedisServer::start_with_dumps(&dir);
    let a = instance(&redis, &[]);
    let (ws_addr, grpc_addr) = (a.ws.clone().unwrap(), a.grpc.clone().unwrap());
    let mut ana = ws_open(&ws_addr, "room=rb&name=ana");
    own_join(|| ws_next(&mut ana), "ana");
    // Every (epoch, seq) ana was given, and its text: one text each.
    let mut given = std::collections::HashMap::new();
    let mut note = |m: &ChatMessage| {
        let first = given
            .entry((m.epoch.clone(), m.seq))
            .or_insert_with(|| m.text.clone());
        assert_eq!(*first, m.text, "seq {} of {} given twice", m.seq, m.epoch);
    };
    for i in 0..5 {
        ws_say(&mut ana, &format!("kept {i}"));
        note(&next_message(&mut ana));
    }
    redis.save();
    // Acknowledged and delivered, then lost: Redis comes back from the dump.
    let mut lost = Vec::new();
    for i in 0..10 {
        ws_say(&mut ana, &format!("lost {i}"));
        let m = next_message(&mut ana);
        note(&m);
        lost.push(m);
    }
    redis.kill();
    eventually(SOON, "health to say NOT_SERVING", || !serving(&grpc_addr));
    redis.restart();
    eventually(SOON, "health to say SERVING again", || serving(&grpc_addr));
    let mut after = Vec::new();
    for i in 0..12 {
        ws_say(&mut ana, &format!("after {i}"));
        let m = next_message(&mut ana);
        note(&m);
        after.push(m);
    }
    assert_ne!(
        after[0].epoch, lost[0].epoch,
        "the log that lost its tail starts anew"
    );
    // A member resuming from inside the lost tail is told it is not whole.
    let inside = &lost[4];
    let query = format!(
        "room=rb&name=bea&since={}&epoch={}",
        inside.seq, inside.epoch
    );
    let mut bea = ws_open(&ws_addr, &query);
    let joined = own_join(|| ws_next(&mut bea), "bea");
    assert!(!joined.recovered, "{joined:?}");
    assert_eq!(joined.epoch, after[0].epoch);
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_redis_back_with_less_gives_no_number_twice_even_through_an_instance_that_saw_none() {
    // The instance that writes first after the restart has no member in
    // the room: it knows nothing of the lost tail, and cannot hold the log
    // to it. The log's history changed, and a restart from a dump may have
    // lost anything: the log starts anew.
    let dir = std::env::temp_dir().join(format!("papo-redis-rdb2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory for Redis's dump");
    let mut redis = RedisServer::start_with_dumps(&dir);
    // Presence renewed seldom: no round of ana's instance holds the log to
    // what it saw before b writes.
    let slow = ["--presence-ttl", "60s"];
    let (a, b) = (instance(&redis, &slow), instance(&redis, &slow));
    let ws_addr = a.ws.clone().unwrap();
    let grpc_b = b.grpc.clone().unwrap();
    let mut ana = ws_open(&ws_addr, "room=rb2&name=ana");
    own_join(|| ws_next(&mut ana), "ana");
    let mut given = std::collections::HashMap::new();
    let mut note = |m: &ChatMessage| {
        let first = given
            .entry((m.epoch.clone(), m.seq))
            .or_insert_with(|| m.text.clone());
        assert_eq!(*first, m.text, "seq {} of {} given twice", m.seq, m.epoch);
    };
    ws_say(&mut ana, "kept");
    note(&next_message(&mut ana));
    redis.save();
    let mut lost = Vec::new();
    for i in 0..5 {
        ws_say(&mut ana, &format!("lost {i}"));
        let m = next_message(&mut ana);
        note(&m);
        lost.push(m);
    }
    redis.kill();
    redis.restart();
    let post = ChatMessage {
        sender: "svc".into(),
        room: "rb2".into(),
        text: "through b".into(),
        ..Default::default()
    };
    eventually(SOON, "b to take a message again", || {
        chat_client(&grpc_b).send_message(&post).is_ok()
    });
    let m = next_message(&mut ana);
    note(&m);
    assert_eq!(m.text, "through b");
    assert_ne!(m.epoch, lost[0].epoch, "the log starts anew");
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn nothing_an_instance_puts_in_redis_outlives_its_ttls() {
    let redis = RedisServer::start();
    let a = instance(&redis, &["--presence-ttl", "1s", "--history-ttl", "2s"]);
    let ws_addr = a.ws.clone().unwrap();
    let mut ana = ws_open(&ws_addr, "room=ttl&name=ana");
    own_join(|| ws_next(&mut ana), "ana");
    ws_say(&mut ana, "something to keep");
    next_message(&mut ana);
    let keys = redis.keys("papo:*");
    assert!(keys.iter().any(|k| k.starts_with("papo:wake:")), "{keys:?}");
    for key in &keys {
        let ttl = redis.call(&["PTTL", key]).as_int();
        assert!(ttl.is_some_and(|ms| ms > 0), "{key} has no TTL: {ttl:?}");
    }
    // Killed: nobody renews, nobody deletes.
    drop(ana);
    drop(a);
    eventually(Duration::from_secs(10), "every key to expire", || {
        redis.keys("papo:*").is_empty()
    });
}

#[test]
fn with_replica_durability_a_message_is_acknowledged_once_a_replica_has_it() {
    let primary = RedisServer::start();
    let mut replica = RedisServer::start_replica_of(&primary);
    eventually(SOON, "the replica to be online", || {
        primary.replicas_online() == 1
    });
    let durable = [
        "--redis-durability",
        "replica",
        "--redis-replicas",
        "1",
        "--redis-wait-timeout",
        "300ms",
    ];
    let a = instance(&primary, &durable);
    let b = instance(&primary, &[]); // memory: acknowledged by the primary alone
    let (ws_addr, grpc_a) = (a.ws.clone().unwrap(), a.grpc.clone().unwrap());
    let grpc_b = b.grpc.clone().unwrap();
    let post = |text: &str| ChatMessage {
        sender: "svc".into(),
        room: "d".into(),
        text: text.into(),
        ..Default::default()
    };
    let reply = chat_client(&grpc_a)
        .send_message(&post("kept twice"))
        .expect("acknowledged with the replica up");
    // Acknowledged means the replica has it already.
    let on_replica = replica.call(&["XLEN", "papo:{d}:log"]).as_int();
    assert_eq!(on_replica, Some(1), "{reply:?}");

    replica.kill();
    eventually(SOON, "the primary to see its replica gone", || {
        primary.replicas_online() == 0
    });
    let error = chat_client(&grpc_a)
        .send_message(&post("only in memory"))
        .unwrap_err();
    assert!(
        matches!(&error, grpcio::Error::RpcFailure(s)
            if s.code() == grpcio::RpcStatusCode::UNAVAILABLE
            && s.message().contains("not confirmed: 0 of the 1 replicas")),
        "{error:?}"
    );
    // A WebSocket member is shown nothing the replicas do not have: its
    // join and its message are each answered by an ERROR, and it stays.
    let mut ana = ws_open(&ws_addr, "room=d&name=ana");
    let next_error = |ws: &mut Ws| loop {
        let m = ws_next(ws);
        assert_ne!(kind(&m), Kind::MESSAGE, "shown unconfirmed: {m:?}");
        if kind(&m) == Kind::ERROR {
            break m;
        }
    };
    let note = next_error(&mut ana);
    assert!(note.text.contains("not confirmed"), "{note:?}");
    ws_say(&mut ana, "mine");
    let note = next_error(&mut ana);
    assert!(note.text.contains("not confirmed"), "{note:?}");
    // The replica back, ana hears the room again: what the replica now
    // has, then what is said.
    replica.restart();
    eventually(SOON, "the replica to be back", || {
        primary.replicas_online() == 1
    });
    chat_client(&grpc_a)
        .send_message(&post("heard again"))
        .expect("acknowledged with the replica back");
    loop {
        let m = ws_next(&mut ana);
        if kind(&m) == Kind::MESSAGE && m.text == "heard again" {
            break;
        }
    }
    // The same Redis, asked for less, acknowledges.
    chat_client(&grpc_b)
        .send_message(&post("memory is enough"))
        .expect("memory durability needs no replica");
}
