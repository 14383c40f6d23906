#!/usr/bin/env bash
# Runs a Python test script against papo (tests/tls/interop.py: Python
# `websockets` and `grpcio` and `openssl s_client` over TLS;
# tests/auth/interop.py: tokens minted by PyJWT). The Python packages are
# installed once into a virtual environment in the cache directory.
#
#   bash tests/python.sh SCRIPT
#
#   PAPO_BIN    the papo binary (required)
#   PAPO_CACHE  cache directory (default ~/.cache/papo)
#   PYTHON3     a Python 3 interpreter (default python3)
set -euo pipefail

script=${1:?which test script}
papo=${PAPO_BIN:?set PAPO_BIN to the papo binary}
cache=${PAPO_CACHE:-$HOME/.cache/papo}
venv=$cache/py3
python3=${PYTHON3:-python3}

packages="websockets==15.0.1 grpcio==1.74.0 PyJWT==2.10.1 cryptography==44.0.2"

command -v openssl >/dev/null 2>&1 || {
    echo "python tests: need openssl: sudo apt-get install -y openssl" >&2
    exit 1
}
# The marker names what is installed: a new list installs again.
marker=$venv/.installed-$(echo "$packages" | cksum | cut -d' ' -f1)
if [ ! -f "$marker" ]; then
    echo "python tests: installing $packages into $venv" >&2
    [ -x "$venv/bin/python" ] || "$python3" -m venv "$venv"
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $packages
    touch "$marker"
fi
exec "$venv/bin/python" "$script" "$papo"
