#!/usr/bin/env bash
# One check of nmt's CUDA paths on one GPU, in at most 4 minutes:
#
#   benchmarks/gpu_check.sh DIR [MULTI30K_DIR]     (default data: ../shared/data/multi30k)
#
# writes DIR/gpu_check.md (a markdown table, also printed) and each step's log DIR/STEP.log.
# It runs from the repository with the machine's own python3 (PYTHON=... picks another) and
# installs nothing: PYTHONPATH=. python3 -m cli / -m pytest. Every step runs under `timeout`;
# the limits, in seconds, leave 12 s for killing steps that overrun (2 s each):
#
#   device 20 | nvidia-smi 5 | cuda-tests 75 | sdpa 20 | train-base 95 | report 13  = 228
#
# device:     torch, CUDA, the GPU, its peak bf16 FLOP/s; no CUDA device: exit 2 at once.
# cuda-tests: pytest -m cuda tests/test_cuda.py (bf16/fp16 steps, resume, one-rank NCCL DDP,
#             translation in fp32/bf16/fp16, CTranslate2 on CUDA if its wheel sees the GPU).
# sdpa:       which SDPA backend runs the model's masked and mask-free attention calls, and
#             their times (benchmarks/sdpa_kernels.py).
# train-base: nmt train --preset base --dtype bf16 for 300 updates on Multi30k, one
#             validation on 200 sentences at the end.
# report:     target tokens/s and model FLOPs utilisation, the dtypes train-base trained and
#             validated in and whether TF32 was on, the table (benchmarks/gpu_check.py).
#
# Exit status: 0 when every step passed, 1 when one failed or timed out (the table is still
# written), 2 without a CUDA device ("no CUDA device" said at once), 64 for a wrong command
# line.
set -u

STEPS=300          # training updates
BATCH_TOKENS=8192  # padded tokens per batch
VALID_LINES=200    # validation sentences (the first of val.de/val.en)

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: benchmarks/gpu_check.sh DIR [MULTI30K_DIR]" >&2
    exit 64
fi
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1" || exit 64
out=$(cd "$1" && pwd)
data=${2:-$root/../shared/data/multi30k}
[ -d "$data" ] && data=$(cd "$data" && pwd)
py=${PYTHON:-python3}
cd "$root" || exit 64
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" NMT_MULTI30K="$data"
: >"$out/steps.tsv"
failed=0

# run NAME LIMIT COMMAND...: COMMAND under `timeout`, shown and kept in DIR/NAME.log; its
# exit status, seconds and limit go to DIR/steps.tsv.
run() {
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    echo "== $name (at most ${limit} s)"
    timeout -k 2 "$limit" "$@" 2>&1 | tee "$out/$name.log"
    rc=${PIPESTATUS[0]}
    printf '%s\t%s\t%s\t%s\t\n' "$name" "$rc" "$((SECONDS - start))" "$limit" >>"$out/steps.tsv"
    [ "$rc" = 0 ] || failed=1
    return "$rc"
}

# not_run NAME LIMIT WHY: record a step that could not run.
not_run() {
    echo "== $1: not run: $3"
    printf '%s\t-\t0\t%s\t%s\n' "$1" "$2" "$3" >>"$out/steps.tsv"
    failed=1
}

run device 20 "$py" benchmarks/gpu_check.py device "$out"
rc=$?
if [ "$rc" = 2 ]; then
    exit 2 # the device step said why
elif [ "$rc" != 0 ]; then
    echo "gpu_check: stopped: the device step exited with status $rc" >&2
    exit 1
fi

if command -v nvidia-smi >/dev/null; then
    run nvidia-smi 5 nvidia-smi
else
    not_run nvidia-smi 5 "nvidia-smi not found"
fi

if "$py" -c "import pytest" 2>/dev/null; then
    run cuda-tests 75 "$py" -m pytest -q -m cuda -rs -p no:cacheprovider \
        -o faulthandler_timeout=60 --junitxml="$out/cuda_tests.xml" tests/test_cuda.py
else
    not_run cuda-tests 75 "pytest is not installed for $py (install it, or set PYTHON)"
fi

run sdpa 20 "$py" benchmarks/sdpa_kernels.py "$out" --batch-tokens "$BATCH_TOKENS"

rm -rf "$out/run-base" # a run folder holding resume.pt would be continued, not started afresh
if [ -f "$data/train.de.gz" ] && [ -f "$data/val.de.gz" ]; then
    for lang in de en; do
        gzip -cd "$data/val.$lang.gz" | head -n "$VALID_LINES" >"$out/valid.$lang"
    done
    run train-base 95 "$py" -m cli train --train "$data/train" --valid "$out/valid" \
        --src-lang de --tgt-lang en --output "$out/run-base" --preset base --dtype bf16 \
        --device cuda --batch-tokens "$BATCH_TOKENS" --accum 1 --lr 7e-4 --warmup-steps 100 \
        --max-steps "$STEPS" --eval-every "$STEPS" --save-every "$STEPS" --seed 1
else
    not_run train-base 95 "no Multi30k at $data (train.de.gz, val.de.gz): give its folder"
fi

run report 13 "$py" benchmarks/gpu_check.py report "$out" "$out/run-base"
echo "gpu_check: done in ${SECONDS} s; the table is in $out/gpu_check.md"
exit "$failed"
