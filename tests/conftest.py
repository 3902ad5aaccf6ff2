"""Shared fixtures. Tests never touch the network: the Hub and datasets are forced offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
PG19_SAMPLE = REPO_ROOT.parent / "shared" / "data" / "pg19-sample"
PG19_TINY = PG19_SAMPLE / "tiny"


@pytest.fixture(scope="session")
def pg19_tiny() -> Path:
    if not PG19_TINY.is_dir():
        pytest.fail(f"test data missing: {PG19_TINY} (shared/ must sit beside the repository)")
    return PG19_TINY


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory, pg19_tiny) -> Path:
    """A 512-token byte-level BPE trained on the tiny PG19 sample."""
    from victorian_gpt.tokenization import train_tokenizer_from_source

    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer_from_source(str(pg19_tiny), vocab_size=512, output_dir=str(out), model_max_length=128)
    return out


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """An exported (randomly initialised, seeded) tiny model folder: what `save_model_folder` writes."""
    import torch
    from transformers import AutoTokenizer

    from victorian_gpt import VictorianGPTConfig, VictorianGPTForCausalLM
    from victorian_gpt.export import save_model_folder

    torch.manual_seed(0)
    model = VictorianGPTForCausalLM(VictorianGPTConfig.from_preset("tiny"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    return save_model_folder(model, tokenizer, tmp_path_factory.mktemp("export") / "tiny-victorian-gpt")


def run_isolated(code: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python that cannot import `victorian_gpt` (as a stranger loading our export would).

    The repo is editable-installed, so besides a neutral cwd we hide it with a meta-path finder that refuses the
    package; the child asserts that the import really fails before doing anything else.
    """
    prelude = (
        "import sys\n"
        "class _Refuse:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('victorian_gpt', 'training', 'hub_card', 'spaces_app'):\n"
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
        [sys.executable, "-c", prelude + code], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
