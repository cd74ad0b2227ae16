#!/usr/bin/env bash
# GPU smoke test: the CUDA paths CPU tests cannot run.
#
#   bash benchmarks/gpu_smoke.sh [WORKDIR]
#
# 1. `starft finetune` on starft-tiny:none (random init) with --device auto, cuda and cuda:0, each in
#    bf16, fp16 and fp32, for a few steps on a generated dataset;
# 2. `starft eval` and `starft classify` with --device cuda on the result;
# 3. a ViT-B-16:none bf16 throughput line (images/s, median of the logged steps after the first 5) for StarFT
#    (the default) and FLYP (--reg none), batch 64, 20 steps.
# Needs a CUDA GPU and a Python with starft's dependencies ($PYTHON, default `python`); runs this checkout's
# starft_cli (`python -m starft_cli`). Exits non-zero at the first failure; prints a summary at the end.
set -euo pipefail

PY=${PYTHON:-python}
STARFT=("$PY" -m starft_cli)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_smoke.sh: CUDA is not available here (torch.cuda.is_available() is False): run it on a GPU machine" >&2
    exit 1
fi

WORK=${1:-$(mktemp -d -t starft-gpu-smoke.XXXXXX)}
mkdir -p "$WORK/logs"
N=0
# run LOGNAME CMD...: stdout to $WORK/logs/LOGNAME.out, stderr to .err; on failure show the error and stop.
run() {
    local log="$WORK/logs/$1"
    shift
    N=$((N + 1))
    if ! "$@" >"$log.out" 2>"$log.err"; then
        echo "FAILED ($log.err): $*" >&2
        tail -n 20 "$log.err" >&2
        exit 1
    fi
}
export STARFT_HOME="$WORK/home"
DATA="$WORK/data"
SUMMARY=()

# A generated dataset: 3 classes x 16 images (one colour per class, with noise), 96x80 JPEGs.
"$PY" -c "
import sys; sys.path.insert(0, '$ROOT')
from pathlib import Path
from tests.imagegen import make_class_folders
make_class_folders(Path('$DATA'), ['cat', 'dog', 'car'], per_class=16, size=(96, 80))
"

TINY=(--backbone starft-tiny:none --data "folder:$DATA" --batch-size 8 --max-steps 4 --warmup 1 --lr 1e-4 --workers 2)
for device in auto cuda cuda:0; do
    for precision in bf16 fp16 fp32; do
        out="$WORK/runs/tiny-${device/:/}-$precision"
        SECONDS=0
        run "finetune-${device/:/}-$precision" "${STARFT[@]}" finetune "${TINY[@]}" --device "$device" \
            --precision "$precision" --out "$out"
        secs=$SECONDS
        loss=$("$PY" -c "
import json
rows = [json.loads(l) for l in open('$out/metrics.jsonl') if l.strip()]
print(f\"{[r for r in rows if 'loss' in r][-1]['loss']:.4f}\")")
        SUMMARY+=("finetune --device $device --precision $precision: ok (last loss $loss, $secs s)")
    done
done

MODEL="$WORK/runs/tiny-auto-bf16/checkpoints/last"
run eval "${STARFT[@]}" eval -m "$MODEL" --data "folder:$DATA" --device cuda --workers 2 --format csv
top1=$("$PY" -c "
import csv
row = list(csv.DictReader(open('$WORK/logs/eval.out')))[0]
print(next(v for k, v in row.items() if k.endswith(' top1')))")
SUMMARY+=("eval --device cuda: ok (top-1 $top1)")
run classify "${STARFT[@]}" classify -m "$MODEL" --labels cat,dog,car --device cuda --format csv "$DATA/cat"
SUMMARY+=("classify --device cuda: ok ($(($(wc -l <"$WORK/logs/classify.out") - 1)) csv rows for 16 images)")

# ViT-B-16 bf16 throughput, StarFT and FLYP: images/s from metrics.jsonl (median of steps 6..20).
"$PY" -c "
import sys; sys.path.insert(0, '$ROOT')
from pathlib import Path
from tests.imagegen import make_class_folders
make_class_folders(Path('$WORK/data224'), [f'c{i}' for i in range(8)], per_class=40, size=(256, 256))
"
for reg in star none; do
    out="$WORK/runs/vitb16-$reg"
    run "vitb16-$reg" "${STARFT[@]}" finetune --backbone ViT-B-16:none --data "folder:$WORK/data224" \
        --batch-size 64 --max-steps 20 --warmup 1 --precision bf16 --device auto --workers 8 --reg "$reg" \
        --checkpoint-every 0 --out "$out"
    ips=$("$PY" -c "
import json, statistics
rows = [json.loads(l) for l in open('$out/metrics.jsonl') if l.strip()]
rates = [r['images_per_s'] for r in rows if 'images_per_s' in r][5:]
print(f'{statistics.median(rates):.0f}')")
    name=$([ "$reg" = star ] && echo StarFT || echo FLYP)
    SUMMARY+=("ViT-B-16 bf16 batch 64 $name: $ips images/s")
done

echo "== gpu_smoke.sh summary ($("$PY" -c 'import torch; print(torch.cuda.get_device_name(0), "torch", torch.__version__)'))"
printf '%s\n' "${SUMMARY[@]}"
echo "$N commands ok; logs and runs in $WORK"
