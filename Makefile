# Every target works on a fresh clone; CI runs `make test` through .ci/run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Test processes run side by side: the tests mostly wait on brokers, not on the CPU.
TEST_JOBS ?= 4
PG_URL ?= $(or $(LEEK_TEST_POSTGRES_URL),postgres://postgres@127.0.0.1:5432/leek)
# Succeeds when PostgreSQL answers at PG_URL's server.
PG_REACHABLE = $(BIN)/python -c "import psycopg; psycopg.connect('$(PG_URL)'.rsplit('/',1)[0] + '/postgres', connect_timeout=3).close()" 2>/dev/null

.PHONY: install run migrate test test-sqlite test-postgres test-slow test-django6 lint typecheck bench clean

$(BIN)/leek: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/leek

install: $(BIN)/leek

migrate: install
	$(BIN)/python manage.py migrate --verbosity 1

## run: the broker on 127.0.0.1:8002 and the bundled project's SQLite database, in the foreground
run: migrate
	$(BIN)/leek start

## test: the suite on SQLite, then on PostgreSQL when one is reachable (fault-injection runs apart)
test: test-sqlite test-postgres

test-sqlite: install
	$(BIN)/pytest -n $(TEST_JOBS) -m "not slow"

test-postgres: install
	@if $(PG_REACHABLE); then \
		echo "== PostgreSQL run: $(PG_URL)"; \
		DATABASE_URL='$(PG_URL)' $(BIN)/pytest -n $(TEST_JOBS) -m "not slow"; \
	else \
		echo "== PostgreSQL not reachable at $(PG_URL): skipped the PostgreSQL run"; \
	fi

## test-slow: the fault-injection runs (random SIGKILLs of brokers and worker processes),
## on SQLite, then those that need PostgreSQL on it when one is reachable
test-slow: install
	$(BIN)/pytest -m slow
	@if $(PG_REACHABLE); then \
		echo "== PostgreSQL slow run: $(PG_URL)"; \
		DATABASE_URL='$(PG_URL)' $(BIN)/pytest -m "slow and postgresql"; \
	else \
		echo "== PostgreSQL not reachable at $(PG_URL): skipped the PostgreSQL slow run"; \
	fi

## test-django6: the suite on Django 6.x and Python 3.12+ (skipped, exit 0, without one)
test-django6:
	bash .ci/django6.sh

lint: install
	$(BIN)/ruff check leek tests scripts settings bench
	$(BIN)/ruff format --check leek tests settings bench

typecheck: install
	$(BIN)/mypy leek tests

bench:
	bash bench/run.sh

clean:
	rm -rf $(VENV) .venv-bench db.sqlite3* test-artifacts
