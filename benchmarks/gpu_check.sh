#!/usr/bin/env bash
# One prepared GPU check (< 5 minutes on one H200): the OT benchmark, the step-ratio benchmark at
# the FINDINGS shape, and a 200-step bf16 training of the embedded default. Run from the repo root
# with the package installed:  bash benchmarks/gpu_check.sh [OUT_DIR]
set -euo pipefail
out=${1:-outputs/gpu_check}
mkdir -p "$out"
export HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
python benchmarks/bench_ot.py --device cuda | tee "$out/bench_ot.txt"
python benchmarks/bench_step.py --device cuda --backbone resnet50 --in_chans 3 --image_size 224 --batch 256 \
    --num_source_labels 1000 --num_target_labels 256 --bf16 --channels_last --steps 30 | tee "$out/bench_step.txt"
python recipes/train_jtln.py --mode jtln --seeds 0 --max_steps 200 --bf16 --output_dir "$out/train" \
    --disable_tqdm true | tail -n 12 | tee "$out/train.txt"
