# The two commands of the README quickstart are `make workbook` and `make test`.
# Each one sets up everything it needs first (scripts/setup.sh is idempotent).
PY := .venv/bin/python

.PHONY: setup workbook smoke test test-fast bench clean

setup:
	bash scripts/setup.sh

## Execute every notebook in order with papermill (full settings); figures go to figures/.
workbook: setup
	$(PY) scripts/run_notebooks.py --output outputs/notebooks

## The same, in smoke mode (seconds per notebook).
smoke: setup
	$(PY) scripts/run_notebooks.py --smoke --output outputs/smoke

## The whole test suite, notebooks included (smoke mode). CI runs exactly this.
test: setup
	$(PY) -m pytest -n 2 --durations=15

## Unit tests only, without the notebooks.
test-fast: setup
	$(PY) -m pytest -n 2 -m "not slow" --ignore=tests/test_notebooks.py

bench: setup
	$(PY) benchmarks/bench_data.py

clean:
	rm -rf outputs build .pytest_cache
