#!/usr/bin/env bash
# Builds the documentation site into _docs/ (offline): nbdev-docs when Quarto is installed, else nbconvert.
# Open _docs/index.html in a browser. Extra arguments go to scripts/build_docs.py (e.g. --out DIR).
# It leaves pyproject.toml untouched (setup.sh reinstalls the package when that file looks newer than its stamp).
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=3 CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES-}" MPLBACKEND=Agg
.venv/bin/python scripts/build_docs.py "$@"
