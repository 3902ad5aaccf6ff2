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

# A stranger on another transformers release: .venvs/transformers-X.Y.Z is a plain venv (no pip of its own) that
# sees nothing of the Python running this script but torch: .venvs/torch-only/ holds links to torch's own packages
# (torch, functorch, torchgen and its dist-info), a .pth file in the venv names that folder, and pip installs the
# release with everything else it and torch need into the venv itself. So a newer package in the main environment
# (transformers 5.25 pulls in `kernels`, which 5.0 cannot import) never reaches an older release. Unlike
# `venv --system-site-packages`, this works from inside a venv too (that option would reach the base interpreter).
mkdir -p .venvs
echo "*" > .venvs/.gitignore  # (as Python 3.13's venv does: git never sees these)
TORCH_ONLY=$(python - <<'PY'
import importlib.metadata, os
from pathlib import Path
dist = importlib.metadata.distribution("torch")
site = Path(dist.locate_file(""))
folder = Path(".venvs/torch-only").resolve()
folder.mkdir(parents=True, exist_ok=True)
names = {str(f).split("/")[0] for f in dist.files if not str(f).startswith("..")}
for old in folder.iterdir():
    if old.name not in names:
        old.unlink()
for name in sorted(names):
    link = folder / name
    if not (link.is_symlink() and os.readlink(link) == str(site / name)):
        link.unlink(missing_ok=True)
        link.symlink_to(site / name)
print(folder)
PY
)
# torch's own requirements (without its extras), which the release venv must then hold itself
TORCH_REQUIRES=$(python -c 'import importlib.metadata as m; print("\n".join(r for r in m.requires("torch") if "extra ==" not in r))')
release_venv() {
  local release=$1 venv=.venvs/transformers-$1
  local pth
  if [ -x "$venv/bin/python" ]; then
    pth=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_torch_only.pth
    if [ -f "$pth" ] && [ "$(cat "$pth")" = "$TORCH_ONLY" ] && "$venv/bin/python" -c "if 1:
      from importlib.metadata import version
      from importlib.util import find_spec
      assert version('transformers') == '$release' and find_spec('torch')" 2>/dev/null; then
      return 0  # in place and right (checked without importing them: that takes seconds)
    fi
  fi
  rm -rf "$venv"
  python -m venv --without-pip "$venv"
  pth=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_torch_only.pth
  echo "$TORCH_ONLY" > "$pth"
  # pip (this Python's) installs into the venv; through the .pth it sees torch, and nothing else, as installed
  local requirements=()
  mapfile -t requirements <<< "$TORCH_REQUIRES"
  if ! python -m pip --python "$venv/bin/python" install -q "transformers==$release" "${requirements[@]}" \
      >"$venv/pip.log" 2>&1; then
    cat "$venv/pip.log" >&2
    return 1
  fi
  "$venv/bin/python" -c "import torch, transformers; assert transformers.__version__ == '$release', transformers.__version__"
}
for release in $(grep -v '^#' tests/transformers_releases.txt); do
  release_venv "$release"
done
