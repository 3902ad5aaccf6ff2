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
# The real PG19-format sample, when this checkout has it beside it (a public clone does not): see `pg19_sample`.
PG19_SAMPLE = REPO_ROOT.parent / "shared" / "data" / "pg19-sample"
PG19_TINY = PG19_SAMPLE / "tiny"  # its 3-book cut; tests take `pg19_tiny` (generated) or `pg19_sample` instead


@pytest.fixture(scope="session")
def pg19_tiny(tmp_path_factory) -> Path:
    """A small PG19-format folder made for the tests: train.jsonl (3 books of ~100k characters), validation.jsonl
    and test.jsonl (1 book of ~30k each), generated deterministically (tests/synthetic_pg19.py). The same on every
    machine, with or without the real sample."""
    from synthetic_pg19 import write_pg19_folder

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


# Measured-looking figures the Hub-card tests look for verbatim in the card; not produced by a model.
HUB_EXPORT_EVAL = {
    "validation": {"loss": 5.4321, "perplexity": 228.6912, "bits_per_byte": 2.1234, "tokens": 12345, "bytes": 54321},
    "test": {"loss": 5.5012, "perplexity": 245.0317, "bits_per_byte": 2.2046, "tokens": 23456, "bytes": 98765},
}


def complete_export_for_hub(folder: Path, evaluation: dict | None = None) -> Path:
    """Finish an export folder as training does: training_summary.json (schema of the training/Hub contract) and
    loss_curve.png. `evaluation` defaults to HUB_EXPORT_EVAL; pass {} for a run that measured nothing."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = {
        "model_preset": "tiny",
        "model_config": json.loads((folder / "config.json").read_text()),
        "training_config": {"model_preset": "tiny", "block_size": 128, "learning_rate": 3e-4, "max_steps": 40},
        "dataset": "emozilla/pg19",
        "dataset_splits": {"train": "train", "validation": "validation", "test": "test"},
        "books_seen": 3, "tokens_seen": 163840, "steps": 40, "tokens_per_step": 4096,
        "micro_batch_size": 8, "gradient_accumulation_steps": 2, "num_processes": 2,
        "learning_rate": 3e-4, "lr_schedule": "cosine", "warmup_steps": 4, "weight_decay": 0.01, "max_grad_norm": 1.0,
        "mixed_precision": "no", "hardware": "CPU (2 cores)", "wall_time_s": 3723.4,
        "eval": HUB_EXPORT_EVAL if evaluation is None else evaluation,
        "loss_curve": "loss_curve.png",
        "transformers_version": "5.23.0", "torch_version": "2.13.0", "victorian_gpt_version": "0.1.0",
    }
    (folder / "training_summary.json").write_text(json.dumps(summary, indent=2))
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([6.2, 5.9, 5.6, 5.4], label="train")
    fig.savefig(folder / "loss_curve.png", dpi=40)
    plt.close(fig)
    return folder


@pytest.fixture()
def hub_export(tmp_path, tiny_export) -> Path:
    """A copy of `tiny_export` completed as training completes it: training_summary.json + loss_curve.png."""
    import shutil

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


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, proc: subprocess.Popen | None = None, timeout: float = 120.0, log: Path | None = None):
    """Poll `url` until it answers 200; fail early (with the log) if `proc` dies, fail after `timeout` seconds."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:] if log else ''}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    pytest.fail(f"{url} did not answer within {timeout}s:\n{log.read_text()[-3000:] if log else ''}")


def stop_process(proc: subprocess.Popen) -> None:
    """Terminate a server started by a test; kill it if it does not exit within 10 seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
