# Two commands matter: `make quickstart` and `make test`. Each builds .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTO_SRC := $(wildcard proto/insignia_proto/*.proto)
PYTEST_WORKERS ?= 2
# protoc finds its mypy plugins (protoc-gen-mypy) on PATH.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: test quickstart lint typecheck proto proto-check pytest sysdeps clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# Debian packages the integration tests drive for real (nginx, openssl, iproute2, curl, podman,
# busybox, chromium and its driver), then a PostgreSQL answering on the test DSN (tests/postgres_up.sh).
sysdeps:
	@missing=""; \
	for c in nginx:nginx openssl:openssl ip:iproute2 curl:curl ssh-keygen:openssh-client podman:podman busybox:busybox-static chromium:chromium chromedriver:chromium-driver; do \
	  command -v $${c%%:*} >/dev/null 2>&1 || [ -x /usr/sbin/$${c%%:*} ] || missing="$$missing $${c##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "missing Debian packages:$$missing (run as root or install them)"; exit 1; fi; \
	fi
	@bash tests/postgres_up.sh

# protoc finds its plugins on PATH; name the venv's explicitly so `make proto` works unactivated.
PROTOC := $(BIN)/python -m grpc_tools.protoc -Iproto \
  --plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy \
  --plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc

proto: $(STAMP)
	$(PROTOC) --python_out=proto --mypy_out=proto --grpc_python_out=proto \
	  --mypy_grpc_out=proto $(PROTO_SRC)

# Regenerate into a scratch dir and compare, so stale or missing stubs fail `make test`.
proto-check: $(STAMP)
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	$(PROTOC) --python_out=$$tmp --mypy_out=$$tmp --grpc_python_out=$$tmp \
	  --mypy_grpc_out=$$tmp $(PROTO_SRC) || { echo "protoc failed"; exit 1; }; \
	for f in $$tmp/insignia_proto/*; do \
	  cmp -s $$f proto/insignia_proto/$$(basename $$f) || { \
	    echo "stale or missing generated stub: proto/insignia_proto/$$(basename $$f) (run make proto)"; \
	    exit 1; }; \
	done; echo "generated stubs are current"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check insignia attestors server agent tests benchmarks examples devtools

typecheck: $(STAMP)
	$(BIN)/mypy --strict insignia devtools
	$(BIN)/mypy --strict examples/*.py

pytest: $(STAMP) sysdeps
	$(BIN)/pytest -n $(PYTEST_WORKERS) -p no:cacheprovider -q

test: $(STAMP) sysdeps proto-check lint typecheck pytest

quickstart: $(STAMP)
	$(BIN)/python -m devtools.quickstart

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
