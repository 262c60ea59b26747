#!/usr/bin/env bash
# One short device check (< 8 minutes): correctness of the kernels, one HMC trajectory, the
# stout trivialized and Schwinger pseudofermion forces and the halo exchange (GPU-aware MPI off
# and on) on the accelerator against the CPU, then the kernel / trajectory table. Usage:
#
#     bash benchmarks/device_check.sh [--dry-run] [cuda|xpu|cpu|auto]
#     bash benchmarks/device_check.sh --help
#
# Where torch, numpy and mpi4py (with an MPI library) already import, it installs nothing and
# runs trivhmc from this checkout (PYTHONPATH): the case of an offline GPU node or a prepared
# environment. Else it makes .venv-device on the installed torch (the vendor's CUDA/ROCm/XPU
# build; the pinned PyPI build TORCH_VERSION, default 2.13.0, if there is none) and installs
# the project. mpiexec: $MPIEXEC, else the one on PATH, else the one beside python.
# --dry-run: install nothing and run nothing; check that the check scripts parse and print
# the steps that would run (used by tests/test_device_check.py on machines without a device).
set -euo pipefail

usage() {
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
}

DRY=0
DEV=auto
for arg in "$@"; do
    case "$arg" in
        -h | --help) usage; exit 0 ;;
        -n | --dry-run) DRY=1 ;;
        cuda | xpu | cpu | auto) DEV="$arg" ;;
        *) echo "device_check.sh: unknown argument '$arg' (expected cuda, xpu, cpu, auto," \
                "--dry-run or --help)" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
MPIEXEC="${MPIEXEC:-mpiexec}"
# the time limits add up to 8 minutes; a GPU-unaware MPI may crash on device buffers, so
# GPU-aware off and on run as separate processes
steps() {
    local run="timeout" py="$1" mpi="$2" check="benchmarks/device_check.py"
    echo "$run 120 $py $check --part correctness --device $DEV"
    echo "$run 45 $mpi -n 2 $py $check --part halo --aware off --device $DEV"
    echo "$run 45 $mpi -n 2 $py $check --part halo --aware on --device $DEV"
    echo "$run 150 $py $check --part table --device $DEV"
    echo "$run 120 $py $check --part compiled --device $DEV"
}

if [ "$DRY" = 1 ]; then
    "$PY" -m py_compile benchmarks/device_check.py
    "$PY" benchmarks/device_check.py --help > /dev/null
    echo "# device_check.sh --dry-run (device $DEV): would use the installed packages if torch,"
    echo "# numpy and mpi4py import, else create .venv-device, install"
    echo "# torch==${TORCH_VERSION:-2.13.0} if torch is missing and the project ('.[test]'), then run:"
    steps python "$MPIEXEC"
    exit 0
fi

if "$PY" -c "import numpy, torch; from mpi4py import MPI" 2>/dev/null; then
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    echo "# using the installed torch, numpy, mpi4py ($PY); trivhmc from this checkout"
else
    "$PY" -m venv --system-site-packages .venv-device
    . .venv-device/bin/activate
    PY=python
    python -c "import torch" 2>/dev/null || pip install -q "torch==${TORCH_VERSION:-2.13.0}"
    pip install -q -e '.[test]'
fi
if ! command -v "$MPIEXEC" > /dev/null; then
    beside="$("$PY" -c 'import os, sys; print(os.path.join(sys.prefix, "bin", "mpiexec"))')"
    [ -x "$beside" ] && MPIEXEC="$beside"
fi
"$PY" -c "import torch; print('# torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      'xpu', hasattr(torch, 'xpu') and torch.xpu.is_available())"
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total \
    --format=csv,noheader || true
status=0
while read -r step; do
    if [[ "$step" == *" -n 2 "* ]] && ! command -v "${MPIEXEC}" > /dev/null; then
        echo "FAIL  no mpiexec found (set MPIEXEC): $step"
        status=1
        continue
    fi
    echo "## $step"
    $step < /dev/null || { echo "## exit status $? from: $step"; status=1; }
done < <(steps "$PY" "$MPIEXEC")
echo "# device_check.sh: $([ $status = 0 ] && echo all checks passed || echo FAILURES above)"
exit $status
