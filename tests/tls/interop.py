"""Third-party clients against `papo serve` over TLS: Python `websockets`
and `grpcio` trusting a `papo dev-cert` CA, mutual TLS refused without a
client certificate and accepted with one, and `openssl s_client` checking
the protocol versions and ALPN. Exits non-zero on the first failure.

    python interop.py PAPO_BINARY
"""
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time

import grpc
from websockets.sync.client import connect

PAPO = sys.argv[1]
TIMEOUT = 10


LOGS = []


def fail(why):
    # What the servers logged, to see the other side of a failure.
    for name in LOGS:
        with open(name) as f:
            sys.stderr.write("--- papo's log %s:\n%s" % (name, f.read()[-4000:]))
    sys.exit("tls-interop: " + why)


def start(extra, scheme="ws"):
    """Starts `papo serve` with `extra` flags on free ports; returns it and
    its two addresses. Its log is kept in LOGS."""
    log = tempfile.NamedTemporaryFile(mode="w+", prefix="papo-test-", suffix=".log", delete=False)
    LOGS.append(log.name)
    args = [PAPO, "serve", "--ws-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"] + list(extra)
    proc = subprocess.Popen(args, stderr=log, env=dict(os.environ, RUST_LOG="debug,grpcio=warn"))
    deadline = time.time() + 30
    text = ""
    while time.time() < deadline:
        time.sleep(0.05)
        with open(log.name) as f:
            text = f.read()
        ws = re.search(r"ws listening on %s://([^/]+)/ws" % scheme, text)
        rpc = re.search(r"grpc listening on (\S+)", text)
        if ws and rpc:
            return proc, ws.group(1), rpc.group(1)
    proc.kill()
    fail("papo serve did not start:\n" + text)


def serve(certs, *extra):
    """Starts papo over TLS on free ports; returns it and its two addresses."""
    tls = ["--tls-cert", os.path.join(certs, "cert.pem"), "--tls-key", os.path.join(certs, "key.pem")]
    return start(tls + list(extra), "wss")


# Protobuf by hand: the messages are a few string fields, and this keeps
# the test free of generated code and protoc.
def field(number, text):
    data = text.encode()
    out, n = bytes([number << 3 | 2]), len(data)
    while n >= 0x80:
        out += bytes([n & 0x7f | 0x80])
        n >>= 7
    return out + bytes([n]) + data


def fields(data):
    """A message's length-delimited fields as {number: text}; varints skipped."""
    out, i = {}, 0
    while i < len(data):
        key, shift = 0, 0
        while True:
            b = data[i]; i += 1
            key |= (b & 0x7f) << shift; shift += 7
            if b < 0x80:
                break
        value, shift = 0, 0
        while True:
            b = data[i]; i += 1
            value |= (b & 0x7f) << shift; shift += 7
            if b < 0x80:
                break
        if key & 7 == 2:
            out[key >> 3] = data[i:i + value].decode()
            i += value
    return out


def message(sender, text, room=""):
    return field(1, sender) + field(2, text) + (field(3, room) if room else b"")


def grpc_calls(channel):
    send = channel.unary_unary("/chat.ChatService/SendMessage",
                               request_serializer=lambda b: b, response_deserializer=fields)
    subscribe = channel.unary_stream("/chat.ChatService/Subscribe",
                                     request_serializer=lambda b: b, response_deserializer=fields)
    return send, subscribe


def main():
    certs = tempfile.mkdtemp(prefix="papo-tls-interop-")
    subprocess.run([PAPO, "dev-cert", "--out", certs], check=True, capture_output=True)
    ca_file = os.path.join(certs, "ca.pem")
    with open(ca_file, "rb") as f:
        ca = f.read()
    with open(os.path.join(certs, "cert.pem"), "rb") as f:
        cert = f.read()
    with open(os.path.join(certs, "key.pem"), "rb") as f:
        key = f.read()
    context = ssl.create_default_context(cafile=ca_file)

    server, ws, rpc = serve(certs)
    try:
        # websockets: the seed's reply over wss, and a /chat member's JSON.
        with connect("wss://%s/ws" % ws, ssl=context, open_timeout=TIMEOUT) as conn:
            conn.send("oi")
            reply = conn.recv(timeout=TIMEOUT)
            if reply != "Recebido: oi":
                fail("wss /ws replied %r" % reply)
        with connect("wss://%s/chat?room=py&name=ana" % ws, ssl=context, open_timeout=TIMEOUT) as conn:
            joined = json.loads(conn.recv(timeout=TIMEOUT))
            if joined.get("kind") != "JOIN" or joined.get("sender") != "ana":
                fail("wss /chat: no JOIN first: %r" % joined)
            conn.send(json.dumps({"text": "olá"}))
            said = json.loads(conn.recv(timeout=TIMEOUT))
            if said.get("text") != "olá" or said.get("sender") != "ana":
                fail("wss /chat: %r" % said)
        # Many handshakes in a row: a server that sends TLS 1.3 session
        # tickets loses a request now and then to this client's two threads.
        for n in range(300):
            with connect("wss://%s/ws" % ws, ssl=context, open_timeout=TIMEOUT) as conn:
                conn.send("n%d" % n)
                reply = conn.recv(timeout=TIMEOUT)
                if reply != "Recebido: n%d" % n:
                    fail("wss /ws, connection %d, replied %r" % (n, reply))
        print("tls-interop: websockets over wss: /ws and /chat ok, 300 handshakes in a row")

        # grpcio: SendMessage's reply, and a Subscribe stream hearing it.
        channel = grpc.secure_channel(rpc, grpc.ssl_channel_credentials(root_certificates=ca))
        send, subscribe = grpc_calls(channel)
        reply = send(message("Alice", "oi"), timeout=TIMEOUT)
        if reply.get(1) != "Mensagem recebida: oi":
            fail("grpc SendMessage replied %r" % reply)
        stream = subscribe(field(1, "py") + field(2, "bob"), timeout=TIMEOUT)
        first = next(stream)
        if first.get(1) != "bob":
            fail("grpc Subscribe: no JOIN first: %r" % first)
        send(message("Alice", "para bob", "py"), timeout=TIMEOUT)
        heard = next(stream)
        if heard.get(2) != "para bob":
            fail("grpc Subscribe heard %r" % heard)
        stream.cancel()
        channel.close()
        print("tls-interop: grpcio over TLS: SendMessage and Subscribe ok")

        # openssl s_client: TLS 1.2 and 1.3 only, ALPN h2 on the gRPC port.
        def s_client(addr, *flags):
            out = subprocess.run(["openssl", "s_client", "-connect", addr, "-CAfile", ca_file] + list(flags),
                                 input=b"", capture_output=True, timeout=TIMEOUT)
            return out.returncode, (out.stdout + out.stderr).decode(errors="replace")
        for addr in (ws, rpc):
            for version, name in (("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")):
                # (The exit code says little: a server that closes after an
                # empty request makes s_client report an unexpected EOF.)
                _, text = s_client(addr, version)
                if ("New, %s, Cipher is" % name) not in text or "Verification: OK" not in text:
                    fail("%s refused %s:\n%s" % (addr, name, text))
            for version in ("-tls1", "-tls1_1"):
                # SECLEVEL=0 lets this client offer the old versions, so a
                # refusal is the server's.
                _, text = s_client(addr, version, "-cipher", "DEFAULT@SECLEVEL=0")
                if "Cipher is (NONE)" not in text:
                    fail("%s accepted %s:\n%s" % (addr, version, text))
        _, text = s_client(rpc, "-alpn", "h2")
        if "ALPN protocol: h2" not in text:
            fail("the gRPC port did not negotiate h2:\n" + text)
        print("tls-interop: openssl s_client: TLS 1.2 and 1.3 only, ALPN h2 ok")
    finally:
        server.terminate()
        server.wait()

    # Mutual TLS: no certificate, no call; the dev certificate is one.
    server, ws, rpc = serve(certs, "--grpc-client-ca", ca_file)
    try:
        anonymous = grpc.secure_channel(rpc, grpc.ssl_channel_credentials(root_certificates=ca))
        send, _ = grpc_calls(anonymous)
        try:
            send(message("Alice", "oi"), timeout=TIMEOUT)
            fail("mutual TLS: a call without a client certificate went through")
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE:
                fail("mutual TLS: expected UNAVAILABLE, got %s" % e.code())
        anonymous.close()
        known = grpc.secure_channel(rpc, grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert))
        send, _ = grpc_calls(known)
        reply = send(message("Alice", "oi"), timeout=TIMEOUT)
        if reply.get(1) != "Mensagem recebida: oi":
            fail("mutual TLS: replied %r" % reply)
        known.close()
        print("tls-interop: mutual TLS: refused without a certificate, served with one")
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(certs, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - any failure is reported with the logs
        import traceback
        traceback.print_exc()
        fail("%s: %s" % (type(e).__name__, e))
    finally:
        for name in LOGS:
            os.unlink(name)
