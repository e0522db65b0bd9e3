#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite under a virtual X server (pytest-xvfb).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup-vllm.sh  # vLLM in its own environment: the --llm vllm tests run against it
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec .venv/bin/python -m pytest -q "$@"
