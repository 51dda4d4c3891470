#!/usr/bin/env bash
# One prepared GPU check (< 5 minutes on one H200): the OT benchmark, the step-ratio benchmark at
# the shape of docs/design.md ("Speed"), a 200-step bf16 training of the embedded default, and the
# input path on 15 of the machine's cores (1600x1200 JPEGs decoded at the crop's scale against timm's loader).
#
#     bash benchmarks/gpu_prepare.sh        # first, on a machine with PyPI: .whl/ and .gpu_data/
#     bash benchmarks/gpu_check.sh [OUT_DIR]                         # on the GPU machine
#     GPU_CHECK_SMOKE=1 PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh /tmp/smoke   # CPU
#
# The GPU machine has no network and lacks datasets, POT and evaluate: when .whl/ exists its wheels
# are installed into /tmp/site (GPU_CHECK_SITE) and put first on PYTHONPATH, with the repo root,
# so nothing is pip-installed into the image. Fashion-MNIST is read from .gpu_data/fashion-mnist
# when that folder exists. OUT_DIR defaults to $OUT (the device machine's returned folder) if set,
# else outputs/gpu_check. Files written there (8, within what `run` brings back): gpu_check.log
# (everything), versions.txt, gpu.txt, bench_ot.txt, bench_step.txt, train.txt,
# train_results.json and bench_input.txt; the training's own folder goes to $OUT_DIR/train, or to
# /tmp/gpu_check_train when OUT_DIR is $OUT (GPU_CHECK_TRAIN_DIR overrides).
#
# GPU_CHECK_ONLY="bench_ot train" (any of bench_ot bench_step train bench_input) runs only those, for a rerun.
# GPU_CHECK_SMOKE=1 runs the same four commands on the CPU with tiny settings, to exercise this
# script's plumbing (wheels, paths, variables, output files) without a GPU. PYTHON picks the
# interpreter (default python3). A failing measurement does not stop the others; the exit code is
# the number of failed steps.
set -uo pipefail

smoke=${GPU_CHECK_SMOKE:-0}
PY=${PYTHON:-python3}
[[ $PY == */* ]] && PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")
if [[ -n ${1:-} ]]; then out=$1; elif [[ -n ${OUT:-} ]]; then out=$OUT; else out=outputs/gpu_check; fi
mkdir -p "$out" || exit 1
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.." || exit 1
root=$PWD
if [[ -n ${GPU_CHECK_TRAIN_DIR:-} ]]; then
    train_dir=$GPU_CHECK_TRAIN_DIR
elif [[ -n ${OUT:-} && $out == "$(cd "$OUT" 2>/dev/null && pwd)" ]]; then
    train_dir=/tmp/gpu_check_train   # $OUT brings back 8 files at most; the model folder alone has 9
else
    train_dir=$out/train
fi

main() {
start=$SECONDS
failed=()
step() {  # step NAME FILE CMD...: run CMD, its output to the log and to $out/FILE; go on if it fails
    local name=$1 file=$2 t0=$SECONDS rc
    shift 2
    if [[ -n ${GPU_CHECK_ONLY:-} && " $GPU_CHECK_ONLY " != *" $name "* ]]; then echo "=== $name: skipped"; return; fi
    echo "=== $name ($(date -u +%H:%M:%S), +$((SECONDS - start)) s): $*"
    "$@" 2>&1 | tee "$out/$file"
    rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc in $((SECONDS - t0)) s"
    ((rc == 0)) || failed+=("$name (exit $rc)")
}

# 1. Wheels (cp312) and environment.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1
export HF_DATASETS_DISABLE_PROGRESS_BARS=1 HF_HUB_DISABLE_PROGRESS_BARS=1   # keep the log readable
site=${GPU_CHECK_SITE:-/tmp/site}
pypath=$root
if [[ -d .whl ]] && compgen -G ".whl/*.whl" >/dev/null; then
    if [[ $smoke == 1 ]] && ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
        echo "smoke: $PY is not Python 3.12, skipping the cp312 wheels (.whl) and using its own packages"
    else
        echo "=== installing $(ls .whl/*.whl | wc -l) wheels into $site"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
            || { echo "FAILED: wheel install"; exit 100; }
        pypath=$site:$root
    fi
fi
export PYTHONPATH=$pypath${PYTHONPATH:+:$PYTHONPATH}
[[ -d .gpu_data/fashion-mnist ]] && export JTLN_FASHION_MNIST_DIR=$root/.gpu_data/fashion-mnist
echo "PYTHON=$PY PYTHONPATH=$PYTHONPATH JTLN_FASHION_MNIST_DIR=${JTLN_FASHION_MNIST_DIR:-(unset)}"
echo "out=$out train_dir=$train_dir smoke=$smoke"

"$PY" - <<'EOF' 2>&1 | tee "$out/versions.txt"
import os, sys
import torch, transformers, timm, datasets, ot, evaluate, accelerate
import huggingface_hub, numpy, pyarrow, fsspec, dill, multiprocess
print("python", sys.version.split()[0], sys.executable)
for m in (torch, transformers, timm, datasets, ot, evaluate, accelerate, huggingface_hub, numpy, pyarrow,
          fsspec, dill, multiprocess):
    print(f"{m.__name__:16} {m.__version__:14} {os.path.dirname(m.__file__)}")
import jtln_hf
print(f"{'jtln_hf':16} {'':14} {os.path.dirname(jtln_hf.__file__)}")
print("cuda available:", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
(( PIPESTATUS[0] == 0 )) || { echo "FAILED: the imports above (versions.txt)"; exit 101; }

# 2. The three measurements.
if [[ $smoke == 1 ]]; then
    echo "smoke: CPU, tiny settings; no GPU" | tee "$out/gpu.txt"
    step bench_ot bench_ot.txt "$PY" benchmarks/bench_ot.py --device cpu --shapes boeing --repeats 1 --variants ours pot-batch
    step bench_step bench_step.txt "$PY" benchmarks/bench_step.py --device cpu --steps 3 --warmup 1
    step train train.log "$PY" recipes/train_jtln.py --mode jtln --seeds 0 --max_steps 5 --max_eval_samples 200 \
        --output_dir "$train_dir" --overwrite_output_dir --disable_tqdm true
    step bench_input bench_input.txt "$PY" benchmarks/bench_input.py --workers 0 --batch 8 --images 24 --batches 2 \
        --rounds 1 --photo_size 1600x1200 --cache_dir "${TMPDIR:-/tmp}/gpu_check_photos"
else
    "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' || { echo "FAILED: torch sees no GPU"; exit 102; }
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/gpu.txt"
    step bench_ot bench_ot.txt "$PY" benchmarks/bench_ot.py --device cuda
    step bench_step bench_step.txt "$PY" benchmarks/bench_step.py --device cuda --backbone resnet50 --in_chans 3 \
        --image_size 224 --batch 256 --num_source_labels 1000 --num_target_labels 256 --bf16 --channels_last --steps 30
    step train train.log "$PY" recipes/train_jtln.py --mode jtln --seeds 0 --max_steps 200 --bf16 \
        --output_dir "$train_dir" --overwrite_output_dir --disable_tqdm true
    # the input path on the machine's cores (1 for the training process): 1600x1200 JPEGs decoded at the
    # crop's scale against timm's loader; writing the 640 photos takes about a minute on one core
    step bench_input bench_input.txt "$PY" benchmarks/bench_input.py --workers 15 --batch 64 --images 640 \
        --batches 8 --rounds 3 --photo_size 1600x1200 --cache_dir /tmp/gpu_check_photos
fi
# The training's full output is in gpu_check.log; keep its table and the results file beside it.
if [[ -f $out/train.log ]]; then tail -n 12 "$out/train.log" >"$out/train.txt"; rm -f "$out/train.log"; fi
[[ $train_dir/results.json -nt $out/versions.txt ]] && cp "$train_dir/results.json" "$out/train_results.json"

echo "=== done in $((SECONDS - start)) s; files in $out:"
ls -l "$out"
if ((${#failed[@]})); then
    echo "FAILED: ${failed[*]}"
else
    echo "gpu_check: all steps passed"
fi
return ${#failed[@]}
}

main 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
