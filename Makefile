# The two commands of the README quickstart are `make workbook` and `make test`.
# Each one sets up everything it needs first (scripts/setup.sh is idempotent).
PY := .venv/bin/python

.PHONY: setup workbook smoke test test-fast browser-test bench lab handouts clean

setup:
	bash scripts/setup.sh

## Execute every notebook in order with papermill (full settings); figures go to figures/.
workbook: setup
	$(PY) scripts/run_notebooks.py --output outputs/notebooks

## The same, in smoke mode (seconds per notebook).
smoke: setup
	$(PY) scripts/run_notebooks.py --smoke --output outputs/smoke

## The whole test suite, notebooks included (smoke mode). CI runs exactly this. As root (and in
## CI, where it is required) it first installs Chromium and Playwright for the browser test.
test: setup
	@if [ "$$(id -u)" = 0 ] || [ -n "$$CI" ]; then bash scripts/setup_browser.sh; \
	else echo "[test] not root: tests/browser is skipped (run make browser-test as root)"; fi
	MCM_REQUIRE_BROWSER=$${CI:+1} $(PY) -m pytest -n 2 --durations=15

## Unit tests only, without the notebooks.
test-fast: setup
	$(PY) -m pytest -n 2 -m "not slow" --ignore=tests/test_notebooks.py

## Notebook 03's widget in JupyterLab in headless Chromium (tests/browser/); installs Debian's
## chromium and Playwright first (scripts/setup_browser.sh). Screenshots in outputs/browser/.
browser-test: setup
	bash scripts/setup_browser.sh
	MCM_REQUIRE_BROWSER=1 $(PY) -m pytest tests/browser -m browser -v --durations=5

## Run a lab (a notebook over a parameter grid; docs/instructors.md): make lab LAB=labs/mask_ratio_sweep.yaml [SMOKE=1]
lab: setup
	@test -n "$(LAB)" || { echo "LAB is not set: make lab LAB=labs/mask_ratio_sweep.yaml (labs/ holds the labs)"; exit 2; }
	$(PY) -m mcm_core.workbook.labs run $(LAB) $(if $(SMOKE),--smoke)

## Student copies of the notebooks without the solution cells, in handouts/ (commit them).
handouts: setup
	$(PY) -m mcm_core.workbook.handouts build

bench: setup
	$(PY) benchmarks/bench_data.py

clean:
	rm -rf outputs build .pytest_cache
