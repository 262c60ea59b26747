#!/usr/bin/env bash
# One short device check (< 8 minutes): correctness of the kernels, of one HMC trajectory and
# of the halo exchange (GPU-aware MPI off and on) on the accelerator against the CPU, then
# the kernel / trajectory table. Usage, from anywhere in a checkout:
#
#     bash benchmarks/device_check.sh [--dry-run] [cuda|xpu|cpu|auto]
#     bash benchmarks/device_check.sh --help
#
# It uses the torch already installed on the machine (the vendor's CUDA/ROCm/XPU build);
# if there is none it installs the pinned PyPI build (TORCH_VERSION, default 2.13.0).
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
MPIEXEC="${MPIEXEC:-mpiexec}"
STEPS=(
    "timeout 150 python benchmarks/device_check.py --part correctness --device $DEV"
    "timeout 90 $MPIEXEC -n 2 python benchmarks/device_check.py --part halo --device $DEV"
    "timeout 180 python benchmarks/device_check.py --part table --device $DEV"
)

if [ "$DRY" = 1 ]; then
    PY="${PYTHON:-python3}"
    "$PY" -m py_compile benchmarks/device_check.py
    "$PY" benchmarks/device_check.py --help > /dev/null
    echo "# device_check.sh --dry-run (device $DEV): would create .venv-device, install"
    echo "# torch==${TORCH_VERSION:-2.13.0} if torch is missing and the project ('.[test]'), then run:"
    for step in "${STEPS[@]}"; do echo "$step"; done
    exit 0
fi

python3 -m venv --system-site-packages .venv-device
. .venv-device/bin/activate
python -c "import torch" 2>/dev/null || pip install -q "torch==${TORCH_VERSION:-2.13.0}"
pip install -q -e '.[test]'
python -c "import torch; print('# torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      'xpu', hasattr(torch, 'xpu') and torch.xpu.is_available())"
status=0
for step in "${STEPS[@]}"; do
    $step || status=1
done
echo "# device_check.sh: $([ $status = 0 ] && echo all checks passed || echo FAILURES above)"
exit $status
