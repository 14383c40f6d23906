#!/usr/bin/env bash
# Runs tests/tls/interop.py: Python `websockets` and `grpcio` and `openssl
# s_client` against papo over TLS. The Python packages are installed once
# into a virtual environment in the cache directory.
#
#   PAPO_BIN    the papo binary (required)
#   PAPO_CACHE  cache directory (default ~/.cache/papo)
#   PYTHON3     a Python 3 interpreter (default python3)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
papo=${PAPO_BIN:?set PAPO_BIN to the papo binary}
cache=${PAPO_CACHE:-$HOME/.cache/papo}
venv=$cache/py3
python3=${PYTHON3:-python3}

command -v openssl >/dev/null 2>&1 || {
    echo "tls-interop: needs openssl: sudo apt-get install -y openssl" >&2
    exit 1
}
if [ ! -f "$venv/.installed" ]; then
    echo "tls-interop: installing websockets and grpcio into $venv" >&2
    "$python3" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        websockets==15.0.1 grpcio==1.74.0
    touch "$venv/.installed"
fi
exec "$venv/bin/python" "$here/interop.py" "$papo"
