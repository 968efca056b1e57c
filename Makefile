# Two commands set everything up from a clean clone: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test check soak bench install clean

demo: $(VENV)/.installed
	$(BIN)/archiver demo

# Four workers on any machine: most tests wait on sockets, subprocesses and databases, not on a
# core. A file's tests stay on one worker, in order: the service and soak tests of one file never
# compete with each other for the machine. Where no PostgreSQL or MariaDB answers, the tests start
# throwaway ones for the run (tests/databases.py); the first lines of the run say which servers.
test: check
	$(BIN)/python -m pytest -q -n 4 --dist loadfile

# Style (ruff) and types (mypy --strict), as configured in pyproject.toml; part of `make test`.
check: $(VENV)/.installed
	$(BIN)/ruff check archiver tests bench migrations
	$(BIN)/mypy

# The chaos soak at length (a short one is part of `make test`); ARCHIVER_SOAK_* size it.
soak: $(VENV)/.installed
	ARCHIVER_SOAK_CYCLES=$${ARCHIVER_SOAK_CYCLES:-400} $(BIN)/python -m pytest -q -s tests/test_soak.py

# Benchmarks against the emulator; figures go to bench/RESULTS.md. BENCH_ARGS=--quick for a short run.
bench: $(VENV)/.bench-installed
	$(BIN)/python -m bench $(BENCH_ARGS)

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,postgres,mysql]'
	touch $@

$(VENV)/.bench-installed: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[test,postgres,mysql,bench]'
	touch $@

clean:
	rm -rf $(VENV) archiver-demo.db .pytest_cache
