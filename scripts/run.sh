#!/usr/bin/env bash
# The run command: set up, then run the main job (extra arguments go to the CLI).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2
export TF_CPP_MIN_LOG_LEVEL=3 MPLBACKEND=Agg
exec .venv/bin/crosssim-nb demo "$@"
