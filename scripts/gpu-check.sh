#!/usr/bin/env bash
# The GPU checks of issue #16 in one run of under 8 minutes (one H100/H200): the CUDA tests of the Triton fused
# norm and of deterministic = true, then benchmarks.norms, benchmarks.packing and benchmarks.deterministic on
# CUDA. It installs nothing: the machine needs torch with CUDA and triton (torch's CUDA wheels bring it); flwr
# and Ray are not needed. Figures go to stdout and to $OUT (default outputs/gpu-check), one log per step.
#
#   scripts/gpu-check.sh prepare   # here: copy pytest (pure Python) from .venv (or $PREPARE_PYTHON) into
#                                  # .gpu-check/site, to carry with the working tree
#   scripts/gpu-check.sh           # on the GPU machine, from the repository root
set -uo pipefail
cd "$(dirname "$0")/.."
SITE=.gpu-check/site

if [[ "${1:-}" == prepare ]]; then
    source_site=$(${PREPARE_PYTHON:-.venv/bin/python} -c "import pytest, os; print(os.path.dirname(os.path.dirname(pytest.__file__)))")
    mkdir -p "$SITE"
    for package in pytest _pytest pluggy iniconfig packaging py.py; do
        cp -r "$source_site/$package" "$SITE/"
    done
    echo "pytest copied to $SITE ($(du -sh "$SITE" | cut -f1)); carry .gpu-check with the working tree"
    exit 0
fi

PY=${PYTHON:-python3}
OUT=${OUT:-outputs/gpu-check}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
$PY -c "import pytest" 2>/dev/null || export PYTHONPATH=$PYTHONPATH:$PWD/$SITE
failed=()

# step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, remember failures.
step() {
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    echo "== $name: $*"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local status=${PIPESTATUS[0]}
    echo "== $name: exit $status after $((SECONDS - start)) s"
    [[ $status == 0 ]] || failed+=("$name")
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, triton; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())" || exit 1

# test_fused_triton.py runs tests/triton_cases.py on CUDA in a subprocess (its output shows on failure)
step tests 120 $PY -m pytest -q --noconftest -p no:cacheprovider tests/test_fused_triton.py tests/test_determinism.py \
    -k "not interpreter"
step norms-float32 90 $PY -m benchmarks.norms --device cuda
step norms-bfloat16 40 $PY -m benchmarks.norms --device cuda --dtype bfloat16 --quick
step packing 150 $PY -m benchmarks.packing --device cuda --scenarios b2 --clients 32 128 --examples 16 \
    --repeats 3 --norms bn hn --processes 4
step deterministic 60 $PY -m benchmarks.deterministic --device cuda --quick

echo
echo "== figures"
grep -h "^summary:" "$OUT"/norms-*.log
grep -h "time (us)" "$OUT"/norms-*.log
grep -h "^| b2 " "$OUT/packing.log" | sort -u
grep -h "samples/s\|bitwise" "$OUT/deterministic.log"
grep -h "passed\|failed" "$OUT/tests.log" | tail -1
if (( ${#failed[@]} )); then
    echo "failed steps: ${failed[*]}"
    exit 1
fi
