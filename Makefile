# The README's two commands: `make race` runs the main job, `make test` runs the tests.
# Each does its own set-up (virtual environment + install), idempotently.
PYTHON ?= python3.11
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: race test bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH" >&2; exit 2; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

# the default race (every installed engine on sarge); e.g. `make race RACE_ARGS=quick`
race: $(STAMP)
	$(PY) -m race.cli run $(RACE_ARGS)

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m benchmarks.bench_hw

clean:
	rm -rf $(VENV) build *.egg-info
