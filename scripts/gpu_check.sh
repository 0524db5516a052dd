#!/usr/bin/env bash
# Training on a GPU, measured (issue #25; docs/training-on-a-gpu.md, BENCHMARKS.md "Training on a GPU").
# How to prepare and run it on a lent GPU machine (no network there): scripts/gpu_check.md.
#
#   scripts/gpu_check.sh [--smoke] [--device cuda|cpu|auto] [STAGE ...]
#
# Stages (default: gru4rec full), each a `python bench/retrain_time.py` run on Diginetica (SR-GNN split) that
# prints seconds per epoch, training events/s, the whole run's time and Recall@20 / MRR@20, and keeps its
# artifact and log under $OUT/<stage>:
#   gru4rec  GRU4Rec alone, 10 epochs (configs/gru4rec_diginetica.toml): the bar is the official GRU4Rec
#            PyTorch code on an H200, >= 26,600 training events/s at Recall@20 0.5417 / MRR@20 0.1828
#   full     the full retrain of GRU4Rec, NARM and DIEN (configs/diginetica.toml)
#   cpu      the same GRU4Rec, 1 epoch on the machine's CPU cores: the comparison on one machine
# --smoke: the CPU, the first 2,000 training and 200 test sessions, 1 epoch: checks the script, not speed.
#
# Wheels: .gpu_wheels/*.whl, if there, go into .gpu_site (pip --no-index --no-deps --target). Data:
# NEXTCLICK_DATA_DIR, by default .gpu_data when it exists (holding diginetica_srgnn/), else ../shared/data.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

device=cuda
smoke=()
stages=()
while (($#)); do
    case $1 in
        --smoke) smoke=(--max-train-sessions 2000 --max-test-sessions 200 --epochs 1); device=cpu ;;
        --device) device=$2; shift ;;
        gru4rec | full | cpu) stages+=("$1") ;;
        *) echo "unknown argument: $1 (see the header of $0)" >&2; exit 2 ;;
    esac
    shift
done
((${#stages[@]})) || stages=(gru4rec full)

python=${PYTHON:-python3}
out=${OUT:-$repo/runs/gpu_check}
mkdir -p "$out"
if compgen -G ".gpu_wheels/*.whl" >/dev/null; then
    "$python" -m pip install --quiet --no-index --no-deps --target .gpu_site .gpu_wheels/*.whl
    export PYTHONPATH=$repo/.gpu_site
fi
export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH}
if [[ -z ${NEXTCLICK_DATA_DIR:-} && -d .gpu_data ]]; then
    export NEXTCLICK_DATA_DIR=$repo/.gpu_data
fi

{
    date -u +"%Y-%m-%d %H:%M UTC"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    "$python" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda,
                  "GPU:", torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
                  "bf16:", torch.cuda.is_available() and torch.cuda.is_bf16_supported(), "cores:", torch.get_num_threads())'
} | tee "$out/machine.txt"

run() {  # stage, retrain flags...
    local stage=$1
    shift
    rm -rf "${out:?}/$stage"
    echo "== $stage: python -m training.retrain $* ${smoke[*]}"
    "$python" bench/retrain_time.py --keep "$out/$stage/artifact" -- "$@" "${smoke[@]}" 2>&1 | tee "$out/$stage.log"
}

digi=(--dataset diginetica_srgnn)
for stage in "${stages[@]}"; do
    case $stage in
        gru4rec) run gru4rec "${digi[@]}" --config configs/gru4rec_diginetica.toml --models gru4rec --device "$device" ;;
        full) run full "${digi[@]}" --config configs/diginetica.toml --device "$device" ;;
        cpu) run cpu "${digi[@]}" --config configs/gru4rec_diginetica.toml --models gru4rec --device cpu --epochs 1 ;;
    esac
done
