#!/usr/bin/env bash
# Installs CUDA 13.0's nvcc from PyPI into a local folder (no root, no GPU
# needed) and prints the NVCC path to export.
#
#   scripts/install-nvcc.sh [DIR]      # default DIR: .nvcc in the repository
#   export NVCC=$(scripts/install-nvcc.sh | tail -n 1)
#
# The pins matter: an unpinned nvidia-nvvm / nvidia-cuda-crt pulls 13.5, whose
# PTX (ISA 9.5) the 13.0 ptxas and the 13.0 driver reject. Reuses an existing
# install when its nvcc already answers.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$root/.nvcc}
nvcc="$dir/nvidia/cu13/bin/nvcc"

if [ -x "$nvcc" ] && "$nvcc" --version >/dev/null 2>&1; then
  echo "install-nvcc: reusing $nvcc" >&2
  echo "$nvcc"
  exit 0
fi

python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
  --target "$dir" --upgrade \
  "nvidia-cuda-nvcc==13.0.88" \
  "nvidia-nvvm==13.0.88" \
  "nvidia-cuda-crt==13.0.88" \
  "nvidia-cuda-runtime==13.0.96" \
  "nvidia-cuda-cccl==13.0.*" >&2

if [ ! -x "$nvcc" ]; then
  echo "install-nvcc: pip finished but $nvcc is missing" >&2
  exit 1
fi
"$nvcc" --version >&2
echo "$nvcc"
