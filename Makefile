# betstream — two commands: `make run` and `make test`. Both bootstrap themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
APT    := DEBIAN_FRONTEND=noninteractive apt-get
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test test-fast torture bench bench-memory bench-instructions redis-server valgrind chromium clean help

help:
	@echo "make run    start redis (if needed), writer, confirmer, gateway and a demo load"
	@echo "make test   run the whole test suite (unit, integration, end-to-end)"
	@echo "make bench  benchmark betstream against its peers (several minutes)"
	@echo "make bench-instructions [REV=rev]  the writer's instructions per intent (callgrind)"
	@echo "make torture  fault-injection scenarios at full size, with a report (var/torture-report.md)"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing betstream into $(VENV) (log: $(VENV)/install.log)"
	@$(BIN)/python -m pip install -q --upgrade pip > $(VENV)/install.log 2>&1
	@$(BIN)/python -m pip install -q -e '.[dev]' >> $(VENV)/install.log 2>&1 \
	  || { tail -30 $(VENV)/install.log; exit 1; }
	@touch $(STAMP)

# Debian's redis-server when missing (the tests start private ones on free ports).
redis-server:
	@command -v redis-server >/dev/null || { echo "installing redis-server"; \
	  $(SUDO) $(APT) update -qq && $(SUDO) $(APT) install -y -qq redis-server >/dev/null; }

# Debian's chromium for the browser test (never a downloaded browser build).
chromium:
	@command -v chromium >/dev/null || { echo "installing chromium (browser tests)"; \
	  $(SUDO) $(APT) update -qq && $(SUDO) $(APT) install -y -qq chromium >/dev/null; }

run: $(STAMP) redis-server
	@$(BIN)/betstream run

test: $(STAMP) redis-server chromium valgrind
	@$(BIN)/python -m pytest

# Benchmarks (not tests): betstream against its peers; table + bench/results/<date>.json/png.
bench: $(STAMP) redis-server
	@$(BIN)/python -m bench

# Writer RSS from 1M to 5M intents (about 15 minutes).
bench-memory: $(STAMP) redis-server
	@$(BIN)/python -m bench.memory

# The writer's instructions per intent under callgrind: deterministic where timings are not
# (about 5 minutes). `make bench-instructions REV=<git rev>` also counts that revision.
bench-instructions: $(STAMP) redis-server valgrind
	@$(BIN)/python -m bench.instructions $(if $(REV),--compare $(REV))

# Debian's valgrind when missing (bench-instructions).
valgrind:
	@command -v valgrind >/dev/null || { echo "installing valgrind"; \
	  $(SUDO) $(APT) update -qq && $(SUDO) $(APT) install -y -qq valgrind >/dev/null; }

# Torture scenarios at full size (crash storm of 100k intents, Redis restarts, disk faults,
# hostile input, key rotation, split brain); the table lands in var/torture-report.md.
torture: $(STAMP) redis-server
	@BETSTREAM_TORTURE=full $(BIN)/python -m pytest tests/torture -m torture --timeout 3600

test-fast: $(STAMP) redis-server
	@$(BIN)/python -m pytest -m "not e2e"

clean:
	rm -rf var .pytest_cache .hypothesis
