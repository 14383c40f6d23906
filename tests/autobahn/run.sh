#!/usr/bin/env bash
# Runs the Autobahn|Testsuite fuzzingclient against papo's exact-echo endpoint
# (/echo) and fails on any FAILED case. wstest needs Python 2.7; it is
# installed once into a cache directory.
#
#   PAPO_BIN      the papo binary (required)
#   PAPO_CACHE    cache directory (default ~/.cache/papo)
#   PYTHON2       a Python 2.7 interpreter (default: pyenv's 2.7.18, else python2.7)
#   AUTOBAHN_CASES    comma-separated case patterns (default: all)
#   AUTOBAHN_REPORTS  keep the HTML/JSON reports in this directory
#   AUTOBAHN_TLS      1: serve over TLS (a papo dev-cert) and fuzz wss://…/echo
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
papo=${PAPO_BIN:?set PAPO_BIN to the papo binary}
cache=${PAPO_CACHE:-$HOME/.cache/papo}
site=$cache/wstest/lib/python2.7/site-packages

if [ -z "${PYTHON2:-}" ]; then
    if command -v pyenv >/dev/null 2>&1 && [ -x "$(pyenv root)/versions/2.7.18/bin/python" ]; then
        PYTHON2=$(pyenv root)/versions/2.7.18/bin/python
    elif command -v python2.7 >/dev/null 2>&1; then
        PYTHON2=$(command -v python2.7)
    else
        echo "autobahn: needs Python 2.7 (set PYTHON2); with pyenv: pyenv install 2.7.18" >&2
        exit 1
    fi
fi

if [ ! -f "$cache/wstest/.installed" ]; then
    echo "autobahn: installing autobahntestsuite into $cache/wstest" >&2
    "$PYTHON2" -m pip install --quiet --disable-pip-version-check --ignore-installed \
        --prefix "$cache/wstest" autobahntestsuite==25.10.1
    touch "$cache/wstest/.installed"
fi

work=$(mktemp -d)
reports=${AUTOBAHN_REPORTS:-$work/reports}
server_pid=
cleanup() {
    local rc=$?
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT

scheme=ws
tls=()
if [ "${AUTOBAHN_TLS:-0}" = 1 ]; then
    "$papo" dev-cert --out "$work/certs" >/dev/null
    scheme=wss
    tls=(--tls-cert "$work/certs/cert.pem" --tls-key "$work/certs/key.pem")
fi

# Autobahn's section 9 sends messages of up to 16 MiB.
RUST_LOG=${RUST_LOG:-info} "$papo" serve --no-grpc --ws-addr 127.0.0.1:0 --max-message-size 20MiB \
    "${tls[@]}" 2>"$work/server.log" &
server_pid=$!
addr=
for _ in $(seq 100); do
    addr=$(sed -n "s#.*ws listening on $scheme://\([^/]*\)/ws.*#\1#p" "$work/server.log")
    [ -n "$addr" ] && break
    sleep 0.1
done
[ -n "$addr" ] || { echo "autobahn: papo did not start" >&2; cat "$work/server.log" >&2; exit 1; }

cases=${AUTOBAHN_CASES:-*}
cases_json=$(printf '%s' "$cases" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().split(",")))')
cat >"$work/fuzzingclient.json" <<JSON
{
  "outdir": "$reports",
  "servers": [{"agent": "papo", "url": "$scheme://$addr/echo"}],
  "cases": $cases_json,
  "exclude-cases": [],
  "exclude-agent-cases": {}
}
JSON

echo "autobahn: fuzzingclient against $scheme://$addr/echo" >&2
(cd "$work" && "$PYTHON2" -c "
import site, sys
site.addsitedir('$site')
sys.argv = ['wstest', '-m', 'fuzzingclient', '-s', 'fuzzingclient.json']
from autobahntestsuite import wstest
wstest.run()
" >"$work/wstest.log" 2>&1) || { tail -20 "$work/wstest.log" >&2; exit 1; }

python3 "$here/summary.py" "$reports/index.json"
