#!/usr/bin/env bash
# The test command: set up, check notebooks and exported package agree, run notebook tests, run pytest.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m slow` for the slow tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=3 CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES-}" MPLBACKEND=Agg
echo "[test] nbdev-export, then check crosssim_nb/ matches what is committed"
.venv/bin/nbdev-export
if [ -d .git ] && ! git diff --exit-code --stat -- crosssim_nb; then
  echo "[test] FAIL: the exported package differs from the committed one: run nbdev-export and commit" >&2
  exit 1
fi
if [ -d .git ] && [ -n "$(git ls-files --others --exclude-standard crosssim_nb)" ]; then
  echo "[test] FAIL: nbdev-export created files that are not committed:" >&2
  git ls-files --others --exclude-standard crosssim_nb >&2
  exit 1
fi
echo "[test] ruff (unused imports and variables, undefined names, redefinitions)"
.venv/bin/ruff check crosssim_nb tests benchmarks scripts
echo "[test] nbdev-test (notebook test cells; 'notest' and 'slow' cells skipped)"
.venv/bin/nbdev-test --n-workers 2
echo "[test] pytest"
.venv/bin/python -m pytest -q -n 2 "$@"
