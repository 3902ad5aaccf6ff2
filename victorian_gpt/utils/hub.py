"""The Hub as every part of the project meets it: whether a name is a local path or a Hub id, what a Hub error means
(in one line), and the remote-code rule for loading a model.

Remote code. A model whose config.json has `auto_map` runs its own Python when loaded. A native model (no
`auto_map`: e.g. what `victorian-gpt convert --to transformers` writes) loads with `trust_remote_code=False`. A
remote-code local folder is trusted (its code is on your disk, as the export wrote it); a remote-code Hub repo needs
`trust_remote_code=True` (`--trust-remote-code`, `TRUST_REMOTE_CODE=1` in the Space, `trust_remote_code: true` in a
training config), best with the revision pinned to a commit hash so that the code cannot change after it was read.
Otherwise loading stops with a one-line error before anything is downloaded but config.json. Serving, training,
evaluation and conversion all apply this rule through `model_source`.

This module imports only the standard library and huggingface_hub: the Space carries a copy of this folder
(`victorian-gpt push-space`), so that it applies the same rule without the package installed.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

ADAPTER_CONFIG = "adapter_config.json"  # what a peft (LoRA) adapter folder holds instead of config.json
TRUST_HINT = "--trust-remote-code (TRUST_REMOTE_CODE=1 in the Space), with --revision"


def is_local_path(name: str) -> bool:
    """A path rather than a Hub id: it exists, or is spelt as a path (`./`, `/`, `~`, more than one `/`), or names an
    entry of a folder that exists (`data/pg19-sample` where `data/` is a local folder)."""
    path = Path(os.path.expanduser(name))
    return (path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1
            or (len(path.parts) > 1 and path.parent.is_dir()))


def is_hub_id(name: str) -> bool:
    """A Hub repo id (`name` or `owner/name`, as the Hub spells them) that is not a local path."""
    if not name or is_local_path(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@contextlib.contextmanager
def hub_errors(label: str, revision: str | None = None, missing: str = "", error: type[Exception] = ValueError):
    """Turn what huggingface_hub raises inside the block into one line naming `label` (e.g. "model 'USER/NAME'"),
    raised as `error`. `missing`: what to say when the file asked for is not in the repo."""
    at = f" at revision {revision!r}" if revision else ""
    try:
        yield
    except HFValidationError as e:
        raise error(f"{label} is neither a local folder nor a valid Hub repo id ({e})") from None
    except LocalEntryNotFoundError:
        raise error(f"{label}{at} is not in the local Hub cache and the Hub cannot be reached (offline: "
                    "HF_HUB_OFFLINE=1?); check the id and revision, or download it first") from None
    except RevisionNotFoundError:
        raise error(f"{label} has no revision {revision!r} on the Hub") from None
    except GatedRepoError:
        raise error(f"{label} is gated on the Hub: accept its terms and log in with `hf auth login`") from None
    except RepositoryNotFoundError:
        raise error(f"{label} is not a repository on the Hub (or it is private: log in with `hf auth login`)") from None
    except EntryNotFoundError as e:
        raise error(f"{label}{at} {missing or 'lacks a file: ' + first_line(e)}") from None
    except OSError as e:  # network errors surface as OSError subclasses
        raise error(f"cannot download {label}: {first_line(e)}") from None


def model_source(name: str, revision: str | None = None, trust_remote_code: bool = False, *, key: str = "",
                 trust_hint: str = TRUST_HINT) -> dict:
    """Read `name`'s config.json (a local folder, or the Hub through `hf_hub_download`, which honours HF_HUB_OFFLINE
    and the Hub cache) and apply the remote-code rule (see the module's docstring). Returns {"name", "local",
    "config", "trust_remote_code"}; raises a one-line ValueError (or FileNotFoundError) before any weights or code are
    fetched. `key` names the setting in the messages (e.g. "model_name_or_path") and `trust_hint` how to say yes
    (ending with how to pin a revision)."""
    label = f"{key} {name!r}" if key else repr(name)
    if is_local_path(name):
        folder = Path(os.path.expanduser(name))
        if not folder.is_dir():
            raise FileNotFoundError(f"{label}: no such folder (nor a Hub model id)")
        if not (folder / "config.json").is_file():
            hint = (" (it holds a LoRA adapter: start from its base model, named in adapter_config.json)"
                    if (folder / ADAPTER_CONFIG).is_file() else "")
            raise FileNotFoundError(f"{label} has no config.json: not a model folder{hint}")
        config = json.loads((folder / "config.json").read_text())
        return {"name": str(folder), "local": True, "config": config, "trust_remote_code": "auto_map" in config}
    with hub_errors(label, revision, missing="has no config.json: not a transformers model"):
        path = hf_hub_download(name, "config.json", revision=revision)
    config = json.loads(Path(path).read_text())
    remote = "auto_map" in config
    if remote and not trust_remote_code:
        raise ValueError(f"{label} runs its own code (config.json has auto_map): read it, then pass {trust_hint} "
                         "pinned to a commit hash so the code cannot change under you")
    return {"name": name, "local": False, "config": config, "trust_remote_code": remote}
