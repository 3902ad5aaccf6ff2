#!/usr/bin/env bash
# Installs what the test suite needs on a fresh machine: the package with its dev extra, the TGI client
# (text-generation pins huggingface-hub<1.0, so it goes in without its dependencies; it runs fine on hub 2.x),
# and Debian's Chromium + chromedriver for the Space's browser test.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[dev]"
python -m pip install -q --no-deps "text-generation==0.7.0"
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi
# A stranger on the last transformers 4.x release (many Hub users, TGI images): tests/test_transformers4.py loads
# our export with it. A venv over the system packages (torch comes from there), transformers 4.57.6 on top.
if [ ! -x .venv-transformers4/bin/python ] || ! .venv-transformers4/bin/python -c "import transformers" 2>/dev/null; then
  python -m venv --system-site-packages .venv-transformers4
fi
.venv-transformers4/bin/python -m pip install -q "transformers==4.57.6"
