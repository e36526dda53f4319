# Each target sets up everything it needs on a fresh machine: the virtualenv, the install, then the run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
EXTRAS := dev,postgres,mysql,redis,rabbitmq,kafka,sqs,nats

.PHONY: demo test lint bench clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
	# The SQS tests run fauxqs, an SQS-compatible server from npm (the fixture falls back to moto).
	if command -v npm >/dev/null; then npm ci --prefix tests/sqs_server --no-audit --no-fund --silent; fi
	touch $(INSTALLED)

demo: $(INSTALLED)
	cd examples/shop && ../../$(BIN)/python -m shop

lint: $(INSTALLED)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

# tidings next to the raw drivers and its peers on every broker (bench/suite); writes bench/RESULTS.md and
# bench/drain.png. The peers live in a virtualenv of their own so that they never become our dependencies.
# Options go through BENCH_ARGS, e.g. make bench BENCH_ARGS='--messages 2000 --rounds 1'.
BENCH_VENV := .bench-venv
BENCH_INSTALLED := $(BENCH_VENV)/.installed

$(BENCH_INSTALLED): pyproject.toml bench/requirements-peers.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet -e '.[postgres,redis,rabbitmq,nats,kafka,sqs]' -r bench/requirements-peers.txt
	touch $(BENCH_INSTALLED)

bench: $(BENCH_INSTALLED)
	$(BENCH_VENV)/bin/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
