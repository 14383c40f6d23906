//! The chat core's ordering, fan-out, slow-member, race and resume tests,
//! run against both engines: rooms in memory, and rooms in Redis (a
//! `redis-server` of the test's own). No sockets but Redis's: the hub is
//! driven directly, its members are in-memory queues.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{eventually, RedisServer, SOON};
use papo::chat::{ChatConfig, Delivery, Hub, Rate, Resume, SendError, Subscriber};
use papo::config::ServeConfig;
use papo::proto::chat::message::Kind;
use papo::proto::chat::Message;
use papo::redis::{Redis, RedisConfig};

/// A hub on each engine (the Redis one with its server, kept alive).
fn hubs(config: ChatConfig) -> Vec<(&'static str, Arc<Hub>, Option<RedisServer>)> {
    let redis = RedisServer::start();
    let hub = redis_hub(&redis, &config);
    vec![
        ("memory", Hub::new(config.clone()), None),
        ("redis", hub, Some(redis)),
    ]
}

/// A hub on `redis`: one instance of several, as far as rooms go.
fn redis_hub(redis: &RedisServer, config: &ChatConfig) -> Arc<Hub> {
    let engine = Redis::start(RedisConfig {
        target: redis.url().parse().expect("url"),
        history: config.history,
        history_ttl: config.history_ttl,
        presence_ttl: Duration::from_secs(15),
        pending: 64 << 20,
        max_reply: 64 << 20,
        durability: papo::redis::Durability::Memory,
        one_member_per_name: false,
    })
    .expect("redis engine");
    eventually(SOON, "the engine to reach Redis", || {
        papo::chat::Engine::is_up(&*engine)
    });
    Hub::with_engine(config.clone(), engine)
}

fn unlimited() -> ChatConfig {
    ChatConfig {
        rate: Rate {
            per_second: 0,
            burst: 0,
        },
        ..ServeConfig::default().chat
    }
}

/// A member's queue, as the transports have: bounded, and it can get stuck.
struct Inbox {
    capacity: usize,
    messages: Mutex<Vec<Message>>,
    evicted: AtomicBool,
}

impl Inbox {
    fn new(capacity: usize) -> Arc<Inbox> {
        Arc::new(Inbox {
            capacity,
            messages: Mutex::new(Vec::new()),
            evicted: AtomicBool::new(false),
        })
    }

    fn all(&self) -> Vec<Message> {
        self.messages.lock().unwrap().clone()
    }

    /// (seq, sender, text) of the chat messages received.
    fn said(&self) -> Vec<(u64, String, String)> {
        self.all()
            .into_iter()
            .filter(|m| m.kind.enum_value_or_default() == Kind::MESSAGE)
            .map(|m| (m.seq, m.sender, m.text))
            .collect()
    }

    /// Waits until `count` chat messages have come.
    fn wait_for(&self, count: usize, what: &str) {
        eventually(SOON, what, || self.said().len() >= count);
    }

    fn wait_for_kind(&self, kind: Kind, sender: &str) -> Message {
        let mut found = None;
        eventually(SOON, &format!("{kind:?} of {sender}"), || {
            found = self
                .all()
                .into_iter()
                .find(|m| m.kind.enum_value_or_default() == kind && m.sender == sender);
            found.is_some()
        });
        found.unwrap()
    }
}

impl Subscriber for Inbox {
    fn deliver(&self, delivery: &Arc<Delivery>) -> Result<(), SendError> {
        let mut messages = self.messages.lock().unwrap();
        if messages.len() >= self.capacity {
            return Err(SendError::Full);
        }
        messages.push(delivery.message.clone());
        Ok(())
    }

    fn evicted(&self) {
        self.evicted.store(true, Ordering::SeqCst);
    }
}

#[test]
fn concurrent_senders_are_seen_in_one_order_by_everyone() {
    for (engine, hub, _redis) in hubs(unlimited()) {
        let inboxes: Vec<_> = (0..4).map(|_| Inbox::new(10_000)).collect();
        let members: Vec<_> = inboxes
            .iter()
            .enumerate()
            .map(|(i, inbox)| {
                Arc::new(
                    hub.join("r", &format!("m{i}"), inbox.clone())
                        .expect("join"),
                )
            })
            .collect();
        for inbox in &inboxes {
            inbox.wait_for_kind(Kind::JOIN, "m3");
        }
        let senders: Vec<_> = members
            .iter()
            .map(|member| {
                let member = Arc::clone(member);
                thread::spawn(move || {
                    for n in 0..250 {
                        member.say(&n.to_string()).unwrap();
                    }
                })
            })
            .collect();
        senders.into_iter().for_each(|s| s.join().unwrap());
        for inbox in &inboxes {
            inbox.wait_for(1000, engine);
        }
        let first = inboxes[0].said();
        assert!(first.windows(2).all(|w| w[0].0 < w[1].0), "{engine}");
        for inbox in &inboxes[1..] {
            assert_eq!(inbox.said(), first, "{engine}: one order for all");
        }
        // Each sender's messages in the order it said them.
        for i in 0..4 {
            let own: Vec<String> = first
                .iter()
                .filter(|(_, s, _)| *s == format!("m{i}"))
                .map(|(_, _, t)| t.clone())
                .collect();
            assert_eq!(own, (0..250).map(|n| n.to_string()).collect::<Vec<_>>());
        }
    }
}

#[test]
fn fans_out_to_a_thousand_members() {
    for (engine, hub, _redis) in hubs(unlimited()) {
        let inboxes: Vec<_> = (0..1000).map(|_| Inbox::new(1000)).collect();
        let _members: Vec<_> = inboxes
            .iter()
            .map(|inbox| hub.join("big", "", inbox.clone()).expect("join"))
            .collect();
        let last = Inbox::new(1000);
        let _last = hub.join("big", "last", last.clone()).expect("join");
        last.wait_for_kind(Kind::JOIN, "last");
        for n in 0..100 {
            hub.publish("big", "svc", &format!("m{n}")).unwrap();
        }
        let expected: Vec<String> = (0..100).map(|n| format!("m{n}")).collect();
        for inbox in &inboxes {
            inbox.wait_for(100, engine);
            let texts: Vec<String> = inbox.said().into_iter().map(|(_, _, t)| t).collect();
            assert_eq!(texts, expected, "{engine}");
        }
    }
}

#[test]
fn a_stuck_member_is_dropped_and_the_others_carry_on_in_order() {
    for (engine, hub, _redis) in hubs(unlimited()) {
        let stuck = Inbox::new(5);
        let fine = Inbox::new(1000);
        let _stuck = hub.join("r", "stuck", stuck.clone()).expect("join");
        let _fine = hub.join("r", "fine", fine.clone()).expect("join");
        fine.wait_for_kind(Kind::JOIN, "fine");
        for n in 0..20 {
            hub.publish("r", "svc", &n.to_string()).unwrap();
        }
        fine.wait_for(20, engine);
        let texts: Vec<String> = fine.said().into_iter().map(|(_, _, t)| t).collect();
        assert_eq!(texts, (0..20).map(|n| n.to_string()).collect::<Vec<_>>());
        assert!(stuck.evicted.load(Ordering::SeqCst), "{engine}");
        fine.wait_for_kind(Kind::LEAVE, "stuck");
        assert!(stuck.all().len() <= 5, "{engine}");
    }
}

#[test]
fn join_and_leave_races_leave_no_ghosts() {
    for (engine, hub, _redis) in hubs(unlimited()) {
        let stay = Inbox::new(100_000);
        let _stay = hub.join("r", "stay", stay.clone()).expect("join");
        stay.wait_for_kind(Kind::JOIN, "stay");
        let churn: Vec<_> = (0..4)
            .map(|t| {
                let hub = Arc::clone(&hub);
                thread::spawn(move || {
                    for n in 0..50 {
                        let member = hub
                            .join("r", &format!("c{t}"), Inbox::new(100_000))
                            .expect("join");
                        member.say(&format!("c{t}:{n}")).unwrap();
                        drop(member);
                    }
                })
            })
            .collect();
        churn.into_iter().for_each(|c| c.join().unwrap());
        // Once the dust settles, a newcomer finds only who stayed.
        let late = Inbox::new(1000);
        let _late = hub.join("r", "late", late.clone()).expect("join");
        let joined = late.wait_for_kind(Kind::JOIN, "late");
        assert_eq!(joined.members, ["late", "stay"], "{engine}");
        // And every JOIN the stayer saw of a churner has its LEAVE.
        let events = stay.all();
        for t in 0..4 {
            let who = format!("c{t}");
            let count = |kind: Kind| {
                events
                    .iter()
                    .filter(|m| m.kind.enum_value_or_default() == kind && m.sender == who)
                    .count()
            };
            assert_eq!(count(Kind::JOIN), count(Kind::LEAVE), "{engine}: {who}");
        }
    }
}

#[test]
fn a_member_resuming_gets_exactly_what_it_missed_then_the_live_ones() {
    for (engine, hub, _redis) in hubs(unlimited()) {
        let a = Inbox::new(1000);
        let member = hub.join("r", "a", a.clone()).expect("join");
        for n in 0..5 {
            member.say(&n.to_string()).unwrap();
        }
        a.wait_for(5, engine);
        let last = a.all().last().cloned().unwrap();
        drop(member);
        for n in 5..10 {
            hub.publish("r", "svc", &n.to_string()).unwrap();
        }
        let again = Inbox::new(1000);
        let resume = Resume {
            since: last.seq,
            epoch: last.epoch.clone(),
        };
        let _member = hub
            .join_from("r", "a", again.clone(), Some(resume))
            .expect("join");
        let joined = again.wait_for_kind(Kind::JOIN, "a");
        assert!(joined.recovered, "{engine}: {joined:?}");
        hub.publish("r", "svc", "live").unwrap();
        again.wait_for(6, engine);
        let got = again.all();
        // The replay: its LEAVE, then 5..10; then its JOIN; then the live one.
        let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
        assert_eq!(
            seqs,
            (last.seq + 1..=last.seq + 8).collect::<Vec<_>>(),
            "{engine}"
        );
        let texts: Vec<String> = again.said().into_iter().map(|(_, _, t)| t).collect();
        assert_eq!(texts, ["5", "6", "7", "8", "9", "live"], "{engine}");
        // From another epoch, or past the log: said so.
        let other = Inbox::new(1000);
        let stale = Resume {
            since: 1,
            epoch: "another".into(),
        };
        let _other = hub
            .join_from("r", "o", other.clone(), Some(stale))
            .expect("join");
        assert!(!other.wait_for_kind(Kind::JOIN, "o").recovered, "{engine}");
    }
}

#[test]
fn a_room_filling_all_at_once_drops_no_one() {
    // A queue of 64: a joiner's JOIN may come back from Redis after the
    // reader has handed it more than that many others' JOINs. A waiting
    // joiner holds eight queues' worth (`room::WAITING_HOLDS`), and 480
    // joiners fit in that whatever the order: none may be dropped.
    let config = ChatConfig {
        send_queue: 64,
        ..unlimited()
    };
    for (engine, hub, redis) in hubs(config.clone()) {
        // Two instances, as far as Redis goes: each reads the other's joins.
        let other = match &redis {
            Some(redis) => redis_hub(redis, &config),
            None => Arc::clone(&hub),
        };
        let inboxes: Vec<_> = (0..480).map(|_| Inbox::new(100_000)).collect();
        let members: Vec<_> = thread::scope(|s| {
            let joining: Vec<_> = inboxes
                .chunks(30)
                .enumerate()
                .map(|(t, chunk)| {
                    let hub = if t % 2 == 0 { &hub } else { &other };
                    s.spawn(move || {
                        chunk
                            .iter()
                            .enumerate()
                            .map(|(i, inbox)| {
                                hub.join("full", &format!("m{t}-{i}"), inbox.clone())
                                    .expect("join")
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            joining
                .into_iter()
                .flat_map(|j| j.join().unwrap())
                .collect()
        });
        for (n, inbox) in inboxes.iter().enumerate() {
            let name = format!("m{}-{}", n / 30, n % 30);
            let joined = inbox.wait_for_kind(Kind::JOIN, &name);
            assert!(
                !joined.members.is_empty(),
                "{engine}: {name} got its own JOIN"
            );
            assert!(
                !inbox.evicted.load(Ordering::SeqCst),
                "{engine}: {name} dropped"
            );
        }
        hub.publish("full", "svc", "all here").unwrap();
        for inbox in &inboxes {
            inbox.wait_for(1, engine);
        }
        drop(members);
    }
}
