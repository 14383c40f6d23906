//! Past the kernel's thread ceiling papo refuses, it does not abort. The
//! test lowers `vm.max_map_count` (each thread takes four mappings) for
//! its own server and puts it back however the test ends; it is the only
//! test of its binary, so no other server runs meanwhile.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use common::{raw_upgrade, serve, SOON};

const MAX_MAP_COUNT: &str = "/proc/sys/vm/max_map_count";

/// A sysctl set for the test, put back when dropped.
struct Lowered(String);

impl Drop for Lowered {
    fn drop(&mut self) {
        let _ = std::fs::write(MAX_MAP_COUNT, &self.0);
    }
}

#[test]
fn past_the_map_count_connections_are_refused_and_the_server_lives() {
    let before = std::fs::read_to_string(MAX_MAP_COUNT).expect("read vm.max_map_count");
    if std::fs::write(MAX_MAP_COUNT, before.trim()).is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root: vm.max_map_count must be writable"
        );
        eprintln!("skipped: vm.max_map_count is not writable here (run as root)");
        return;
    }
    let _restore = Lowered(before);
    std::fs::write(MAX_MAP_COUNT, "3000").expect("lower vm.max_map_count");
    let mut server = serve(&["--max-connections", "100000", "--no-grpc"]);
    let addr = server.ws.clone().unwrap().parse().unwrap();
    let said = server.log.lock().unwrap().join("\n");
    assert!(
        said.contains("vm.max_map_count (3000) allows about")
            && said.contains("fewer than --max-connections 100000"),
        "{said}"
    );

    let (mut held, mut refused) = (Vec::new(), 0);
    for _ in 0..1000 {
        let (mut socket, status) = raw_upgrade(addr, "/ws", "");
        if status.starts_with("HTTP/1.1 101") {
            held.push(socket);
        } else {
            assert!(status.starts_with("HTTP/1.1 503"), "{status}");
            let mut rest = String::new();
            let _ = socket.read_to_string(&mut rest);
            refused += 1;
        }
    }
    assert!(server.child.try_wait().unwrap().is_none(), "papo died");
    assert!(
        held.len() > 100 && refused > 0,
        "{} held, {refused} refused",
        held.len()
    );
    // Everyone already in is still served; a place freed is taken again.
    held.truncate(held.len() - 10);
    std::thread::sleep(Duration::from_millis(300));
    let (mut socket, status) = raw_upgrade(addr, "/ws", "");
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    socket.set_read_timeout(Some(SOON)).unwrap();
    let echo = common::client_frame(0x81, b"still here", true);
    std::io::Write::write_all(&mut socket, &echo).unwrap();
    let mut reply = [0u8; 22];
    socket.read_exact(&mut reply).unwrap();
    assert_eq!(&reply[2..], b"Recebido: still here");
    let log = server.log.lock().unwrap().clone();
    let warnings = log.iter().filter(|l| l.contains("refused")).count();
    assert!(warnings <= 2, "refusals flood the log: {warnings} lines");
    let _still: Vec<&TcpStream> = held.iter().collect();
}
