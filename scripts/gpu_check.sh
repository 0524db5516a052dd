#!/usr/bin/env bash
# Training and serving on a GPU, measured (issues #25 and #38; docs/training-on-a-gpu.md, docs/serving.md "Serving on
# a GPU", BENCHMARKS.md "Training on a GPU" and "Serving on a GPU").
# How to prepare and run it on a lent GPU machine (no network there): scripts/gpu_check.md.
#
#   scripts/gpu_check.sh [--smoke] [--device cuda|cpu|auto] [STAGE ...]
#
# Stages (default: gru4rec full). The training ones are each a `python bench/retrain_time.py` run on Diginetica
# (SR-GNN split) that prints seconds per epoch, training events/s, the whole run's time and Recall@20 / MRR@20, and
# keeps its artifact and log under $OUT/<stage>:
#   gru4rec  GRU4Rec alone, 10 epochs (configs/gru4rec_diginetica.toml): the bar is the official GRU4Rec
#            PyTorch code on an H200, >= 26,600 training events/s at Recall@20 0.5417 / MRR@20 0.1828
#   full     the full retrain of GRU4Rec, NARM and DIEN (configs/diginetica.toml)
#   cpu      the same GRU4Rec, 1 epoch on the machine's CPU cores: the comparison on one machine
#   serving  onnxruntime-gpu: an H=100 GRU4Rec trained 1 epoch on the first 40,000 training sessions (on --device;
#            kept in .gpu_serving/ for a later call while the machine stays warm), grown to 43,097 and 1,000,000
#            items by bench/big_catalogue.py, scored exactly and through its index with
#            NEXTCLICK_INFERENCE_PROVIDER=cuda, then =cpu: clicks/s of onnxruntime and the top K alone and of one
#            worker on the embedded broker, served Recall@20; log in $OUT/serving.log
# --smoke: the CPU, the first 2,000 training and 200 test sessions, 1 epoch, no wheels installed: checks the script
# here, not speed; serving then measures the CPU provider alone, at 43,097 items, on 200 sessions and 1,000 worker
# clicks (too few to time the worker: its line says over how long it answered them).
#
# Wheels: .gpu_wheels/*.whl, and onnxruntime-gpu's wheel in parts (.gpu_ort/*.part-*, joined and checked against
# .gpu_ort/SHA256SUMS), if there, go into .gpu_site (pip --no-index --no-deps --target). Data: NEXTCLICK_DATA_DIR,
# by default .gpu_data when it exists (holding diginetica_srgnn/), else ../shared/data.
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
        gru4rec | full | cpu | serving) stages+=("$1") ;;
        *) echo "unknown argument: $1 (see the header of $0)" >&2; exit 2 ;;
    esac
    shift
done
((${#stages[@]})) || stages=(gru4rec full)

python=${PYTHON:-python3}
out=${OUT:-$repo/runs/gpu_check}
mkdir -p "$out"
wheels=()  # for the GPU machine's Python: a --smoke run here leaves them out
if ((!${#smoke[@]})) && compgen -G ".gpu_wheels/*.whl" >/dev/null; then
    wheels+=(.gpu_wheels/*.whl)
fi
if ((!${#smoke[@]})) && compgen -G ".gpu_ort/*.part-*" >/dev/null; then
    # onnxruntime-gpu's wheel is larger than one call may carry: it comes in parts over several calls
    parts=(.gpu_ort/*.part-*)
    joined=$(mktemp -d)/$(basename "${parts[0]%.part-*}")
    cat "${parts[@]}" >"$joined"
    if ! (cd "$(dirname "$joined")" && sha256sum --check --quiet "$repo/.gpu_ort/SHA256SUMS"); then
        echo "onnxruntime-gpu: the ${#parts[@]} parts here do not make the wheel: a part is missing (the machine went" \
             "back between the calls that carried them?): carry them again (scripts/gpu_check.md)" >&2
        exit 3
    fi
    wheels+=("$joined")
fi
if ((${#wheels[@]})); then
    "$python" -m pip install --quiet --no-index --no-deps --no-compile --upgrade --target .gpu_site "${wheels[@]}"
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
    "$python" -c 'import onnxruntime as o; print("onnxruntime", o.__version__, o.get_available_providers())'
} | tee "$out/machine.txt"

run() {  # stage, retrain flags...
    local stage=$1
    shift
    rm -rf "${out:?}/$stage"
    echo "== $stage: python -m training.retrain $* ${smoke[*]}"
    "$python" bench/retrain_time.py --keep "$out/$stage/artifact" -- "$@" "${smoke[@]}" 2>&1 | tee "$out/$stage.log"
}

serving() {
    local providers=(cuda cpu) sizes=(43097 1000000) sessions=500 clicks=10000 kind=gru4rec-100
    if ((${#smoke[@]})); then
        providers=(cpu) sizes=(43097) sessions=200 clicks=1000 kind=gru4rec-100-smoke
    fi
    # onnxruntime-gpu finds CUDA's and cuDNN's libraries on the loader's path; here they are torch's pip packages
    local libraries
    libraries=$("$python" -c 'import glob, os, site
print(":".join(sorted({os.path.dirname(p) for s in site.getsitepackages()
                       for p in glob.glob(os.path.join(s, "nvidia", "**", "lib*.so*"), recursive=True)})))')
    export LD_LIBRARY_PATH=$libraries${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    if [[ ${providers[0]} == cuda ]]; then  # before minutes of training: does CUDA start at all?
        "$python" - <<'EOF' 2>&1 | tee "$out/serving-cuda.log"
import tempfile
from pathlib import Path

import onnx
import onnxruntime
from onnx import TensorProto, helper

from stream_app.inference.providers import inference_session

model = helper.make_model(helper.make_graph(
    [helper.make_node("Identity", ["x"], ["y"])], "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]), opset_imports=[helper.make_opsetid("", 17)],
    ir_version=8)
with tempfile.TemporaryDirectory() as folder:
    onnx.save(model, Path(folder) / "probe.onnx")
    session = inference_session(Path(folder) / "probe.onnx", onnxruntime.SessionOptions(), "cuda")
print("onnxruntime", onnxruntime.__version__, "starts", session.get_providers())
EOF
    fi
    local artifact=$repo/.gpu_serving/$kind
    if [[ ! -f $artifact/manifest.json ]]; then
        rm -rf "$artifact.partial"
        echo "== serving: training an H=100 GRU4Rec into $artifact"
        "$python" -m training.retrain --dataset diginetica_srgnn --models gru4rec --gru4rec-layers 100 --epochs 1 \
            --max-train-sessions 40000 --max-test-sessions 2000 --no-baselines --device "$device" --no-progress \
            --out "$artifact.partial" "${smoke[@]}" 2>&1 | tee "$out/serving-training.log"
        mv "$artifact.partial" "$artifact"
    fi
    echo "== serving: bench/big_catalogue.py, providers ${providers[*]}, ${sizes[*]} items"
    "$python" bench/big_catalogue.py --artifact "$artifact" --sizes "${sizes[@]}" --providers "${providers[@]}" \
        --sessions "$sessions" --worker-clicks "$clicks" 2>&1 | tee "$out/serving.log"
}

digi=(--dataset diginetica_srgnn)
for stage in "${stages[@]}"; do
    case $stage in
        gru4rec) run gru4rec "${digi[@]}" --config configs/gru4rec_diginetica.toml --models gru4rec --device "$device" ;;
        full) run full "${digi[@]}" --config configs/diginetica.toml --device "$device" ;;
        cpu) run cpu "${digi[@]}" --config configs/gru4rec_diginetica.toml --models gru4rec --device cpu --epochs 1 ;;
        serving) serving ;;
    esac
done
