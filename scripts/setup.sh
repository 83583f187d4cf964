#!/usr/bin/env bash
# Creates (or reuses) .venv, installs crosssim_nb with its dev extras, and fetches the offline data.
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.crosssim_nb_installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[setup] installing crosssim_nb[dev] into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  # (PYTHONWARNINGS: setuptools' build backend warns, at length, that an editable install of a flat layout puts the
  #  repository on the path; that is what we want, and errors still show)
  PYTHONWARNINGS=ignore::UserWarning .venv/bin/python -m pip install -q -e ".[dev]"
  # PyTorch (the `torch` extra: `from_torch` and the notebook that exports the ONNX test models). Pinned to the release
  # whose CPU build this machine class serves; where that fails, everything but `from_torch` still works and its tests skip.
  .venv/bin/python -m pip install -q "torch==2.13.0" "onnxscript>=0.2" 2>/dev/null \
    || echo "[setup] note: torch was not installed (AnalogNetwork.from_torch needs it: pip install -e '.[torch]')"
  touch "$stamp"
fi
# JupyterLab cleans a notebook as it saves it, as nbdev-clean does (git then sees no metadata-only changes)
mkdir -p .venv/etc/jupyter
cmp -s scripts/jupyter_server_config.py .venv/etc/jupyter/jupyter_server_config.py \
  || cp scripts/jupyter_server_config.py .venv/etc/jupyter/jupyter_server_config.py
bash scripts/get_data.sh
