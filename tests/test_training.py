"""The training command for real, on CPU, on the tiny PG19 sample: end to end, 2-process DDP (gloo), accumulation
equivalence, interrupt-and-resume, and the up-front errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers.isolation import REPO_ROOT, run_isolated
from helpers.training import TINY_CONFIG, launch_2, metrics, run, step_losses, tiny_args
from training.train import main as train_main

# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow  # trains in a subprocess for 30 steps (~16 s)
def test_end_to_end_training_lowers_validation_loss_and_exports_a_loadable_model(tmp_path, pg19_tiny):
    out = tmp_path / "run"
    # through the `victorian-gpt train` alias; no tokenizer given, so one is trained from the source and saved
    run([sys.executable, "-m", "victorian_gpt.cli", "train",
         *tiny_args(out, pg19_tiny, "--max_steps", "30", "--eval_steps", "15", "--test_split", "test",
                   "--report_to", "tensorboard")])
    evals = [m for m in metrics(out) if "eval" in m]
    assert [m["step"] for m in evals] == [0, 15, 30]
    assert evals[-1]["eval"]["loss"] < evals[0]["eval"]["loss"] - 0.3

    model_dir = out / "model"
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    for name in ("config.json", "model.safetensors", "modeling_victorian_gpt.py", "configuration_victorian_gpt.py",
                 "tokenizer.json", "generation_config.json", "training_summary.json", "loss_curve.png"):
        assert (model_dir / name).is_file(), name
    assert (model_dir / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((model_dir / "training_summary.json").read_text())
    assert summary["steps"] == 30 and summary["tokens_seen"] == 30 * 2048 == 30 * summary["tokens_per_step"]
    assert summary["gradient_accumulation_steps"] == 2 and summary["num_processes"] == 1
    assert summary["mixed_precision"] == "no" and summary["hardware"].startswith("CPU")
    assert summary["dataset"] == str(pg19_tiny) and summary["books_seen"] >= 1
    assert summary["eval"]["validation"] == evals[-1]["eval"]
    assert set(summary["eval"]["test"]) == {"loss", "perplexity", "bits_per_byte", "word_perplexity", "tokens",
                                            "bytes", "words"}
    assert summary["training_config"]["max_steps"] == 30 and summary["loss_curve"] == "loss_curve.png"
    assert list((out / "logs").rglob("events.out.tfevents.*"))  # TensorBoard, the default tracker

    # `victorian-gpt eval` reproduces the final validation figures from the exported folder alone
    proc = run([sys.executable, "-m", "victorian_gpt.cli", "eval", str(model_dir), "--dataset", str(pg19_tiny),
                "--split", "validation"])
    figures = json.loads(proc.stdout)
    assert figures["tokens"] == summary["eval"]["validation"]["tokens"]
    assert figures["bits_per_byte"] == pytest.approx(summary["eval"]["validation"]["bits_per_byte"], rel=1e-4)
    assert figures["words"] == summary["eval"]["validation"]["words"] > 0
    assert figures["word_perplexity"] == pytest.approx(summary["eval"]["validation"]["word_perplexity"], rel=1e-3)

    # a stranger's process (victorian_gpt not importable) loads it with trust_remote_code and generates
    code = (
        "import torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"path = {str(model_dir)!r}\n"
        "tok = AutoTokenizer.from_pretrained(path)\n"
        "model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)\n"
        "assert type(model).__module__.startswith('transformers_modules'), type(model).__module__\n"
        "ids = tok('It was the best of times', return_tensors='pt')\n"
        "out = model.generate(**ids, max_new_tokens=12, do_sample=False)\n"
        "assert out.shape[1] == ids['input_ids'].shape[1] + 12, out.shape\n"
        "print('GENERATED', repr(tok.decode(out[0])))\n"
    )
    proc = run_isolated(code, cwd=tmp_path, env={"HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GENERATED" in proc.stdout


@pytest.mark.slow  # DDP: accelerate launch, 2 gloo processes
def test_two_ddp_processes_see_disjoint_blocks_and_match_one_process_with_accumulation(
    tmp_path, pg19_tiny, tiny_tokenizer_dir
):
    # same 2048 tokens per optimizer step: 2 processes x accumulation 1 versus 1 process x accumulation 2
    common = ["--tokenizer", str(tiny_tokenizer_dir), "--data_sharding", "blocks", "--max_steps", "8",
              "--eval_steps", "0", "--eval_on_start", "false", "--max_eval_samples", "16", "--log_data_fingerprints",
              "--dataloader_num_workers", "0"]
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    run([*launch_2(), "-m", "training.train", *tiny_args(ddp, pg19_tiny, *common)])
    run([sys.executable, "-m", "training.train", *tiny_args(single, pg19_tiny, *common)])

    summary = json.loads((ddp / "model" / "training_summary.json").read_text())
    assert (summary["num_processes"], summary["gradient_accumulation_steps"]) == (2, 1)
    assert json.loads((single / "model" / "training_summary.json").read_text())["gradient_accumulation_steps"] == 2

    def blocks(out, rank):
        lines = (out / f"data_fingerprints.rank{rank}.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    rank0, rank1 = blocks(ddp, 0), blocks(ddp, 1)
    assert len(rank0) == len(rank1) == 8 * 8  # 8 steps x micro-batch 8 on each rank
    assert not {b["block"] for b in rank0} & {b["block"] for b in rank1}  # no block trained twice
    # each step's global batch holds the same blocks in both layouts
    one = blocks(single, 0)
    for step in range(8):
        ddp_step = {b["block"] for b in rank0 + rank1 if b["step"] == step}
        assert ddp_step == {b["block"] for b in one if b["step"] == step}

    ddp_losses, single_losses = step_losses(ddp), step_losses(single)
    assert sorted(ddp_losses) == list(range(1, 9))
    for step, loss in single_losses.items():
        assert ddp_losses[step] == pytest.approx(loss, rel=1e-4), step
    assert single_losses[8] < single_losses[1]  # and it learns


@pytest.mark.slow  # a training subprocess (~6 s)
def test_non_finite_losses_skip_updates_then_stop_keeping_the_last_good_checkpoint(
    tmp_path, pg19_tiny, tiny_tokenizer_dir
):
    out = tmp_path / "run"
    # an absurd learning rate: step 1 is finite, its update overflows the weights, every later loss is NaN
    proc = subprocess.run(
        [sys.executable, "-m", "training.train", *tiny_args(out, pg19_tiny, "--tokenizer", str(tiny_tokenizer_dir),
         "--learning_rate", "1e30", "--warmup_steps", "0", "--max_steps", "10", "--save_steps", "1",
         "--max_nonfinite_steps", "2", "--eval_on_start", "false")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "step 2: non-finite loss nan; skipping the update" in proc.stderr
    assert "3 non-finite losses in a row at step 4" in proc.stderr
    losses = step_losses(out)
    assert losses[1] == pytest.approx(6.24, abs=0.1) and all(losses[s] != losses[s] for s in (2, 3))
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_1"]  # no save during the streak
    assert not (out / "model").exists()


@pytest.mark.slow  # two training subprocesses (~12 s)
def test_training_on_prepared_uint16_shards(tmp_path, capsys, pg19_tiny, tiny_tokenizer_dir):
    from training.prepare import main as prepare_main

    prepared = tmp_path / "prepared"
    assert prepare_main(["--dataset", str(pg19_tiny), "--tokenizer", str(tiny_tokenizer_dir),
                         "--output", str(prepared)]) == 0
    assert "needs the tokenizer it was prepared with" in _error(
        capsys, tiny_args(tmp_path / "o", pg19_tiny, "--prepared_data", str(prepared)))
    out = tmp_path / "run"
    args = tiny_args(out, pg19_tiny, "--prepared_data", str(prepared), "--tokenizer", str(tiny_tokenizer_dir),
                     "--max_steps", "6", "--eval_steps", "3", "--max_eval_samples", "16", "--save_steps", "3",
                     "--model_overrides", "{resid_pdrop: 0.1}")
    run([sys.executable, "-m", "training.train", *args])
    summary = json.loads((out / "model" / "training_summary.json").read_text())
    assert summary["dataset"] == str(prepared) and summary["steps"] == 6
    assert summary["eval"]["validation"]["tokens"] == 16 * 128
    losses = step_losses(out)
    assert len(losses) == 6 and losses[6] < losses[1]
    # resumed from the step-3 checkpoint (its data state: the blocks used), the same per-step losses, bit for bit
    (out / "model").rename(tmp_path / "first-export")
    run([sys.executable, "-m", "training.train", *args, "--resume_from_checkpoint", str(out / "checkpoints" / "step_3")])
    assert step_losses(out) == losses


# ----------------------------------------------------------------------------------------------------------------------
# clear errors before any compute


def _error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        train_main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_unknown_config_keys_are_errors(tmp_path, capsys, pg19_tiny):
    assert "unknown training config key(s) in the command line: 'learning_rte' (did you mean 'learning_rate'?)" in (
        _error(capsys, tiny_args(tmp_path / "o", pg19_tiny, "--learning_rte", "1e-3")))
    config = tmp_path / "bad.yaml"
    config.write_text("model_preset: tiny\nbatch_size: 8\n")
    assert f"unknown training config key(s) in {config}: 'batch_size'" in _error(capsys, ["--config", str(config)])
    assert "expects float" in _error(capsys, tiny_args(tmp_path / "o", pg19_tiny, "--learning_rate", "fast"))


def test_missing_dataset_and_missing_text_field_are_errors(tmp_path, capsys, pg19_tiny):
    assert "does not exist" in _error(capsys, tiny_args(tmp_path / "o", tmp_path / "no-such-folder"))
    bad = tmp_path / "bad"
    bad.mkdir()
    for split in ("train", "validation"):
        (bad / f"{split}.jsonl").write_text(json.dumps({"title": "Bleak House", "body": "..."}) + "\n")
    assert "has no 'text' field" in _error(capsys, tiny_args(tmp_path / "o", bad))
    assert "Dataset scripts are no longer supported" in _error(
        capsys, ["--config", TINY_CONFIG, "--dataset", "deepmind/pg19", "--output_dir", str(tmp_path / "o")])


def test_tokenizer_larger_than_the_model_vocabulary_is_an_error(tmp_path, capsys, pg19_tiny, tiny_tokenizer_dir):
    err = _error(capsys, tiny_args(tmp_path / "o", pg19_tiny, "--tokenizer", str(tiny_tokenizer_dir),
                                   "--model_overrides", "{vocab_size: 320}"))
    assert "tokenizer has 512 tokens but the model's vocab_size is 320" in err


def test_output_dir_of_another_run_is_refused_unless_resuming(tmp_path, capsys, pg19_tiny):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "metrics.jsonl").write_text("{}\n")
    assert "already holds another run" in _error(capsys, tiny_args(out, pg19_tiny))
    assert "holds no checkpoint" in _error(capsys, tiny_args(out, pg19_tiny, "--resume_from_checkpoint", "latest"))
    assert (out / "metrics.jsonl").read_text() == "{}\n"  # nothing lost
