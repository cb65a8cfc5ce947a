#!/usr/bin/env bash
# GPU check of issue #7 for a session with an H100/H200 (the device tool's machine). One call, about
# 7.5 minutes: the GPU tests, then benchmarks/bench_train.py at ViT-B/16 (batch 256, bf16; eager and
# torch.compile), issue #8's torchrun run (DDP over every GPU, NCCL), MCM's cost against the mask
# ratio, and ViT-L/16 for MAE and MiCL.
#
#   device run:  command "bash benchmarks/gpu_check.sh", carry [".whl"], timeout_s 540
#   rehearsal here first (CPU, about a minute; the GPU tests skip):  DRY_RUN=1 bash benchmarks/gpu_check.sh
#
# Output: everything on stdout (the tool keeps only its last 12,000 characters), and under $OUT:
#   gpu_check.log       the whole log
#   bench_train.jsonl   one JSON line per benchmark run (the rows for docs/benchmarks.md)
#   pytest_gpu.log      the GPU tests' output
#   ddp_metrics_first_half.json, ddp_metrics.json, ddp_history.jsonl   the torchrun run's metrics (at the
#                       stop and at the end) and loss history
#   benchmarks_gpu.md, bench_gpu.png   the rows as docs/benchmarks.md's table and plot (bench_report.py)
# Each step has a time limit and the script stops starting steps after BUDGET seconds (default 450),
# so a slow torch.compile costs only its own step. Run order = priority: tests, eager ViT-B, torchrun,
# the mask-ratio sweep, ViT-L, then the compiled runs.
#
# Packages. The machine's image (Python 3.12, torch 2.11, timm) already holds everything mcm_core
# needs at run time (torch, torchvision, timm, safetensors, numpy, scikit-learn, matplotlib,
# seaborn, tqdm, pyyaml, pillow, psutil) and pytest. Carry as wheels, here in the repo root
# (.whl/ is git-ignored; name it in carry):
#   1. timm 1.0.31 (recommended: the version constraints.txt pins and the CPU figures use; the
#      image's timm version is printed below but was not read ahead):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl timm==1.0.31
#
#   2. Only to collect the notebook, widget, lab and handout test modules, which hold no GPU tests
#      and which this script therefore --ignore's: nbformat and ipywidgets and what they need that
#      the image lacks (versions from constraints.txt; rpds-py is the one compiled wheel):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl nbformat==5.11.1 fastjsonschema==2.22.3 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 jupyter_core==5.9.1 platformdirs==4.14.7 traitlets==5.16.1 ipywidgets==8.1.9 comm==0.2.3 widgetsnbextension==4.0.16 jupyterlab_widgets==3.0.17 ipython==9.18.1 ipython_pygments_lexers==1.1.1 jedi==0.20.1 parso==0.8.7 matplotlib-inline==0.2.2 pexpect==4.9.0 ptyprocess==0.7.0 prompt_toolkit==3.0.53 wcwidth==0.9.4 stack-data==0.6.3 executing==2.3.0 asttokens==3.0.2 pure_eval==0.2.4
#
#      (then drop the --ignore options below). Not needed for anything this script measures.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "wheel install failed"; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi

{  # everything below goes to stdout and to $OUT/gpu_check.log
START=$SECONDS
BUDGET=${BUDGET:-450}
step() {  # step NAME LIMIT_S COMMAND...: run with a time limit; skip once the budget is spent
    local name=$1 limit=$2 left rc
    shift 2
    left=$((BUDGET - (SECONDS - START)))
    if ((left < 30)); then
        echo "### SKIPPED $name: ${left}s of the ${BUDGET}s budget left"
        return
    fi
    ((limit > left)) && limit=$left
    echo "### $name (limit ${limit}s, at $((SECONDS - START))s): $*"
    timeout -k 10 "$limit" "$@"
    rc=$?
    echo "### $name: exit $rc at $((SECONDS - START))s"
}

echo "### machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
"$PY" - <<'EOF'
import platform, torch, timm
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), timm {timm.__version__}, "
      f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}, {torch.get_num_threads()} CPU threads")
EOF

# 1. The GPU tests: no host synchronization in any method's step, CUDA = CPU results, data rendered on the GPU.
step "pytest -m gpu" 180 bash -c "set -o pipefail; $PY -m pytest -m gpu tests -q -rs -p no:cacheprovider \
    --ignore=tests/test_notebooks.py --ignore=tests/test_widgets.py --ignore=tests/test_labs.py \
    --ignore=tests/test_handouts.py 2>&1 | tee '$OUT/pytest_gpu.log'"

BENCH=("$PY" benchmarks/bench_train.py --device cuda --precision bf16 --out "$OUT/bench_train.jsonl")
B=256 BL=128 BASE=base LARGE=large CW=5 CS=15
NPROC=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU') DDP_DEVICE=cuda DDP_STEPS=200
if [ -n "${DRY_RUN:-}" ]; then  # rehearse every step on the CPU in a minute (tiny preset, batch 8, one step)
    BENCH=("$PY" benchmarks/bench_train.py --device cpu --steps 1 --warmup 0 --out "$OUT/bench_train.jsonl")
    B=8 BL=8 BASE=tiny LARGE=tiny CW=0 CS=1 NPROC=2 DDP_DEVICE=cpu DDP_STEPS=10
fi
# 2. ViT-B/16, batch 256, each paper's setting, eager: MAE 0.75, MCM 0.25, MiCL 9 patches per view (0.91 in
#    our rounding; the paper's 0.9), Latent MIM 0.9 (20 visible, 3-block decoder, patch gaps).
step "eager ViT-B, every method" 150 "${BENCH[@]}" --presets $BASE --batch-size $B
# 2b. Issue #8's torchrun figure: DistributedDataParallel over every GPU (NCCL), 200 steps of the
#     documented command, stopped at step 100 and resumed, as docs/reliability.md section 4 asks.
ddp_run() {
    local dir=/tmp/ddp_gpu half=$((DDP_STEPS / 2)) args
    rm -rf "$dir"
    args=(-m torch.distributed.run --standalone --nproc_per_node="$NPROC" -m mcm_core train
          --device "$DDP_DEVICE" --steps "$DDP_STEPS" --out-dir "$dir" --no-progress)
    "$PY" "${args[@]}" --until "$half" || return 1
    cp "$dir/metrics.json" "$OUT/ddp_metrics_first_half.json"
    "$PY" "${args[@]}" --resume || return 1
    cp "$dir/metrics.json" "$OUT/ddp_metrics.json"
    cp "$dir/history.jsonl" "$OUT/ddp_history.jsonl"
    "$PY" - "$OUT" "$NPROC" <<'PYEOF'
import json, sys
for name in ("ddp_metrics_first_half.json", "ddp_metrics.json"):
    m = json.load(open(f"{sys.argv[1]}/{name}"))
    print(f"ddp {name}: {sys.argv[2]} process(es), up to step {m['step']}: {m['images_seen']} images in "
          f"{m['wall_seconds']:.1f} s = {m['images_seen'] / m['wall_seconds']:.0f} images/s, loss {m['final_loss']:.4f}")
PYEOF
}
export -f ddp_run
export NPROC DDP_DEVICE DDP_STEPS OUT PY
step "torchrun DDP, $NPROC process(es) on $DDP_DEVICE, $DDP_STEPS steps with a resume" 120 bash -c ddp_run
# 3. MCM's cost against the mask ratio (one table, one process).
step "eager ViT-B, MCM mask sweep" 120 "${BENCH[@]}" --presets $BASE --batch-size $B --methods mcm \
    --mask-ratios 0 0.25 0.5 0.75 0.9
# 4. ViT-L/16: MAE at the reference's batch 128, MiCL at 256.
step "eager ViT-L, MAE" 60 "${BENCH[@]}" --presets $LARGE --batch-size $BL --methods mae
step "eager ViT-L, MiCL" 60 "${BENCH[@]}" --presets $LARGE --batch-size $B --methods micl
# 5. torch.compile, one process per method (a slow compile costs only its own step).
for method in mae micl latent_mim mcm; do
    step "compiled ViT-B, $method" 150 "${BENCH[@]}" --presets $BASE --batch-size $B --methods "$method" \
        --compile --warmup $CW --steps $CS
done

# 6. Lowest priority: evolved hierarchical masking (the EMA affinity pass + tree) on MAE and MCM, eager.
step "eager ViT-B, hierarchical masking" 90 "${BENCH[@]}" --presets $BASE --batch-size $B --methods mae mcm \
    --masking hierarchical

echo "### done at $((SECONDS - START))s; rows:"
[ -f "$OUT/bench_train.jsonl" ] && "$PY" - "$OUT/bench_train.jsonl" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"{r['method']:>10} {r['preset']:>5} mask {r['mask_ratio']:<4} B {r['batch_size']:<3} "
          f"{'compiled' if r['compile'] else 'eager':>8} {r.get('masking', 'random'):>12}: {r['images_per_s']:>9.1f} img/s {r['step_ms']:>8.2f} ms "
          f"{r['gflop_per_image']:>7.2f} GFLOP/img {r['tflops']:>6.1f} TFLOP/s {r.get('peak_mem_gib', 0):>6.2f} GiB "
          f"enc share {r['encoder_forward_share']:.3f}" + (f" {r['compile_stats']}" if r.get("compile_stats") else ""))
EOF
# The table and plot for docs/benchmarks.md (matplotlib is in the image); paste the section into the page.
[ -f "$OUT/bench_train.jsonl" ] && "$PY" benchmarks/bench_report.py "$OUT/bench_train.jsonl" --section gpu_bench \
    --page "$OUT/benchmarks_gpu.md" --plot "$OUT/bench_gpu.png" > /dev/null && echo "### wrote $OUT/benchmarks_gpu.md"
} 2>&1 | tee -a "$OUT/gpu_check.log"
