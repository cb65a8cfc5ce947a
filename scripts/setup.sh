#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: a virtual environment in .venv with the
# pinned versions of constraints.txt, the project installed in editable mode, a
# Jupyter kernel registered inside the environment (papermill and nbval need it),
# and Debian's Fashion-MNIST package where we are root and it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
STAMP="$VENV/.setup-stamp"

if [ "$(id -u)" = "0" ] && ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
    echo "[setup] installing Debian package dataset-fashion-mnist (real images for the comparisons)"
    (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
        || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) \
        || echo "[setup] warning: could not install dataset-fashion-mnist; Fashion-MNIST parts will ask for root=" >&2
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi

# Re-install only when the dependency files changed since the last set-up.
want=$(cat requirements.txt constraints.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
    echo "[setup] installing dependencies (first time: a few minutes; torch is large)"
    "$VENV/bin/python" -m pip install -q --upgrade pip wheel setuptools
    "$VENV/bin/python" -m pip install -q -c constraints.txt -r requirements.txt
    "$VENV/bin/python" -m pip install -q -c constraints.txt --no-deps -e .
    # A kernel named python3 inside the environment: the notebooks' metadata asks for it.
    "$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (mcm)" >/dev/null
    echo "$want" > "$STAMP"
fi
"$VENV/bin/python" -c "import mcm_core, torch, timm; print(f'[setup] ok: mcm_core {mcm_core.__version__}, torch {torch.__version__}, timm {timm.__version__}')"
