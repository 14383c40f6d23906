#!/usr/bin/env python3
"""`make bench`: the seed's comparison table, measured.

Starts `papo serve` (release build) and the TCP floor (`papo bench
tcp-echo-server`) on loopback, runs `papo bench` in every mode, prints the
table with each row's ratio to the floor and the goals, and writes
benches/results.json and benches/chart.svg. Absolute numbers mean little
without the machine: it is printed and saved with them.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PAPO = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "target", "release", "papo")


LOGS = []
ROUNDS = 11


def pinning():
    """One core for the servers and another for the clients when there are
    two: unpinned, a one-connection ping-pong is bimodal (about 10 or 20 us,
    with where the scheduler puts the two threads)."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None, None
    return {cores[1]}, {cores[0]}


SERVER_CPUS, CLIENT_CPUS = pinning()


def on(cpus):
    """A preexec_fn that pins the child to `cpus` (or leaves it be)."""
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


def median(results, key):
    """The run whose `key` is the median of all runs."""
    return sorted(results, key=lambda r: r[key])[len(results) // 2]


def ratio(runs, proto, conns, key, base="tcp"):
    """The median over rounds of `proto`'s `key` divided by `base`'s (the
    floor's) in the same round: neighbours in time share the machine's mood."""
    pairs = zip(runs[(proto, conns)], runs[(base, conns)])
    return sorted(p[key] / t[key] for p, t in pairs)[len(runs[(base, conns)]) // 2]


def start(args, pattern):
    """Starts a papo process, its log to a file (a pipe nobody reads would
    block it), and waits for the addresses the log announces."""
    env = dict(os.environ, RUST_LOG="info")
    log = tempfile.NamedTemporaryFile(mode="w+", prefix="papo-bench-", suffix=".log", delete=False)
    LOGS.append(log.name)
    proc = subprocess.Popen([PAPO] + args, stderr=log, env=env, preexec_fn=on(SERVER_CPUS))
    found = {}
    deadline = time.time() + 30
    while time.time() < deadline and len(found) < len(pattern):
        time.sleep(0.05)
        with open(log.name) as f:
            text = f.read()
        for key, rx in pattern.items():
            m = re.search(rx, text)
            if m:
                found[key] = m.group(1)
    if len(found) < len(pattern):
        proc.kill()
        sys.exit("bench: %s did not start" % " ".join(args))
    return proc, found


def bench(*args):
    try:
        out = subprocess.run([PAPO, "bench"] + list(args), capture_output=True, text=True, timeout=300,
                             preexec_fn=on(CLIENT_CPUS))
    except subprocess.TimeoutExpired:
        sys.exit("bench: papo bench %s took over 300 s" % " ".join(args))
    if out.returncode != 0:
        sys.exit("bench: papo bench %s failed: %s" % (" ".join(args), out.stderr.strip()))
    line = [l for l in out.stdout.splitlines() if l.startswith("{")][-1]
    result = json.loads(line)
    if result.get("errors", 0) != 0:
        sys.exit("bench: errors in %s: %s" % (" ".join(args), line))
    return result


def machine():
    model = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cores": os.cpu_count(), "cpu": model, "kernel": os.uname().release}


def chart(rows, path):
    """Grouped bars of p50 and p99 latency (log scale) per protocol and load."""
    import math
    width, height, left, bottom, top = 760, 360, 70, 60, 40
    bars = [(r["label"], r["p50_us"], r["p99_us"]) for r in rows]
    lo, hi = 1.0, max(b[2] for b in bars) * 2
    def y(v):
        v = max(v, lo)
        return top + (height - top - bottom) * (1 - math.log10(v / lo) / math.log10(hi / lo))
    slot = (width - left - 20) / len(bars)
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">' % (width, height),
             '<rect width="100%" height="100%" fill="white"/>',
             '<text x="%d" y="22" font-size="14">Latency per message, microseconds (log scale): p50 dark, p99 light</text>' % left]
    for exp in range(0, int(math.log10(hi)) + 1):
        v = 10 ** exp
        parts.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>' % (left, width - 20, y(v), y(v)))
        parts.append('<text x="%d" y="%.1f" text-anchor="end">%g</text>' % (left - 6, y(v) + 4, v))
    for i, (label, p50, p99) in enumerate(bars):
        x = left + i * slot + slot * 0.15
        w = slot * 0.35
        base = height - bottom
        parts.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="#2f6fed"><title>p50 %.0f us</title></rect>' % (x, y(p50), w, base - y(p50), p50))
        parts.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="#9db8f5"><title>p99 %.0f us</title></rect>' % (x + w, y(p99), w, base - y(p99), p99))
        parts.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>' % (x + w, base + 16, label))
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")


def free_port():
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def send_floor(members=1000, rounds=100, size=120, interval=0.02):
    """What fan-out cannot beat: the time to `send` one message on each of
    `members` loopback connections, from the servers' core, each received
    on the clients' core (an epoll loop that reads and drops). On one
    machine the member's side of TCP runs inside the sender's `send`. A
    Python loop: its own overhead is included, so if anything this floor is
    slower than a server's. Returns p50 and p99 over every send, in us."""
    import select
    import socket
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(members)
    port = listener.getsockname()[1]
    ready_r, ready_w = os.pipe()
    drainer = os.fork()
    if drainer == 0:
        try:
            if CLIENT_CPUS:
                os.sched_setaffinity(0, CLIENT_CPUS)
            conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(members)]
            poll = select.epoll()
            for c in conns:
                c.setblocking(False)
                poll.register(c.fileno(), select.EPOLLIN)
            by_fd = {c.fileno(): c for c in conns}
            os.write(ready_w, b"x")
            while by_fd:
                for fd, _ in poll.poll(1):
                    try:
                        if not by_fd[fd].recv(65536):
                            poll.unregister(fd)
                            del by_fd[fd]
                    except BlockingIOError:
                        pass
        finally:
            os._exit(0)
    previous = os.sched_getaffinity(0)
    accepted = []
    try:
        accepted = [listener.accept()[0] for _ in range(members)]
        os.read(ready_r, 1)
        if SERVER_CPUS:
            os.sched_setaffinity(0, SERVER_CPUS)
        message = b"x" * size
        # Like fan-out's own measure: for every (connection, round), the time
        # from the round's start to that connection's send returning.
        elapsed = []
        for _ in range(rounds):
            started = time.perf_counter()
            for conn in accepted:
                conn.send(message)
                elapsed.append(time.perf_counter() - started)
            time.sleep(interval)
        elapsed.sort()
        return {"p50_us": elapsed[len(elapsed) // 2] * 1e6, "p99_us": elapsed[len(elapsed) * 99 // 100] * 1e6}
    finally:
        os.sched_setaffinity(0, previous)
        for conn in accepted:
            conn.close()
        listener.close()
        os.waitpid(drainer, 0)
        os.close(ready_r)
        os.close(ready_w)


def redis_rows(memory_addrs, rounds):
    """The Redis engine beside the in-memory one, in one run: a redis-server
    of its own (persistence off) and two instances on it. Each measure runs
    `rounds` times, alternating engines; ratios are medians of the rounds'."""
    if not shutil.which("redis-server"):
        print("redis-server not found: the --redis rows are skipped (apt-get install redis-server)")
        return None
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             preexec_fn=on(SERVER_CPUS))
    # A replica, for --redis-durability replica: each batch waits for it.
    replica = subprocess.Popen(["redis-server", "--port", str(free_port()), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--replicaof", "127.0.0.1", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=on(SERVER_CPUS))
    instances = []
    try:
        time.sleep(0.5)
        for durability in ("memory", "memory", "replica", "replica"):
            instances.append(start(["serve", "--ws-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--rate-limit", "0",
                                    "--history", "2000", "--redis", "redis://127.0.0.1:%d" % port,
                                    "--redis-durability", durability],
                                   {"ws": r"ws listening on ws://([^/]+)/ws", "grpc": r"grpc listening on (\S+)"}))
        (_, a), (_, b), (_, c), (_, d) = instances
        runs = {}
        for _ in range(rounds):
            for engine, first, second in (("memory", memory_addrs, None), ("redis", a, b), ("replica", c, d)):
                fanout_args = ["--url", "ws://%s/chat" % first["ws"], "--members", "1000", "--msgs", "100"]
                if second:
                    fanout_args += ["--second-url", "ws://%s/chat" % second["ws"]]
                runs.setdefault(("fanout", engine), []).append(bench("fanout", *fanout_args))
                runs.setdefault(("publish", engine), []).append(
                    bench("grpc", "--addr", first["grpc"], "--conc", "32", "--reqs", "20000", "--channels", "4"))
                runs.setdefault(("resume", engine), []).append(
                    bench("resume", "--url", "ws://%s/chat" % first["ws"], "--msgs", "1000", "--rounds", "10"))

        def per_round(measure, key, engine="redis", beside="memory"):
            pairs = zip(runs[(measure, engine)], runs[(measure, beside)])
            return sorted(r[key] / m[key] for r, m in pairs)[rounds // 2]
        return {"rounds": rounds,
                "fanout": median(runs[("fanout", "redis")], "p99_us"),
                "fanout_memory": median(runs[("fanout", "memory")], "p99_us"),
                "fanout_ratio": per_round("fanout", "p99_us"),
                "publish": median(runs[("publish", "redis")], "ops_per_sec"),
                "publish_memory": median(runs[("publish", "memory")], "ops_per_sec"),
                "publish_ratio": per_round("publish", "ops_per_sec"),
                "resume": median(runs[("resume", "redis")], "p50_us"),
                "resume_memory": median(runs[("resume", "memory")], "p50_us"),
                "replica_fanout": median(runs[("fanout", "replica")], "p99_us"),
                "replica_fanout_ratio": per_round("fanout", "p99_us", "replica", "redis"),
                "replica_publish": median(runs[("publish", "replica")], "ops_per_sec"),
                "replica_publish_ratio": per_round("publish", "ops_per_sec", "replica", "redis"),
                "replica_publish_p99_ratio": per_round("publish", "p99_us", "replica", "redis")}
    finally:
        for proc, _ in instances:
            proc.terminate(); proc.wait()
        replica.terminate(); replica.wait()
        redis.terminate(); redis.wait()


def main():
    info = machine()
    print("machine: %(cores)s cores, %(cpu)s, Linux %(kernel)s" % info)
    if SERVER_CPUS:
        print("pinned: servers (and redis-server) on CPU %d, clients on CPU %d" % (min(SERVER_CPUS), min(CLIENT_CPUS)))
    else:
        print("not pinned: one core, shared by servers and clients")
    info["pinned"] = {"servers": sorted(SERVER_CPUS), "clients": sorted(CLIENT_CPUS)} if SERVER_CPUS else None
    # A throwaway CA and certificate for the TLS rows.
    certs = tempfile.mkdtemp(prefix="papo-bench-certs-")
    subprocess.run([PAPO, "dev-cert", "--out", certs], check=True, capture_output=True)
    ca = os.path.join(certs, "ca.pem")
    tls = ["--tls-cert", os.path.join(certs, "cert.pem"), "--tls-key", os.path.join(certs, "key.pem")]

    # Idle cost first, each on a fresh server (2,000 gRPC connections are
    # past --grpc-max-connections' default).
    idles = {}
    for proto, args, pattern, scheme, hold in (
            ("ws", ["serve", "--no-grpc", "--ws-addr", "127.0.0.1:0"], r"ws listening on ws://([^/]+)/ws", "ws://%s/ws", "10s"),
            ("grpc", ["serve", "--no-ws", "--grpc-addr", "127.0.0.1:0", "--grpc-max-connections", "4000"],
             r"grpc listening on (\S+)", "grpc://%s", "3s"),
            ("wss", ["serve", "--no-grpc", "--ws-addr", "127.0.0.1:0"] + tls, r"ws listening on wss://([^/]+)/ws", "wss://%s/ws", "10s"),
            ("tcp", ["bench", "tcp-echo-server", "--addr", "127.0.0.1:0"], r"tcp-echo listening on (\S+)", "tcp://%s", "3s")):
        server, addrs = start(args, {"addr": pattern})
        idles[proto] = bench("idle", "--url", scheme % addrs["addr"], "--conns", "2000", "--pid", str(server.pid), "--hold", hold,
                             *(["--ca", ca] if proto == "wss" else []))
        server.terminate(); server.wait()
    idle = idles["ws"]

    # Load from a few connections is what is measured: no rate limit. Rooms
    # keep 2,000 entries, so a resume of 1,000 messages is complete.
    server, addrs = start(["serve", "--ws-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--rate-limit", "0",
                           "--history", "2000"],
                          {"ws": r"ws listening on ws://([^/]+)/ws", "grpc": r"grpc listening on (\S+)"})
    secure, secure_addrs = start(["serve", "--ws-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--rate-limit", "0"] + tls,
                                 {"ws": r"ws listening on wss://([^/]+)/ws", "grpc": r"grpc listening on (\S+)"})
    floor, floor_addr = start(["bench", "tcp-echo-server", "--addr", "127.0.0.1:0"], {"tcp": r"tcp-echo listening on (\S+)"})
    ws_url = "ws://%s/ws" % addrs["ws"]
    wss_url = "wss://%s/ws" % secure_addrs["ws"]
    # Client and servers share the cores, and single runs vary by a quarter
    # with where the scheduler puts the threads: each load runs ROUNDS
    # times, the three servers in turn, and the median run stands for it.
    runs = {}
    try:
        for conns, msgs in ((1, 10000), (32, 5000)):
            for _ in range(ROUNDS):
                runs.setdefault(("tcp", conns), []).append(
                    bench("tcp", "--addr", floor_addr["tcp"], "--conns", str(conns), "--msgs", str(msgs)))
                runs.setdefault(("ws", conns), []).append(
                    bench("ws", "--url", ws_url, "--conns", str(conns), "--msgs", str(msgs)))
                runs.setdefault(("grpc", conns), []).append(
                    bench("grpc", "--addr", addrs["grpc"], "--conc", str(conns),
                          "--reqs", str(conns * msgs // 4), "--channels", str(min(conns, 4))))
                runs.setdefault(("wss", conns), []).append(
                    bench("ws", "--url", wss_url, "--conns", str(conns), "--msgs", str(msgs), "--ca", ca))
                runs.setdefault(("grpcs", conns), []).append(
                    bench("grpc", "--addr", secure_addrs["grpc"], "--conc", str(conns), "--tls", "--ca", ca,
                          "--reqs", str(conns * msgs // 4), "--channels", str(min(conns, 4))))
        fanouts = [bench("fanout", "--url", "ws://%s/chat" % addrs["ws"], "--members", "1000", "--msgs", "100")
                   for _ in range(3)]
        floor_sends = send_floor()
        # What a wss connection costs to start: TCP, the TLS handshake, the
        # upgrade and one reply, one client thread.
        connects = [bench("connect", "--url", wss_url, "--count", "1000", "--ca", ca, "--pid", str(secure.pid))
                    for _ in range(3)]
        shared = redis_rows(addrs, ROUNDS)
    finally:
        server.terminate(); floor.terminate(); secure.terminate()
        server.wait(); floor.wait(); secure.wait()
    # One connection is about latency, 32 about throughput.
    results = {k: median(v, "p50_us" if k[1] == 1 else "ops_per_sec") for k, v in runs.items()}
    fanout = median(fanouts, "p99_us")
    print("each row: the median of %d runs, each ratio the median of the %d rounds' ratios; fan-out: the median of 3"
          % (ROUNDS, ROUNDS))

    names = {"tcp": ("TCP floor", "raw bytes"), "ws": ("WebSocket /ws", "text frames"), "grpc": ("gRPC unary", "protobuf"),
             "wss": ("WebSocket wss", "text frames"), "grpcs": ("gRPC over TLS", "protobuf")}
    print()
    print("| %-14s | %-11s | %-22s | %-22s | %-26s | %-24s |" % (
        "protocol", "encoding", "1 conn: msg/s", "1 conn: p50 / p99 us", "32 conns: msg/s, p50/p99 us", "idle conn: KiB, threads"))
    print("|" + "|".join("-" * n for n in (16, 13, 24, 24, 28, 26)) + "|")
    rows = []
    for proto in ("tcp", "ws", "wss", "grpc", "grpcs"):
        one, many = results[(proto, 1)], results[(proto, 32)]
        idle_cell = "%-24s" % "-"
        if proto in idles:
            kib = idles[proto]["rss_kib_per_conn"]
            idle_cell = "%5.1f (%.2fx), %.2f      " % (kib, kib / idles["tcp"]["rss_kib_per_conn"], idles[proto]["threads_per_conn"])
        print("| %-14s | %-11s | %8.0f (%.2fx)      | %6.1f / %-6.1f (%.2fx) | %7.0f (%.2fx), %4.0f/%-5.0f | %s |" % (
            names[proto][0], names[proto][1], one["ops_per_sec"], ratio(runs, proto, 1, "ops_per_sec"),
            one["p50_us"], one["p99_us"], ratio(runs, proto, 1, "p50_us"),
            many["ops_per_sec"], ratio(runs, proto, 32, "ops_per_sec"), many["p50_us"], many["p99_us"],
            idle_cell))
        rows.append(dict(label="%s x1" % proto, **one))
        rows.append(dict(label="%s x32" % proto, **many))
    rows.append(dict(label="fanout 1000", **fanout))
    print()
    print("fan-out to 1,000 WebSocket members: p50 %.0f us, p99 %.0f us (each run's p99: %s)" % (
        fanout["p50_us"], fanout["p99_us"], ", ".join("%.0f" % f["p99_us"] for f in fanouts)))
    print("its floor, one send on each of 1,000 loopback connections from one core, 100 rounds: p50 %.0f us, "
          "p99 %.0f us (fan-out p99 %.2fx the floor's)" % (floor_sends["p50_us"], floor_sends["p99_us"],
                                                         fanout["p99_us"] / floor_sends["p99_us"]))
    print("idle WebSocket connection: %.1f KiB RSS, %.2f threads (server CPU %.2f s over %.0f s idle)" % (
        idle["rss_kib_per_conn"], idle["threads_per_conn"], idle["server_cpu_s"], idle["seconds"]))
    connect = median(connects, "ops_per_sec")
    print("new wss connections (TCP + TLS handshake + upgrade + one reply, one client): %.0f/s, p50 %.0f us, "
          "server CPU %.0f us each" % (connect["ops_per_sec"], connect["p50_us"], connect["server_cpu_us_per_op"]))
    print("over TLS: WebSocket p50 at 1 conn %.2fx plain, msg/s at 32 conns %.2fx plain; "
          "gRPC unary p50 %.2fx plain, calls/s at 32 %.2fx plain" % (
              ratio(runs, "wss", 1, "p50_us", "ws"), ratio(runs, "wss", 32, "ops_per_sec", "ws"),
              ratio(runs, "grpcs", 1, "p50_us", "grpc"), ratio(runs, "grpcs", 32, "ops_per_sec", "grpc")))

    if shared:
        print("with --redis (two instances on one Redis) beside the in-memory engine, median of %d rounds each:"
              % shared["rounds"])
        print("  fan-out to 1,000 members split over both: p50 %.0f us, p99 %.0f us (in memory, one instance: p99 %.0f us)"
              % (shared["fanout"]["p50_us"], shared["fanout"]["p99_us"], shared["fanout_memory"]["p99_us"]))
        print("  32 publishers into one room (SendMessage): %.0f msg/s, p50 %.0f us, p99 %.0f us (in memory: %.0f msg/s)"
              % (shared["publish"]["ops_per_sec"], shared["publish"]["p50_us"], shared["publish"]["p99_us"],
                 shared["publish_memory"]["ops_per_sec"]))
        print("  resume, 1,000 messages replayed: p50 %.1f ms (in memory: %.1f ms)"
              % (shared["resume"]["p50_us"] / 1000, shared["resume_memory"]["p50_us"] / 1000))
        print("  --redis-durability replica (one replica, a WAIT a batch and a round): 32 publishers %.0f msg/s "
              "(%.2fx memory durability), p99 %.0f us (%.2fx); fan-out p99 %.0f us (%.2fx)"
              % (shared["replica_publish"]["ops_per_sec"], shared["replica_publish_ratio"],
                 shared["replica_publish"]["p99_us"], shared["replica_publish_p99_ratio"],
                 shared["replica_fanout"]["p99_us"], shared["replica_fanout_ratio"]))

    goals = [
        ("WebSocket p50 at 1 conn <= 1.3x TCP", ratio(runs, "ws", 1, "p50_us"), "<=", 1.3),
        ("gRPC unary p50 at 1 conn <= 6x TCP", ratio(runs, "grpc", 1, "p50_us"), "<=", 6.0),
        ("WebSocket msg/s at 32 conns >= 0.9x TCP", ratio(runs, "ws", 32, "ops_per_sec"), ">=", 0.9),
        ("fan-out to 1,000 members p99 <= 10 ms", fanout["p99_us"] / 1000.0, "<=", 10.0),
        ("fan-out p99 <= 1.1x 1,000 bare sends' p99", fanout["p99_us"] / floor_sends["p99_us"], "<=", 1.1),
        ("idle connection <= 16 KiB RSS", idle["rss_kib_per_conn"], "<=", 16.0),
        ("idle connection <= 1 thread", idle["threads_per_conn"], "<=", 1.0),
        ("wss p50 at 1 conn <= 1.3x ws", ratio(runs, "wss", 1, "p50_us", "ws"), "<=", 1.3),
        ("wss msg/s at 32 conns >= 0.8x ws", ratio(runs, "wss", 32, "ops_per_sec", "ws"), ">=", 0.8),
        ("idle wss connection <= 32 KiB RSS", idles["wss"]["rss_kib_per_conn"], "<=", 32.0),
        ("idle wss connection <= 1 thread", idles["wss"]["threads_per_conn"], "<=", 1.0),
    ]
    if shared:
        goals += [
            ("redis fan-out p99 <= 2x in-memory p99", shared["fanout_ratio"], "<=", 2.0),
            ("redis 32 publishers msg/s >= 0.5x in-memory", shared["publish_ratio"], ">=", 0.5),
        ]
    print()
    for name, value, op, limit in goals:
        met = value <= limit if op == "<=" else value >= limit
        print("goal %-42s measured %7.2f  %s" % (name, value, "met" if met else "MISSED"))

    rounds = {"%s_%d_%s" % (p, c, key): [round(a[key] / b[key], 3) for a, b in zip(runs[(p, c)], runs[("tcp", c)])]
              for p, c, key in (("ws", 1, "p50_us"), ("grpc", 1, "p50_us"), ("ws", 32, "ops_per_sec"),
                                ("grpc", 32, "ops_per_sec"))}
    print("per-round ratios to the TCP floor: " + "; ".join("%s %s" % (k, " ".join("%.2f" % r for r in v))
                                                           for k, v in sorted(rounds.items())))
    out = {"machine": info, "results": {"%s_%d" % k: v for k, v in results.items()}, "fanout": fanout,
           "fanout_runs_p99_us": [f["p99_us"] for f in fanouts], "send_floor": floor_sends, "idle": idles,
           "connect_wss": connect, "redis": shared,
           "ratios_per_round": rounds,
           "goals": [{"goal": g, "measured": round(v, 3), "limit": l, "met": (v <= l if o == "<=" else v >= l)} for g, v, o, l in goals]}
    with open(os.path.join(HERE, "results.json"), "w") as f:
        json.dump(out, f, indent=2)
    chart(rows, os.path.join(HERE, "chart.svg"))
    print("\nwrote benches/results.json and benches/chart.svg")
    shutil.rmtree(certs, ignore_errors=True)
    for name in LOGS:
        with open(name) as f:
            warnings = [l for l in f if " WARN " in l]
        if warnings:
            print("server warnings (%d), first: %s" % (len(warnings), warnings[0].strip()))
        os.unlink(name)


if __name__ == "__main__":
    main()
