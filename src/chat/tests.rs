//! The chat core without sockets: order, fan-out, dropping slow members,
//! and join/leave races.

use super::*;
use crate::proto::chat::message::Kind;

/// `papo serve`'s defaults without a rate limit: these tests say a lot at
/// once.
fn unlimited() -> ChatConfig {
    ChatConfig {
        send_queue: 256,
        max_text: 4 * 1024 * 1024 - ENVELOPE,
        rate: Rate {
            per_second: 0,
            burst: 0,
        },
        history: 1000,
        history_ttl: Duration::from_secs(3600),
        history_budget: 64 << 20,
        max_rooms: 100_000,
        join_rate: Rate {
            per_second: 10,
            burst: 20,
        },
        address_join_rate: Rate {
            per_second: 100,
            burst: 2000,
        },
        one_member_per_name: false,
    }
}

/// Rooms that keep no log, and so end with their last member.
fn without_history() -> ChatConfig {
    ChatConfig {
        history: 0,
        ..unlimited()
    }
}
use std::sync::atomic::AtomicBool;
use std::thread;

/// An in-memory subscriber with a bounded queue, as the transports have.
struct Inbox {
    capacity: usize,
    /// Bytes of a replay it takes at once.
    replay_room: usize,
    messages: Mutex<Vec<Message>>,
    evicted: AtomicBool,
}

impl Inbox {
    fn new(capacity: usize) -> Arc<Inbox> {
        Inbox::holding(capacity, usize::MAX)
    }

    fn holding(capacity: usize, replay_room: usize) -> Arc<Inbox> {
        Arc::new(Inbox {
            capacity,
            replay_room,
            messages: Mutex::new(Vec::new()),
            evicted: AtomicBool::new(false),
        })
    }

    fn texts(&self) -> Vec<String> {
        lock(&self.messages)
            .iter()
            .filter(|m| m.kind.enum_value_or_default() == Kind::MESSAGE)
            .map(|m| m.text.clone())
            .collect()
    }

    fn seqs(&self) -> Vec<u64> {
        lock(&self.messages).iter().map(|m| m.seq).collect()
    }
}

impl Subscriber for Inbox {
    fn deliver(&self, delivery: &Arc<Delivery>) -> Result<(), SendError> {
        let mut messages = lock(&self.messages);
        if messages.len() >= self.capacity {
            return Err(SendError::Full);
        }
        messages.push(delivery.message.clone());
        Ok(())
    }

    fn replay_room(&self) -> usize {
        self.replay_room
    }

    fn evicted(&self) {
        self.evicted.store(true, Ordering::SeqCst);
    }
}

#[test]
fn members_see_joins_messages_and_leaves_with_stamps() {
    let hub = Hub::new(without_history());
    let ana = Inbox::new(100);
    let a = hub.join("sala", "ana", ana.clone()).expect("join");
    let bob = Inbox::new(100);
    let b = hub.join("sala", "bob", bob.clone()).expect("join");
    assert_eq!(a.say("oi"), Ok(3));
    drop(b);
    let seen = lock(&ana.messages).clone();
    let kinds: Vec<_> = seen
        .iter()
        .map(|m| m.kind.enum_value_or_default())
        .collect();
    assert_eq!(kinds, [Kind::JOIN, Kind::JOIN, Kind::MESSAGE, Kind::LEAVE]);
    // Each member gets the list once, with its own JOIN; events name who.
    assert_eq!(seen[0].members, ["ana"]);
    assert_eq!((seen[1].sender.as_str(), seen[1].members.len()), ("bob", 0));
    assert_eq!((seen[3].sender.as_str(), seen[3].members.len()), ("bob", 0));
    assert_eq!(lock(&bob.messages)[0].members, ["ana", "bob"]);
    assert_eq!(
        (
            seen[2].sender.as_str(),
            seen[2].text.as_str(),
            seen[2].room.as_str()
        ),
        ("ana", "oi", "sala")
    );
    assert_eq!(ana.seqs(), [1, 2, 3, 4]);
    assert!(seen.iter().all(|m| m.timestamp_ms > 1_600_000_000_000));
    // Bob saw the room from his join on, numbered as everyone else saw it.
    assert_eq!(bob.seqs(), [2, 3]);
    drop(a);
    assert!(hub.rooms().is_empty(), "an empty room is removed");
    assert_eq!(hub.publish("sala", "x", "nobody hears"), Ok(0));
}

#[test]
fn concurrent_senders_are_seen_in_one_order_by_everyone() {
    let hub = Hub::new(unlimited());
    let inboxes: Vec<_> = (0..4).map(|_| Inbox::new(10_000)).collect();
    let members: Vec<_> = inboxes
        .iter()
        .enumerate()
        .map(|(i, inbox)| {
            hub.join("r", &format!("m{i}"), inbox.clone())
                .expect("join")
        })
        .collect();
    thread::scope(|s| {
        for (i, member) in members.iter().enumerate() {
            s.spawn(move || {
                for n in 0..500 {
                    member.say(&format!("{i}:{n}")).unwrap();
                }
            });
        }
    });
    let reference = inboxes[0].texts();
    assert_eq!(reference.len(), 2000);
    for inbox in &inboxes {
        assert_eq!(inbox.texts(), reference, "every member sees the same order");
        let seqs = inbox.seqs();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "gapless numbering"
        );
    }
    // Each sender's own messages keep their order.
    for i in 0..4 {
        let mine: Vec<_> = reference
            .iter()
            .filter(|t| t.starts_with(&format!("{i}:")))
            .cloned()
            .collect();
        let expected: Vec<_> = (0..500).map(|n| format!("{i}:{n}")).collect();
        assert_eq!(mine, expected);
    }
}

#[test]
fn a_room_of_n_costs_linear_bytes_to_fill() {
    let hub = Hub::new(unlimited());
    let first = Inbox::new(10_000);
    let _members: Vec<_> = std::iter::once(hub.join("big", "m0", first.clone()).expect("join"))
        .chain((1..300).map(|i| {
            hub.join("big", &format!("m{i}"), Inbox::new(10_000))
                .expect("join")
        }))
        .collect();
    let listed: usize = lock(&first.messages).iter().map(|m| m.members.len()).sum();
    assert_eq!(listed, 1, "only its own JOIN lists members");
}

#[test]
fn fans_out_to_a_thousand_subscribers() {
    let hub = Hub::new(unlimited());
    let inboxes: Vec<_> = (0..1000).map(|_| Inbox::new(2000)).collect();
    let _members: Vec<_> = inboxes
        .iter()
        .map(|i| hub.join("big", "", i.clone()).expect("join"))
        .collect();
    for n in 0..10 {
        hub.publish("big", "svc", &format!("m{n}")).unwrap();
    }
    let expected: Vec<_> = (0..10).map(|n| format!("m{n}")).collect();
    assert!(inboxes.iter().all(|i| i.texts() == expected));
}

#[test]
fn a_stuck_subscriber_is_dropped_and_the_others_carry_on_in_order() {
    let hub = Hub::new(unlimited());
    let stuck = Inbox::new(3);
    let fine = Inbox::new(1000);
    let _s = hub.join("r", "stuck", stuck.clone()).expect("join");
    let _f = hub.join("r", "fine", fine.clone()).expect("join");
    for n in 0..50 {
        hub.publish("r", "svc", &n.to_string()).unwrap();
    }
    assert!(stuck.evicted.load(Ordering::SeqCst));
    let expected: Vec<_> = (0..50).map(|n| n.to_string()).collect();
    assert_eq!(fine.texts(), expected);
    let leave = lock(&fine.messages)
        .iter()
        .find(|m| m.kind.enum_value_or_default() == Kind::LEAVE)
        .cloned()
        .expect("the drop is announced");
    assert_eq!(leave.sender, "stuck");
    let seqs = fine.seqs();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
    // A dropped member no longer speaks in the room.
    assert_eq!(_s.say("still here?"), Ok(0));
}

#[test]
fn join_and_leave_races_leave_no_ghosts() {
    let hub = Hub::new(without_history());
    let watcher = Inbox::new(1_000_000);
    let _w = hub.join("r", "watcher", watcher.clone()).expect("join");
    thread::scope(|s| {
        for t in 0..4 {
            let hub = &hub;
            s.spawn(move || {
                for n in 0..200 {
                    let m = hub
                        .join("r", &format!("t{t}-{n}"), Inbox::new(10_000))
                        .expect("join");
                    m.say("hi").unwrap();
                    drop(m);
                    // Rooms come and go too.
                    drop(
                        hub.join(&format!("tmp{t}"), "x", Inbox::new(10))
                            .expect("join"),
                    );
                }
            });
        }
    });
    // Replaying the events from the watcher's snapshot leaves only it.
    let mut present: Vec<String> = Vec::new();
    for m in lock(&watcher.messages).iter() {
        match m.kind.enum_value_or_default() {
            Kind::JOIN if !m.members.is_empty() => present = m.members.clone(),
            Kind::JOIN => present.push(m.sender.clone()),
            Kind::LEAVE => present.retain(|n| *n != m.sender),
            Kind::MESSAGE | Kind::ERROR => {}
        }
    }
    assert_eq!(present, ["watcher"]);
    assert_eq!(hub.rooms(), ["r"]);
    assert!(watcher.seqs().windows(2).all(|w| w[1] == w[0] + 1));
}

#[test]
fn joining_a_room_as_its_last_member_leaves_never_strands_the_joiner() {
    // One room name, emptied and refilled all the time: a joiner must always
    // land in the room the hub publishes to, never in one just removed.
    let hub = Hub::new(without_history());
    let stranded = AtomicU64::new(0);
    thread::scope(|s| {
        for t in 0..4 {
            let (hub, stranded) = (&hub, &stranded);
            s.spawn(move || {
                for n in 0..2_000 {
                    let inbox = Inbox::new(10_000);
                    let member = hub.join("one", "", inbox.clone()).expect("join");
                    let probe = format!("{t}:{n}");
                    hub.publish("one", "probe", &probe).unwrap();
                    if !inbox.texts().contains(&probe) {
                        stranded.fetch_add(1, Ordering::Relaxed);
                    }
                    drop(member);
                }
            });
        }
    });
    assert_eq!(stranded.load(Ordering::Relaxed), 0, "joiners stranded");
    assert!(hub.rooms().is_empty());
}

#[test]
fn a_text_too_long_to_send_out_is_refused_before_it_is_published() {
    let hub = Hub::new(ChatConfig {
        max_text: 8,
        ..unlimited()
    });
    let inbox = Inbox::new(100);
    let member = hub.join("r", "ana", inbox.clone()).expect("join");
    assert_eq!(member.say("12345678"), Ok(2));
    assert_eq!(member.say("123456789"), Err(Refusal::TooLong { max: 8 }));
    assert_eq!(
        hub.publish("r", "svc", "123456789"),
        Err(Refusal::TooLong { max: 8 })
    );
    assert_eq!(inbox.texts(), ["12345678"]);
}

#[test]
fn a_member_over_its_rate_is_refused_and_nothing_is_published() {
    let hub = Hub::new(ChatConfig {
        rate: Rate {
            per_second: 1,
            burst: 3,
        },
        ..unlimited()
    });
    let inbox = Inbox::new(100);
    let member = hub.join("r", "ana", inbox.clone()).expect("join");
    let said: Vec<_> = (0..5).map(|n| member.say(&n.to_string())).collect();
    assert!(said[..3].iter().all(Result::is_ok), "{said:?}");
    assert_eq!(
        said[3..],
        [Err(Refusal::RateLimited), Err(Refusal::RateLimited)]
    );
    assert_eq!(inbox.texts(), ["0", "1", "2"]);
}

/// A room keeping `keep` messages for `ttl`.
fn with_history(keep: usize, ttl: Duration) -> Arc<Hub> {
    Hub::new(ChatConfig {
        history: keep,
        history_ttl: ttl,
        ..unlimited()
    })
}

/// What `inbox` got, as (seq, kind, sender, text).
fn log_of(inbox: &Inbox) -> Vec<(u64, Kind, String, String)> {
    lock(&inbox.messages)
        .iter()
        .map(|m| {
            (
                m.seq,
                m.kind.enum_value_or_default(),
                m.sender.clone(),
                m.text.clone(),
            )
        })
        .collect()
}

#[test]
fn a_member_resuming_gets_exactly_what_it_missed_then_the_live_ones() {
    let hub = with_history(100, Duration::from_secs(3600));
    let ana = Inbox::new(1000);
    let a = hub.join("r", "ana", ana.clone()).expect("join");
    let bob = Inbox::new(1000);
    let b = hub.join("r", "bob", bob.clone()).expect("join");
    a.say("1").unwrap();
    let last = log_of(&bob).last().map(|m| m.0).unwrap();
    let epoch = lock(&bob.messages)[0].epoch.clone();
    assert!(!epoch.is_empty());
    drop(b); // bob's connection drops
    for n in 2..=4 {
        a.say(&n.to_string()).unwrap();
    }
    let back = Inbox::new(1000);
    let resume = Resume {
        since: last,
        epoch: epoch.clone(),
    };
    let _b = hub
        .join_from("r", "bob", back.clone(), Some(resume))
        .expect("join");
    a.say("5").unwrap();
    let got = log_of(&back);
    // bob's own LEAVE, the three he missed, his JOIN, then the live one.
    let seqs: Vec<u64> = got.iter().map(|m| m.0).collect();
    assert_eq!(seqs, (last + 1..=last + 6).collect::<Vec<_>>(), "{got:?}");
    let texts: Vec<&str> = got
        .iter()
        .filter(|m| m.1 == Kind::MESSAGE)
        .map(|m| m.3.as_str())
        .collect();
    assert_eq!(texts, ["2", "3", "4", "5"]);
    let own_join = lock(&back.messages)
        .iter()
        .find(|m| m.kind.enum_value_or_default() == Kind::JOIN)
        .cloned()
        .unwrap();
    assert!(own_join.recovered, "{own_join:?}");
    assert!(lock(&back.messages).iter().all(|m| m.epoch == epoch));
}

#[test]
fn resuming_past_the_log_or_from_another_epoch_says_so() {
    let hub = with_history(3, Duration::from_secs(3600));
    let ana = Inbox::new(1000);
    let a = hub.join("r", "ana", ana.clone()).expect("join");
    for n in 0..10 {
        a.say(&n.to_string()).unwrap();
    }
    let epoch = lock(&ana.messages)[0].epoch.clone();
    // Too old: what remains (the last three), not recovered.
    let old = Inbox::new(1000);
    let _o = hub
        .join_from(
            "r",
            "old",
            old.clone(),
            Some(Resume {
                since: 2,
                epoch: epoch.clone(),
            }),
        )
        .expect("join");
    let texts: Vec<String> = old.texts();
    assert_eq!(texts, ["7", "8", "9"]);
    let join = lock(&old.messages).last().cloned().unwrap();
    assert_eq!(join.kind.enum_value_or_default(), Kind::JOIN);
    assert!(!join.recovered);
    // Another epoch: everything kept, not recovered.
    let other = Inbox::new(1000);
    let _x = hub
        .join_from(
            "r",
            "x",
            other.clone(),
            Some(Resume {
                since: 5,
                epoch: "gone".into(),
            }),
        )
        .expect("join");
    assert!(!lock(&other.messages).last().unwrap().recovered);
    // since 0, no epoch: everything kept, recovered only if the log is whole.
    let fresh = Inbox::new(1000);
    let _f = hub
        .join_from("r", "f", fresh.clone(), Some(Resume::default()))
        .expect("join");
    assert!(!lock(&fresh.messages).last().unwrap().recovered);
    // No resume at all: live messages only, as before.
    let live = Inbox::new(1000);
    let _l = hub.join("r", "live", live.clone()).expect("join");
    assert_eq!(log_of(&live).len(), 1);
}

#[test]
fn a_room_emptied_keeps_its_numbering_and_log_until_it_expires() {
    let hub = with_history(100, Duration::from_millis(200));
    let ana = Inbox::new(1000);
    let a = hub.join("r", "ana", ana.clone()).expect("join");
    a.say("oi").unwrap();
    let epoch = lock(&ana.messages)[0].epoch.clone();
    drop(a);
    // Said to an empty room: kept too.
    assert_eq!(hub.publish("r", "svc", "anyone?"), Ok(4));
    assert_eq!(hub.rooms(), ["r"]);
    let back = Inbox::new(1000);
    let _b = hub
        .join_from("r", "bob", back.clone(), Some(Resume::default()))
        .expect("join");
    assert_eq!(back.texts(), ["oi", "anyone?"]);
    let join = lock(&back.messages).last().cloned().unwrap();
    assert_eq!(
        (join.seq, join.epoch.as_str(), join.recovered),
        (5, epoch.as_str(), true)
    );
    drop(_b);
    // Past the TTL: a new epoch, numbered from 1, nothing replayed.
    thread::sleep(Duration::from_millis(300));
    let late = Inbox::new(1000);
    let _l = hub
        .join_from(
            "r",
            "late",
            late.clone(),
            Some(Resume {
                since: 5,
                epoch: epoch.clone(),
            }),
        )
        .expect("join");
    let got = lock(&late.messages).clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].seq, 1);
    assert_ne!(got[0].epoch, epoch);
    assert!(!got[0].recovered);
}

#[test]
fn a_logged_message_weighs_at_least_what_it_keeps() {
    use protobuf::Message as _;
    for text in [
        "\u{1}".repeat(100_000),
        "x".repeat(100_000),
        "ã\"\n".repeat(30_000),
    ] {
        let delivery = Delivery::new(Message {
            sender: "ana".into(),
            room: "sala".into(),
            text,
            seq: 123_456,
            timestamp_ms: room::now_ms(),
            epoch: unique_id(),
            ..Default::default()
        });
        // Both encodings, as the two transports cache them.
        let json = delivery.encoded(Encoding::WsJson, |m| {
            protobuf_json_mapping::print_to_string(m)
                .unwrap()
                .into_bytes()
        });
        let protobuf = delivery.encoded(Encoding::Protobuf, |m| m.write_to_bytes().unwrap());
        let m = &delivery.message;
        let kept = m.text.len() + m.sender.len() + m.room.len() + m.epoch.len();
        // The WebSocket frame adds a header of at most ten bytes.
        let kept = kept + json.len() + 10 + protobuf.len();
        assert!(
            budget::weight(&delivery) >= kept,
            "weighs {} for {kept} kept",
            budget::weight(&delivery)
        );
    }
}

#[test]
fn a_text_whose_json_is_past_the_limit_is_refused() {
    let hub = Hub::new(ChatConfig {
        max_text: 600,
        ..unlimited()
    });
    assert!(hub.check(&"x".repeat(600)).is_ok());
    // 100 control characters are 600 bytes as JSON; 101 are past it.
    assert!(hub.check(&"\u{1}".repeat(100)).is_ok());
    assert!(matches!(
        hub.check(&"\u{1}".repeat(101)),
        Err(Refusal::TooLong { max: 600 })
    ));
}

#[test]
fn rooms_past_the_limit_are_refused_and_named() {
    let hub = Hub::new(ChatConfig {
        max_rooms: 3,
        ..unlimited()
    });
    for room in ["a", "b", "c"] {
        assert!(hub.publish(room, "svc", "oi").is_ok());
    }
    let refused = Err(Refusal::TooManyRooms { max: 3 });
    assert_eq!(hub.publish("d", "svc", "oi"), refused);
    assert!(matches!(
        hub.join("e", "ana", Inbox::new(10)),
        Err(Refusal::TooManyRooms { max: 3 })
    ));
    // A room already held takes members and messages as before.
    let _ana = hub.join("a", "ana", Inbox::new(10)).expect("join");
    assert!(hub.publish("b", "svc", "oi").is_ok());
    assert_eq!(hub.rooms().len(), 3);
    assert!(Refusal::TooManyRooms { max: 3 }
        .to_string()
        .contains("at most 3 rooms"));
}

#[test]
fn the_history_budget_is_shared_fairly_between_rooms() {
    let hub = Hub::new(ChatConfig {
        history_budget: 1 << 20,
        ..unlimited()
    });
    let line = "x".repeat(1000);
    // One sender fills the budget from many rooms; then a quiet room says
    // a little; then the sender goes on.
    for n in 0..3000 {
        hub.publish(&format!("flood{}", n % 30), "svc", &line)
            .unwrap();
    }
    for n in 0..20 {
        hub.publish("quiet", "ana", &format!("q{n}")).unwrap();
    }
    for n in 0..3000 {
        hub.publish(&format!("flood{}", n % 30), "svc", &line)
            .unwrap();
    }
    let kept = |room: &str| {
        let inbox = Inbox::new(100_000);
        let resume = Resume {
            since: 0,
            epoch: String::new(),
        };
        let _m = hub
            .join_from(room, "", inbox.clone(), Some(resume))
            .expect("join");
        inbox.texts()
    };
    let quiet = kept("quiet");
    assert_eq!(quiet.len(), 20, "the quiet room kept {quiet:?}");
    assert_eq!(quiet.last().map(String::as_str), Some("q19"));
    // The flood's rooms share what is left, and the budget holds.
    assert!(!kept("flood0").is_empty());
    assert!(hub.history_budget.held.load(Ordering::Relaxed) <= 1 << 20);
}

#[test]
fn presence_churn_never_pushes_a_message_out_of_the_log() {
    let hub = Hub::new(ChatConfig {
        history: 10,
        ..unlimited()
    });
    let speaker = hub.join("r", "ana", Inbox::new(100)).expect("join");
    let before = Inbox::new(100);
    drop(hub.join("r", "watcher", before.clone()).expect("join"));
    let seen = lock(&before.messages)
        .last()
        .map(|m| (m.seq, m.epoch.clone()))
        .unwrap();
    for n in 0..5 {
        speaker.say(&format!("m{n}")).unwrap();
    }
    // Two hundred JOIN and LEAVE events, twenty times what the log keeps.
    for n in 0..100 {
        drop(
            hub.join("r", &format!("churn{n}"), Inbox::new(100))
                .expect("join"),
        );
    }
    let back = Inbox::new(1000);
    let resume = Resume {
        since: seen.0,
        epoch: seen.1,
    };
    let _w = hub
        .join_from("r", "watcher", back.clone(), Some(resume))
        .expect("join");
    assert_eq!(back.texts(), ["m0", "m1", "m2", "m3", "m4"]);
    let own = lock(&back.messages).last().cloned().unwrap();
    assert_eq!(own.kind.enum_value_or_default(), Kind::JOIN);
    assert!(own.recovered, "every message it missed was replayed");
    // The log kept its last ten events beside the messages.
    let events = lock(&back.messages).len() - 5 - 1;
    assert_eq!(events, 10);
}

#[test]
fn a_replay_larger_than_the_member_takes_is_its_newest_part_and_says_so() {
    let hub = Hub::new(unlimited());
    let big = "x".repeat(100_000);
    for n in 0..30 {
        hub.publish("r", "svc", &format!("{n}:{big}")).unwrap();
    }
    let resume = || Resume {
        since: 0,
        epoch: String::new(),
    };
    // Room for about five of them at once.
    let back = Inbox::holding(1000, 520_000);
    let _m = hub
        .join_from("r", "ana", back.clone(), Some(resume()))
        .expect("join");
    let got = lock(&back.messages).clone();
    let note = &got[0];
    assert_eq!(note.kind.enum_value_or_default(), Kind::ERROR);
    assert!(note.text.starts_with("replay from 26:"), "{}", note.text);
    let texts: Vec<&str> = got[1..got.len() - 1]
        .iter()
        .map(|m| m.text.split(':').next().unwrap_or_default())
        .collect();
    assert_eq!(texts, ["25", "26", "27", "28", "29"]);
    let own = got.last().unwrap();
    assert_eq!(own.kind.enum_value_or_default(), Kind::JOIN);
    assert!(!own.recovered);
    // With room for all, all of it, and recovered.
    let all = Inbox::new(1000);
    let _b = hub
        .join_from("r", "bob", all.clone(), Some(resume()))
        .expect("join");
    assert_eq!(all.texts().len(), 30);
    assert!(lock(&all.messages).last().unwrap().recovered);
}

#[test]
fn a_message_racing_its_rooms_sweep_is_numbered_or_refused_never_dropped() {
    // Rooms idle at once, and swept on every new room (the hub is full):
    // publishers and sweeps race all the time.
    let hub = Hub::new(ChatConfig {
        history_ttl: Duration::ZERO,
        max_rooms: 3,
        ..unlimited()
    });
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let hub = Arc::clone(&hub);
            thread::spawn(move || {
                let mut dropped = 0;
                for n in 0..3000 {
                    match hub.publish(&format!("r{}", (n + t) % 6), "svc", "oi") {
                        Ok(0) => dropped += 1,
                        Ok(_) | Err(Refusal::TooManyRooms { .. } | Refusal::Unavailable) => {}
                        Err(other) => panic!("{other:?}"),
                    }
                }
                dropped
            })
        })
        .collect();
    let dropped: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(dropped, 0, "answered as said, yet not numbered");
}
