#!/usr/bin/env bash
# Set up (idempotent), then open napari with the phantom CT sample, the plugin's docks and the embedded
# demo model. `--headless` writes a report and a screenshot to ./demo-output instead (no screen needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ "${1:-}" = "--headless" ]; then
  shift
  exec xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/napari-med3dvlm demo --headless --out demo-output "$@"
fi
if [ -z "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
  echo "No display found: running the headless demo instead (bash scripts/demo.sh --headless)." >&2
  exec xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/napari-med3dvlm demo --headless --out demo-output "$@"
fi
exec .venv/bin/napari-med3dvlm view "$@"
