# betstream — two commands: `make run` and `make test`. Both bootstrap themselves from the
# lock file: a .venv with exactly the pinned dependencies, and Debian packages when missing.
PYTHON   ?= python3
# Paths are the checkout's, so `make -f path/to/Makefile run` works from any folder (the
# demo keeps its files under ./var of the folder it runs in).
ROOT     := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
VENV     := $(ROOT)/.venv
BIN      := $(VENV)/bin
LOCK     := $(ROOT)/requirements-dev.lock
STAMP    := $(VENV)/.installed-stamp
APT      := DEBIAN_FRONTEND=noninteractive apt-get
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# radon's grade B ends at this complexity; make test refuses grade C and worse.
COMPLEXITY_MAX := 10
# Tests run in parallel where they wait rather than compute (pytest-xdist workers).
TEST_WORKERS ?= 4
UV_COMPILE := $(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 \
              --generate-hashes --quiet

.PHONY: help run test bench-smoke torture bench bench-memory bench-instructions lock \
        redis-server valgrind chromium venv-tools clean

help:
	@echo "make run                 start redis (if needed), writer, confirmer, gateway and a demo load"
	@echo "make test                the test suite: unit, integration, end-to-end, short torture"
	@echo "make bench-smoke         every benchmark in a tiny mode, checked (CI runs it after make test)"
	@echo "make bench               benchmark betstream against its peers (several minutes)"
	@echo "make bench-memory        the writer's memory from 1M to 5M intents (about 15 minutes)"
	@echo "make bench-instructions [REV=rev]  the writer's instructions per intent (callgrind)"
	@echo "make torture             fault-injection scenarios at full size (var/torture-report.md)"
	@echo "make lock                re-resolve the dependencies into the lock files (an upgrade)"
	@echo "make clean               remove var/ and test caches (keeps .venv)"

# A fresh venv whenever the lock changes, so it holds exactly what the lock pins.
$(STAMP): $(LOCK) $(ROOT)/pyproject.toml | venv-tools
	@rm -rf $(VENV) && $(PYTHON) -m venv $(VENV)
	@echo "installing the locked dependencies into $(VENV) (log: $(VENV)/install.log)"
	@$(BIN)/python -m pip install --require-hashes --no-deps -r $(LOCK) \
	  > $(VENV)/install.log 2>&1 || { tail -30 $(VENV)/install.log; exit 1; }
	@$(BIN)/python -m pip install --no-deps --no-build-isolation -e $(ROOT) \
	  >> $(VENV)/install.log 2>&1 || { tail -30 $(VENV)/install.log; exit 1; }
	@touch $(STAMP)

# Debian's python3-venv when this Python cannot make a venv (a bare Debian image).
venv-tools:
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { echo "installing python3-venv"; \
	  $(SUDO) $(APT) update -qq && $(SUDO) $(APT) install -y -qq python3-venv >/dev/null; }

# Debian's redis-server when missing (the tests start private ones on free ports).
redis-server:
	@command -v redis-server >/dev/null || { echo "installing redis-server"; \
	  $(SUDO) $(APT) update -qq && $(SUDO) $(APT) install -y -qq redis-server >/dev/null; }

# Debian's chromium for the browser test (never a downloaded browser build).
chromium:
	@command -v chromium >/dev/null || { echo "installing chromium (browser tests)"; \
	  $(SUDO) $(APT) update -qq && $(SUDO) $(APT) install -y -qq chromium >/dev/null; }

# Debian's valgrind when missing (bench-instructions).
valgrind:
	@command -v valgrind >/dev/null || { echo "installing valgrind"; \
	  $(SUDO) $(APT) update -qq && $(SUDO) $(APT) install -y -qq valgrind >/dev/null; }

run: $(STAMP) redis-server
	@$(BIN)/betstream run $(BETSTREAM_RUN_ARGS)

test: $(STAMP) redis-server chromium
	@cd $(ROOT) && $(BIN)/lint-imports --no-cache --no-logo
	@cd $(ROOT) && complex="$$($(BIN)/radon cc --min C --show-complexity workers producer)"; \
	  if [ -n "$$complex" ]; then \
	    echo "functions above cyclomatic complexity $(COMPLEXITY_MAX) (split them):"; \
	    echo "$$complex"; exit 1; fi
	@cd $(ROOT) && $(BIN)/python -m pytest -n $(TEST_WORKERS)

# The benchmarks in their tiny modes, so they never rot (their numbers are not asserted).
bench-smoke: $(STAMP) redis-server valgrind
	@cd $(ROOT) && $(BIN)/python -m pytest bench/smoke

# Benchmarks (not tests): betstream against its peers; table + bench/results/<kind>.json/png.
bench: $(STAMP) redis-server
	@cd $(ROOT) && $(BIN)/python -m bench

bench-memory: $(STAMP) redis-server
	@cd $(ROOT) && $(BIN)/python -m bench.memory

# Deterministic where timings are not; `make bench-instructions REV=<git rev>` also counts
# that revision.
bench-instructions: $(STAMP) redis-server valgrind
	@cd $(ROOT) && $(BIN)/python -m bench.instructions $(if $(REV),--compare $(REV))

# Torture scenarios at full size (crash storm of 100k intents, Redis restarts, disk faults,
# hostile input, key rotation, split brain); the table lands in var/torture-report.md.
torture: $(STAMP) redis-server
	@cd $(ROOT) && BETSTREAM_TORTURE=full $(BIN)/python -m pytest tests/torture --timeout 3600

# An upgrade: re-resolve within pyproject's ranges, then run make test and commit both.
lock: $(STAMP)
	@cd $(ROOT) && $(UV_COMPILE) --extra dev --upgrade -o requirements-dev.lock
	@cd $(ROOT) && $(UV_COMPILE) -c requirements-dev.lock -o requirements.lock
	@echo "lock files rewritten; now run make test and commit them with pyproject.toml"

clean:
	cd $(ROOT) && rm -rf var .pytest_cache .hypothesis
