# papo: `make run` starts both servers, `make test` runs every check.
# Everything builds with the release profile so the gRPC C-core is compiled once.

CARGO ?= cargo
RELEASE := --release
PAPO := $(or $(CARGO_TARGET_DIR),target)/release/papo

.PHONY: all prereqs test-prereqs build run run-tls run-ws run-grpc ws-client grpc-client chat \
        test fmt-check lint unit proto proto-check autobahn tls-interop auth-interop bench clean

all: build

prereqs:
	@bash .ci/prereqs

build: prereqs
	$(CARGO) build $(RELEASE)

run: prereqs
	@echo "run: chat is open to any name; to require signed tokens:"
	@echo "  head -c 48 /dev/urandom | base64 > secret"
	@echo "  $(PAPO) serve --auth-secret-file secret"
	@echo "  $(PAPO) token --secret-file secret --sub ana    # then open /?room=geral&token=<it>"
	$(CARGO) run $(RELEASE) -- serve

# Both servers over TLS with a throwaway CA (written to dev-cert/ once).
DEV_CERT := dev-cert
run-tls: build
	@test -f $(DEV_CERT)/cert.pem || $(PAPO) dev-cert --out $(DEV_CERT)
	@echo "run-tls: trust $(DEV_CERT)/ca.pem, e.g.:"
	@echo "  $(PAPO) ws-client --url wss://127.0.0.1:8080/ws --ca $(DEV_CERT)/ca.pem"
	@echo "  $(PAPO) grpc-client --tls --ca $(DEV_CERT)/ca.pem"
	@echo "  the page: https://localhost:8080/ once $(DEV_CERT)/ca.pem is among the browser's authorities"
	$(PAPO) serve --tls-cert $(DEV_CERT)/cert.pem --tls-key $(DEV_CERT)/key.pem

run-ws: prereqs
	$(CARGO) run $(RELEASE) -- serve --no-grpc

run-grpc: prereqs
	$(CARGO) run $(RELEASE) -- serve --no-ws

ws-client: prereqs
	$(CARGO) run $(RELEASE) -- ws-client

grpc-client: prereqs
	$(CARGO) run $(RELEASE) -- grpc-client

chat: prereqs
	$(CARGO) run $(RELEASE) -- chat

# The whole suite: formatting, lints, generated-code freshness, unit and
# integration tests, then Autobahn conformance.
test: prereqs test-prereqs fmt-check lint proto-check unit tls-interop auth-interop autobahn

# The browser test drives Debian's chromium headless; the multi-instance
# tests start their own Debian redis-server, and the failover tests their
# own redis-sentinel.
test-prereqs:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || command -v "$$CHROMIUM" >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v redis-sentinel >/dev/null 2>&1 || missing="$$missing redis-sentinel"; \
	[ -z "$$missing" ] || { \
	  if [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "test-prereqs: installing$$missing" >&2; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "test-prereqs: the tests need:$$missing: sudo apt-get install -y$$missing" >&2; exit 1; fi; }

fmt-check:
	$(CARGO) fmt --check

lint: prereqs
	$(CARGO) clippy $(RELEASE) --all-targets -- -D warnings

unit: prereqs
	$(CARGO) test $(RELEASE)

# Regenerates src/proto from proto/*.proto (pure Rust, no protoc).
proto: prereqs
	$(CARGO) build $(RELEASE) --features regen-proto

# Fails when the committed src/proto differs from what proto/ generates.
proto-check: prereqs
	@out=$$(mktemp -d) && \
	PAPO_PROTO_OUT=$$out $(CARGO) check $(RELEASE) --features regen-proto --quiet && \
	if diff -r src/proto $$out; then echo "proto-check: src/proto is up to date"; rm -rf $$out; \
	else echo "proto-check: src/proto is stale: run 'make proto' and commit" >&2; rm -rf $$out; exit 1; fi

autobahn: build
	PAPO_BIN=$(PAPO) bash tests/autobahn/run.sh
	AUTOBAHN_TLS=1 PAPO_BIN=$(PAPO) bash tests/autobahn/run.sh

# Python websockets and grpcio, and openssl s_client, against papo over TLS.
tls-interop: build
	PAPO_BIN=$(PAPO) bash tests/python.sh tests/tls/interop.py

# Tokens minted by PyJWT (HS256, EdDSA) against papo, on both protocols.
auth-interop: build
	PAPO_BIN=$(PAPO) bash tests/python.sh tests/auth/interop.py

# The seed's comparison table, measured on this machine (a few minutes).
bench: build
	python3 benches/suite.py $(PAPO)

clean:
	$(CARGO) clean
