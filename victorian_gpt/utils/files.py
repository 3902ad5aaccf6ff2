"""Outputs that appear whole or not at all: an export, a conversion, a sample folder, a GGUF file."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def make_readable(path: Path) -> None:
    """Give `path` (and, for a folder, everything in it) the permissions a plain mkdir/open would have (0777 / 0666
    less the umask): mkdtemp and mkstemp make 0700/0600 entries, and safetensors' atomic write leaves 0600 files."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
    if path.is_dir():
        for root, folders, files in os.walk(path):
            for name in folders:
                os.chmod(os.path.join(root, name), 0o777 & ~umask)
            for name in files:
                os.chmod(os.path.join(root, name), 0o666 & ~umask)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, folder: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of `path` (a folder, or with `folder=False` a file) to write into. When the block
    ends without an error it takes `path`'s place, replacing what was there only once the new one is whole, with
    ordinary permissions (`make_readable`); on an error it is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        make_readable(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            _remove(old)
            path.rename(old)
            tmp.rename(path)
            _remove(old)
        else:
            tmp.rename(path)
    except BaseException:
        _remove(tmp)
        raise
