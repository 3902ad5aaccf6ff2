#!/usr/bin/env bash
# Installs what the test suite needs on a fresh machine: the package with its dev extra, the TGI client
# (text-generation pins huggingface-hub<1.0, so it goes in without its dependencies; it runs fine on hub 2.x),
# Debian's Chromium + chromedriver for the Space's browser test, and one environment per other transformers release
# the remote code is tested on (tests/transformers_releases.txt). Safe to run again: what is in place is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[dev]"
python -m pip install -q --no-deps "text-generation==0.7.0"
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi

# A stranger on another transformers release: .venvs/transformers-X.Y.Z is a plain venv (no pip of its own) whose
# site-packages hold that release and only the dependencies it needs in other versions (tokenizers, huggingface-hub);
# a .pth file then appends the site-packages of the Python running this script, so torch and everything else come
# from there. Unlike `venv --system-site-packages`, this works from inside a venv too (that option would reach the
# base interpreter, not the venv running this script). The venv's own site-packages come first on sys.path.
mkdir -p .venvs
echo "*" > .venvs/.gitignore  # (as Python 3.13's venv does: git never sees these)
OUTER_SITES=$(python -c 'import sys; print("\n".join(p for p in sys.path if p.endswith(("site-packages", "dist-packages"))))')
release_venv() {
  local release=$1 venv=.venvs/transformers-$1
  local pth
  if [ -x "$venv/bin/python" ]; then
    pth=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_outer_site_packages.pth
    if [ -f "$pth" ] && [ "$(cat "$pth")" = "$OUTER_SITES" ] && "$venv/bin/python" -c "if 1:
      from importlib.metadata import version
      from importlib.util import find_spec
      assert version('transformers') == '$release' and find_spec('torch')" 2>/dev/null; then
      return 0  # in place and right (checked without importing them: that takes seconds)
    fi
  fi
  rm -rf "$venv"
  python -m venv --without-pip "$venv"
  pth=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_outer_site_packages.pth
  echo "$OUTER_SITES" > "$pth"
  # pip (this Python's) installs into the venv and, seeing the outer packages through the .pth, adds only the
  # requirements they do not meet. It never removes outer packages ("outside environment").
  if ! python -m pip --python "$venv/bin/python" install -q "transformers==$release" >"$venv/pip.log" 2>&1; then
    cat "$venv/pip.log" >&2
    return 1
  fi
  "$venv/bin/python" -c "import torch, transformers; assert transformers.__version__ == '$release', transformers.__version__"
}
for release in $(grep -v '^#' tests/transformers_releases.txt); do
  release_venv "$release"
done
