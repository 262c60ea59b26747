#!/usr/bin/env bash
# One short device check (< 8 minutes): correctness of the kernels, of one HMC trajectory and
# of the halo exchange (GPU-aware MPI off and on) on the accelerator against the CPU, then
# the kernel / trajectory table. Usage, from anywhere in a checkout:
#
#     bash benchmarks/device_check.sh [cuda|xpu|auto]
#
# It uses the torch already installed on the machine (the vendor's CUDA/ROCm/XPU build);
# if there is none it installs the pinned PyPI build (TORCH_VERSION, default 2.13.0).
set -euo pipefail
cd "$(dirname "$0")/.."
DEV="${1:-auto}"
python3 -m venv --system-site-packages .venv-device
. .venv-device/bin/activate
python -c "import torch" 2>/dev/null || pip install -q "torch==${TORCH_VERSION:-2.13.0}"
pip install -q -e '.[test]'
python -c "import torch; print('# torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      'xpu', hasattr(torch, 'xpu') and torch.xpu.is_available())"
status=0
timeout 150 python benchmarks/device_check.py --part correctness --device "$DEV" || status=1
timeout 90 mpiexec -n 2 python benchmarks/device_check.py --part halo --device "$DEV" || status=1
timeout 180 python benchmarks/device_check.py --part table --device "$DEV" || status=1
echo "# device_check.sh: $([ $status = 0 ] && echo all checks passed || echo FAILURES above)"
exit $status
