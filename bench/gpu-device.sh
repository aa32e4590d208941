#!/usr/bin/env bash
# Issue 14's GPU benchmark on the project's GPU machine, in one command.
#
# That machine has no package registry and lacks xgboost, lightgbm, optuna, pydantic and a
# few more (../shared/device/README.md). Once, on the workstation, in the project's root:
#     ../shared/device/wheels.sh            # fills .whl/ (about 59 MB; .whl/ is git-ignored)
# then run, through the device tool, carrying .whl:
#     bash bench/gpu-device.sh [--quick]    # run(command=..., carry=[".whl"], timeout_s=600)
# It installs the carried wheels into /tmp/site (what ../shared/device/setup.sh does: that
# folder is not carried), runs bench/gpu.py with the arguments given, and writes under $OUT
# (./gpu-bench-out without one): gpu-bench.txt (the table), gpu-bench.err (progress and
# errors), machine.txt (date, GPU, libraries), logs/ (each layout's daemon log: its
# stderr, where OpenCL lines would show). Not yet timed there: the issue's figures (jobs of
# 98 s today, 94 s CPU only, the new default's target under 49 s) put it at 5-7 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-$PWD/gpu-bench-out}"
mkdir -p "$out"
if [ ! -f .whl/xgb.tar.xz ]; then
    echo "gpu-device.sh: no .whl/xgb.tar.xz here: run ../shared/device/wheels.sh in the project's root, then carry .whl" >&2
    exit 2
fi
set -e
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
tar xJf .whl/xgb.tar.xz -C /tmp/site
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec python3 -m sentinel_daemon.cli "$@"\n' > /tmp/bin/sentinel && chmod +x /tmp/bin/sentinel
export PYTHONPATH="/tmp/site:$PWD" PATH="/tmp/bin:$PATH"
set +e
{
    date -u +%Y-%m-%dT%H:%M:%SZ
    nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader 2>&1
    echo "nproc $(nproc)"
    python3 -c 'import sys, xgboost, lightgbm; print("python", sys.version.split()[0], "xgboost", xgboost.__version__, "cuda", xgboost.build_info().get("USE_CUDA"), "lightgbm", lightgbm.__version__)' 2>&1
} > "$out/machine.txt"
python3 bench/gpu.py --logs "$out/logs" "$@" > "$out/gpu-bench.txt" 2> "$out/gpu-bench.err"
rc=$?
cat "$out/machine.txt" "$out/gpu-bench.txt"
[ "$rc" -eq 0 ] || tail -40 "$out/gpu-bench.err"
exit "$rc"
