"""Tokens minted by a third-party library (PyJWT) against `papo serve
--auth-secret-file --auth-public-key`: HS256 and EdDSA tokens accepted on
both protocols, `papo token`'s tokens read by PyJWT, and the classic
attacks refused (alg none, HS256 signed with the public key, an expired
token). Exits non-zero on the first failure.

    python interop.py PAPO_BINARY
"""
import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import tempfile
import time

import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tls"))
from interop import LOGS, grpc_calls, message, start  # noqa: E402  (shared with the TLS test)

PAPO = sys.argv[1]
TIMEOUT = 10
SECRET = b"the interop test's secret, thirty-two bytes or more"


def fail(why, log=None):
    if log:
        with open(log) as f:
            sys.stderr.write("--- papo's log:\n%s" % f.read()[-4000:])
    sys.exit("auth-interop: " + why)


def serve(secret_file, public_file):
    proc, ws, rpc = start(["--auth-secret-file", secret_file, "--auth-public-key", public_file])
    return proc, ws, rpc, LOGS[-1]


def claims(sub, ttl=60, **extra):
    now = int(time.time())
    return dict(sub=sub, iat=now, exp=now + ttl, **extra)


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def own_join(ws):
    while True:
        m = json.loads(ws.recv(timeout=TIMEOUT))
        if m.get("kind") == "JOIN" and m.get("members"):
            return m


def status_of(url, **kwargs):
    """The HTTP status a refused upgrade got (101 if it was accepted)."""
    try:
        with connect(url, open_timeout=TIMEOUT, **kwargs):
            return 101
    except InvalidStatus as e:
        return e.response.status_code


def main():
    work = tempfile.mkdtemp(prefix="papo-auth-interop-")
    secret_file = os.path.join(work, "secret")
    with open(secret_file, "wb") as f:
        f.write(SECRET + b"\n")
    private = Ed25519PrivateKey.generate()
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    public_file = os.path.join(work, "public.pem")
    with open(public_file, "wb") as f:
        f.write(public_pem)
    proc, ws, rpc, log = serve(secret_file, public_file)
    try:
        # HS256 from PyJWT, in the Authorization header: the name is the sub.
        hs = jwt.encode(claims("João", rooms=["geral", "dev-*"]), SECRET, algorithm="HS256")
        with connect("ws://%s/chat?room=dev-1" % ws, open_timeout=TIMEOUT,
                     additional_headers={"Authorization": "Bearer " + hs}) as member:
            joined = own_join(member)
            if joined["sender"] != "João" or joined["members"] != ["João"]:
                fail("HS256 member joined as %r" % joined, log)
        print("auth-interop: PyJWT HS256 token accepted over WebSocket, its sub the name")

        # EdDSA from PyJWT, in ?token= and in gRPC metadata.
        ed = jwt.encode(claims("bea"), private, algorithm="EdDSA")
        with connect("ws://%s/chat?room=geral&token=%s" % (ws, ed), open_timeout=TIMEOUT) as member:
            if own_join(member)["sender"] != "bea":
                fail("EdDSA member misnamed", log)
        send, _ = grpc_calls(grpc.insecure_channel(rpc))
        reply = send(message("bea", "oi", "geral"), timeout=TIMEOUT,
                     metadata=[("authorization", "Bearer " + ed)])
        if reply.get(1) != "Mensagem recebida: oi":
            fail("SendMessage with an EdDSA token answered %r" % reply, log)
        print("auth-interop: PyJWT EdDSA token accepted over WebSocket (?token=) and gRPC")

        # papo token's tokens are standard: PyJWT reads them.
        out = subprocess.run([PAPO, "token", "--secret-file", secret_file, "--sub", "cris",
                              "--rooms", "geral", "--read-only"], capture_output=True, text=True, check=True)
        decoded = jwt.decode(out.stdout.strip(), SECRET, algorithms=["HS256"])
        if decoded["sub"] != "cris" or decoded["rooms"] != ["geral"] or decoded["pub"] is not False:
            fail("papo token's claims read as %r" % decoded)
        print("auth-interop: papo token's token verified and read by PyJWT")

        # Refused: alg none, HS256 signed with the public key, expired, forged.
        header_none = b64(b'{"alg":"none","typ":"JWT"}')
        body = b64(json.dumps(claims("eve")).encode())
        none = "%s.%s." % (header_none, body)
        header_hs = b64(b'{"alg":"HS256","typ":"JWT"}')
        signed = ("%s.%s" % (header_hs, body)).encode()
        confused = "%s.%s" % (signed.decode(), b64(hmac.new(public_pem, signed, hashlib.sha256).digest()))
        expired = jwt.encode(claims("eve", ttl=-120), SECRET, algorithm="HS256")
        forged = jwt.encode(claims("eve"), b"not the server's secret, but long enough", algorithm="HS256")
        for what, token in (("alg none", none), ("HS256 with the public key", confused),
                            ("expired", expired), ("another secret", forged)):
            got = status_of("ws://%s/chat?room=geral&token=%s" % (ws, token))
            if got != 401:
                fail("%s: upgrade answered %s, not 401" % (what, got), log)
            try:
                send(message("eve", "x", "geral"), timeout=TIMEOUT,
                     metadata=[("authorization", "Bearer " + token)])
                fail("%s: SendMessage accepted" % what, log)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAUTHENTICATED:
                    fail("%s: SendMessage got %s" % (what, e.code()), log)
        # A valid token for other rooms, or another sender: forbidden.
        if status_of("ws://%s/chat?room=ops&token=%s" % (ws, hs)) != 403:
            fail("a room the token does not allow was not 403", log)
        print("auth-interop: alg none, HS256 with the public key, expired and forged tokens: 401 and "
              "UNAUTHENTICATED; another room: 403")

        with open(log) as f:
            logged = f.read()
        for token in (hs, ed, none, confused):
            signature = token.split(".")[2]
            if token in logged or (signature and signature in logged):
                fail("a token was written to the log", log)
        print("auth-interop: no token in papo's debug log")
    finally:
        proc.terminate()
        proc.wait()
        for name in LOGS:
            os.unlink(name)


if __name__ == "__main__":
    main()
