"""Where the repository is, and a Python that cannot import this project (as a stranger loading our export would)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_isolated(
    code: str, cwd: Path, env: dict | None = None, timeout: int = 300, python: str = sys.executable,
    allow: tuple[Path, ...] = (),
) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python that cannot import this project's packages (as a stranger loading our export
    would), except copies of them that lie under a folder of `allow` (what a Space bundle carries).

    The repo is editable-installed, so besides a neutral cwd we hide it with a meta-path finder that refuses the
    packages (looking them up on sys.path alone, past the editable install's finder, for the allowed copies); the
    child asserts that the import of the installed package really fails before doing anything else.
    """
    prelude = (
        "import sys\n"
        "from importlib.machinery import PathFinder\n"
        f"_ALLOWED = {tuple(str(Path(a).resolve()) for a in allow)!r}\n"
        "class _Refuse:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('victorian_gpt', 'training', 'hub', 'serving', 'spaces_app'):\n"
        "            spec = PathFinder.find_spec(name, path)\n"
        "            where = [] if spec is None else [spec.origin or '', *(spec.submodule_search_locations or [])]\n"
        "            if _ALLOWED and any(w.startswith(_ALLOWED) for w in where):\n"
        "                return spec\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, _Refuse())\n"
        "try:\n"
        "    import victorian_gpt\n"
        "except ModuleNotFoundError:\n"
        "    pass\n"
        "else:\n"
        "    raise SystemExit('victorian_gpt is importable; the isolation failed')\n"
    )
    full_env = {**os.environ, **(env or {})}
    full_env.pop("PYTHONPATH", None)
    return subprocess.run(
        [python, "-c", prelude + code], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
