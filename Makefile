# The whole routine: make format lint test. `make run` starts everything locally.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test format lint bench soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11+ is needed")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,s3]'
	@# PgBouncer (Debian's package) for the tests of the daemon behind a transaction pooler;
	@# installed where we may (root with apt), else those tests are skipped with the reason.
	@command -v pgbouncer >/dev/null 2>&1 || test -x /usr/sbin/pgbouncer || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    { apt-get install -y -qq pgbouncer >/dev/null 2>&1 || \
	      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq pgbouncer >/dev/null 2>&1; }; }; } || \
	  echo "pgbouncer not installed: the tests that need it will be skipped"
	@# Tesseract with its Portuguese data (Debian's packages) for the OCR test, the same way.
	@tesseract --list-langs 2>/dev/null | grep -qx por || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    { apt-get install -y -qq tesseract-ocr tesseract-ocr-por >/dev/null 2>&1 || \
	      { apt-get update -qq >/dev/null 2>&1 && \
	        apt-get install -y -qq tesseract-ocr tesseract-ocr-por >/dev/null 2>&1; }; }; } || \
	  echo "tesseract (por) not installed: the OCR test will be skipped"
	touch $@

install: $(STAMP)

run: install
	$(VENV)/bin/pdpj-async dev

# Up to 4 test processes (one per core): each starts its own PostgreSQL and S3 server.
TEST_WORKERS ?= auto --maxprocesses 4

test: install
	$(PY) -m pytest --numprocesses $(TEST_WORKERS) $(PYTEST_ARGS)

format: install
	$(VENV)/bin/ruff format pdpj_async tests bench
	$(VENV)/bin/ruff check --fix --quiet pdpj_async tests bench || true

lint: install
	$(VENV)/bin/ruff format --check pdpj_async tests bench
	$(VENV)/bin/ruff check pdpj_async tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: install
	$(PY) bench/run_all.py $(BENCH)

soak: install
	$(PY) -m pytest -m soak tests/system $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache data
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
