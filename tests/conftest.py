"""Fixtures several test modules share, and the offline set-up: tests never touch the network (the Hub and datasets
are forced offline; the Hub tests talk to a loopback Hub on 127.0.0.1).

Two tiers. `python -m pytest -q` runs everything (the README's and CI's command); `python -m pytest -m "not slow" -q`
is the inner loop, meant to stay under 3 minutes on 2 cores. It leaves out the tests marked `slow`
(`@pytest.mark.slow`, or `pytestmark = pytest.mark.slow` for a whole module): those that launch DDP processes, drive
the browser, run another transformers release's venv, start a server process or an HTTP server, or take more than
about 5 s, setup of the fixtures they need included. Mark a new test slow when it is one of these.

Code the tests share lives in tests/helpers/ (`from helpers.training import ...`), fakes of outside services in
tests/fakes/ (`from fakes.hub import LoopbackHub`); this file holds fixtures only. No test module imports another,
and nothing imports from conftest.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402

from helpers.isolation import REPO_ROOT  # noqa: E402

# The real PG19-format sample, when this checkout has it beside it (a public clone does not): see `pg19_sample`.
PG19_SAMPLE = REPO_ROOT.parent / "shared" / "data" / "pg19-sample"
PG19_TINY = PG19_SAMPLE / "tiny"  # its 3-book cut; tests take `pg19_tiny` (generated) or `pg19_sample` instead


@pytest.fixture(scope="session")
def pg19_tiny(tmp_path_factory) -> Path:
    """A small PG19-format folder made for the tests: train.jsonl (3 books of ~100k characters), validation.jsonl
    and test.jsonl (1 book of ~30k each), generated deterministically (tests/helpers/synthetic_pg19.py). The same
    on every machine, with or without the real sample."""
    from helpers.synthetic_pg19 import write_pg19_folder

    return write_pg19_folder(tmp_path_factory.mktemp("pg19") / "tiny")


@pytest.fixture(scope="session")
def pg19_sample() -> Path:
    """The real PG19-format sample (../shared/data/pg19-sample), for tests that want real books; skips without it."""
    if not (PG19_SAMPLE / "tiny").is_dir():
        pytest.skip(f"the real PG19 sample is not beside this checkout ({PG19_SAMPLE})")
    return PG19_SAMPLE


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory, pg19_tiny) -> Path:
    """A 512-token byte-level BPE trained on `pg19_tiny`."""
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


@pytest.fixture(scope="session")
def modern_tiny_export(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """An export of the modern recipe (rotary positions, RMSNorm, SwiGLU, QK-norm, untied head, nn.Linear, no biases).
    Its head starts at zero, so it gets random values, as training would give it: constant logits test nothing."""
    import torch
    from transformers import AutoTokenizer

    from victorian_gpt import VictorianGPTConfig, VictorianGPTForCausalLM
    from victorian_gpt.export import save_model_folder

    torch.manual_seed(0)
    model = VictorianGPTForCausalLM(VictorianGPTConfig.from_preset("modern-tiny"))
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 0.05)
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    return save_model_folder(model, tokenizer, tmp_path_factory.mktemp("export") / "modern-tiny-victorian-gpt")


@pytest.fixture()
def hub_export(tmp_path, tiny_export) -> Path:
    """A copy of `tiny_export` completed as training completes it: training_summary.json + loss_curve.png."""
    import shutil

    from helpers.exports import complete_export_for_hub

    folder = tmp_path / "tiny-victorian-gpt"
    shutil.copytree(tiny_export, folder)
    return complete_export_for_hub(folder)


# ---- serving (Space, TGI-protocol server, generate CLI)


@pytest.fixture(scope="session")
def small_export(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A random 6-layer, 384-wide model with a 1,024-token context (~5 ms a token on CPU): slow enough for tests
    that stop a generation part-way, which the tiny model finishes before anyone can press Stop."""
    import torch
    from transformers import AutoTokenizer

    from victorian_gpt import VictorianGPTConfig, VictorianGPTForCausalLM
    from victorian_gpt.export import save_model_folder

    torch.manual_seed(0)
    config = VictorianGPTConfig.from_preset("small", vocab_size=512, n_positions=1024)
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tokenizer.model_max_length = config.n_positions
    model = VictorianGPTForCausalLM(config)
    return save_model_folder(model, tokenizer, tmp_path_factory.mktemp("export") / "small-victorian-gpt")
