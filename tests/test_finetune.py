"""Fine-tuning from an existing model (`model_name_or_path`): full and LoRA, from an export folder and from a Hub-layout
repo (a local stand-in of the Hub cache, offline), on `.txt` books and PG19-format data; the first evaluation equals
`victorian-gpt eval`; LoRA with 2 gloo processes, accumulation, bf16 and exact resume; merged and adapter exports;
every bad input a one-line error before any compute, with nothing written."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

from helpers.synthetic_pg19 import write_txt_books
from helpers.training import TINY_CONFIG, launch_2, metrics, run, step_losses
from training.blocks import split_tokens
from training.evaluate import main as eval_main
from training.train import main as train_main

COMMIT = "0123456789abcdef0123456789abcdef01234567"
FAST = ["--report_to", "none", "--max_eval_samples", "8", "--num_samples", "0", "--save_steps", "0",
        "--per_device_eval_batch_size", "8"]


@pytest.fixture(scope="module")
def txt_books(tmp_path_factory) -> Path:
    """Five generated novels as Gutenberg `.txt` files (flat folder: 3 train, 1 validation, 1 test by default)."""
    return write_txt_books(tmp_path_factory.mktemp("books") / "novels", books=5, length=20_000)


@pytest.fixture(scope="module")
def modern_export(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A tiny export in the modern layout (nn.Linear projections, SwiGLU, untied head)."""
    from transformers import AutoTokenizer

    from victorian_gpt import VictorianGPTConfig, VictorianGPTForCausalLM
    from victorian_gpt.export import save_model_folder

    torch.manual_seed(0)
    model = VictorianGPTForCausalLM(VictorianGPTConfig.from_preset("modern-tiny"))
    torch.nn.init.normal_(model.lm_head.weight, std=0.02)  # the modern head starts at zero: give it something
    return save_model_folder(model, AutoTokenizer.from_pretrained(tiny_tokenizer_dir),
                             tmp_path_factory.mktemp("export") / "modern-tiny")


def ft_args(out: Path, model: Path | str, data: Path, *extra: str) -> list[str]:
    return ["--config", TINY_CONFIG, "--model_preset", "none", "--model_name_or_path", str(model),
            "--dataset", str(data), "--output_dir", str(out), *FAST, *extra]


def hub_cache(root: Path, repo_id: str, folder: Path, commit: str = COMMIT) -> Path:
    """`folder` laid out as the Hub cache holds a downloaded repo: models--owner--name/{refs/main, snapshots/<sha>}."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return root


def load_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


# ----------------------------------------------------------------------------------------------------------------------


def test_full_finetune_of_an_export_on_txt_books_starts_where_victorian_gpt_eval_says(
        tmp_path, tiny_export, txt_books, pg19_tiny, capsys):
    out = tmp_path / "run"
    assert train_main(ft_args(out, tiny_export, txt_books, "--max_steps", "4", "--eval_steps", "2",
                              "--general_dataset", str(pg19_tiny))) == 0
    first = next(m["eval"] for m in metrics(out) if "eval" in m and m["step"] == 0)
    capsys.readouterr()
    # the starting model through the evaluation command, on the same blocks: the weights really were loaded
    assert eval_main([str(tiny_export), "--dataset", str(txt_books), "--split", "validation",
                      "--max_eval_samples", "8", "--batch_size", "8"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert cli["tokens"] == first["tokens"] and cli["bytes"] == first["bytes"] and cli["words"] == first["words"]
    assert cli["loss"] == pytest.approx(first["loss"], rel=1e-6)
    assert cli["bits_per_byte"] == pytest.approx(first["bits_per_byte"], rel=1e-6)

    model_dir = out / "model"
    summary = json.loads((model_dir / "training_summary.json").read_text())
    ft = summary["finetuning"]
    assert ft["base_model"] == str(tiny_export) and ft["base_model_relation"] == "finetune"
    assert ft["finetuning_type"] == "full" and ft["trainable_parameters"] == ft["total_parameters"] > 0
    assert ft["before"]["validation"] == first
    assert set(ft["before"]) == set(ft["after"]) == {"validation", "test", "general"}
    assert ft["after"]["validation"]["bits_per_byte"] < ft["before"]["validation"]["bits_per_byte"]
    assert ft["after"]["general"]["tokens"] == ft["before"]["general"]["tokens"] > 0
    assert summary["model_preset"] is None and summary["dataset"] == str(txt_books)
    # the same architecture and tokenizer, new weights; no tokenizer was trained
    base_config = json.loads((tiny_export / "config.json").read_text())
    new_config = json.loads((model_dir / "config.json").read_text())
    for key in ("n_layer", "n_embd", "n_head", "n_positions", "vocab_size", "auto_map", "weight_layout"):
        assert new_config[key] == base_config[key], key
    assert (model_dir / "tokenizer.json").read_text() == (tiny_export / "tokenizer.json").read_text()
    assert not (out / "tokenizer").exists()
    before, after = load_weights(tiny_export), load_weights(model_dir)
    assert before.keys() == after.keys()
    assert not torch.equal(before["transformer.h.0.attn.c_attn.weight"], after["transformer.h.0.attn.c_attn.weight"])


@pytest.mark.slow  # a training subprocess (~7 s)
def test_lora_merged_export_of_the_linear_layout_is_a_plain_export(tmp_path, modern_export, pg19_tiny):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    # bf16 autocast: its own process (accelerate's state is set once per process)
    run([sys.executable, "-m", "training.train", *ft_args(
        out, modern_export, pg19_tiny, "--finetuning_type", "lora", "--max_steps", "3", "--eval_steps", "0",
        "--lora_r", "4", "--learning_rate", "1e-2", "--mixed_precision", "bf16", "--test_split", "none")])
    model_dir = out / "model"
    assert not (model_dir / "adapter_config.json").exists()
    before, after = load_weights(modern_export), load_weights(model_dir)
    assert before.keys() == after.keys()  # no lora_A/lora_B: merged into the base weights
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # every attention and MLP projection moved, nothing else did (embeddings, norms, head are not adapted)
    assert changed == {k for k in before if k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))}
    summary = json.loads((model_dir / "training_summary.json").read_text())
    lora = summary["finetuning"]["lora"]
    assert lora["target_modules"] == ["c_attn", "c_fc", "c_proj"] and lora["r"] == 4 and lora["export"] == "merged"
    assert summary["finetuning"]["base_model_relation"] == "finetune"
    assert summary["finetuning"]["trainable_parameters"] < summary["finetuning"]["total_parameters"] / 5
    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True)
    assert type(model).__name__ == "VictorianGPTForCausalLM"


@pytest.mark.slow  # DDP: accelerate launch, 2 gloo processes
def test_lora_with_two_processes_accumulation_and_exact_resume_exports_an_adapter(
        tmp_path, tiny_export, txt_books):
    """GPT-2's Conv1D layout (peft's fan_in_fan_out), 2 gloo processes x accumulation 2, LoRA dropout on (the RNG
    states must come back too): the resumed run's losses equal the uninterrupted run's; the adapter loads with
    PeftModel.from_pretrained and with transformers' own adapter loading, alike."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    common = ft_args(tmp_path / "x", tiny_export, txt_books, "--finetuning_type", "lora", "--lora_export", "adapter",
                     "--lora_dropout", "0.1", "--learning_rate", "1e-2", "--max_steps", "4", "--eval_steps", "0",
                     "--eval_on_start", "false", "--save_steps", "2", "--tokens_per_step", "4096",
                     "--test_split", "none", "--shuffle_buffer", "8", "--data_sharding", "blocks")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run([*launch_2(), "-m", "training.train", *common, "--output_dir", str(straight)])
    reference = step_losses(straight)
    assert sorted(reference) == [1, 2, 3, 4]
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_4")
    shutil.rmtree(resumed / "model")
    run([*launch_2(), "-m", "training.train", *common, "--output_dir", str(resumed),
         "--resume_from_checkpoint", "latest"])
    assert step_losses(resumed) == reference  # bit for bit
    summary = json.loads((straight / "model" / "training_summary.json").read_text())
    assert summary["gradient_accumulation_steps"] == 2 and summary["num_processes"] == 2

    adapter = resumed / "model"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_export) and config["peft_type"] == "LORA"
    assert sorted(config["target_modules"]) == ["c_attn", "c_fc", "c_proj"] and config["fan_in_fan_out"] is True
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "model.safetensors").exists()
    assert json.loads((adapter / "training_summary.json").read_text())["finetuning"]["base_model_relation"] == "adapter"
    ids = torch.arange(40).reshape(2, 20) % 500
    base = AutoModelForCausalLM.from_pretrained(tiny_export, trust_remote_code=True)
    base_logits = base(input_ids=ids).logits
    with_peft = PeftModel.from_pretrained(base, str(adapter))(input_ids=ids).logits
    by_transformers = AutoModelForCausalLM.from_pretrained(adapter, trust_remote_code=True)(input_ids=ids).logits
    assert torch.allclose(with_peft, by_transformers, atol=1e-6)
    assert not torch.allclose(with_peft, base_logits, atol=1e-4)  # the adapter does something
    # `victorian-gpt eval` takes the adapter folder too (its base loaded as adapter_config.json names it)
    assert eval_main([str(adapter), "--dataset", str(txt_books), "--split", "validation",
                      "--max_eval_samples", "4"]) == 0


@pytest.mark.parametrize("kind", ["full", "lora-adapter"])
def test_a_hub_repo_with_remote_code_needs_trust_and_trains_from_the_hub_cache(
        kind, tmp_path, tiny_export, pg19_tiny, monkeypatch, capsys):
    from huggingface_hub import constants

    cache = hub_cache(tmp_path / "hub", "someone/tiny-victorian-gpt", tiny_export)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    out = tmp_path / "run"
    args = ft_args(out, "someone/tiny-victorian-gpt", pg19_tiny, "--max_steps", "2", "--eval_steps", "0",
                   "--test_split", "none")
    with pytest.raises(SystemExit) as exit_info:
        train_main(args)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "auto_map" in error and "trust_remote_code: true" in error and "revision" in error
    assert not out.exists()
    lora = ["--finetuning_type", "lora", "--lora_export", "adapter"] if kind == "lora-adapter" else []
    assert train_main([*args, "--trust_remote_code", "--revision", COMMIT, *lora]) == 0
    summary = json.loads((out / "model" / "training_summary.json").read_text())
    assert summary["finetuning"]["base_model"] == "someone/tiny-victorian-gpt"
    assert summary["finetuning"]["revision"] == COMMIT
    if lora:  # the adapter names its base by Hub id and revision
        adapter = json.loads((out / "model" / "adapter_config.json").read_text())
        assert (adapter["base_model_name_or_path"], adapter["revision"]) == ("someone/tiny-victorian-gpt", COMMIT)
    capsys.readouterr()
    # the evaluation command follows the same rule (for an adapter: its base's)
    model = "someone/tiny-victorian-gpt" if not lora else str(out / "model")
    with pytest.raises(SystemExit):
        eval_main([model, "--dataset", str(pg19_tiny), "--split", "validation"])
    assert "--trust-remote-code" in capsys.readouterr().err
    assert eval_main([model, "--trust-remote-code", "--revision", COMMIT, "--dataset",
                      str(pg19_tiny), "--split", "validation", "--max_eval_samples", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == 4 * 128


def _bad(tmp_path, txt_books, tiny_export, tiny_tokenizer_dir, pg19_tiny, case):
    """(argv, words the one-line error must hold) for each bad input of the issue."""
    empty_dir = tmp_path / "no-books"
    (empty_dir / "notes").mkdir(parents=True)
    (empty_dir / "notes" / "README.md").write_text("not a book")
    books = tmp_path / "books"
    if case in ("empty_file", "binary_file"):
        shutil.copytree(txt_books, books)
        if case == "empty_file":
            (books / "Empty.txt").write_text("")
        else:
            (books / "Picture.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    other_tokenizer = tmp_path / "other-tokenizer"
    if case == "tokenizer_mismatch":
        from victorian_gpt.tokenization import train_tokenizer_from_source

        train_tokenizer_from_source(str(txt_books), vocab_size=300, output_dir=str(other_tokenizer),
                                    max_books=1)
    data = {"no_txt": empty_dir, "empty_file": books, "binary_file": books,
            "epochs_of_a_stream": "emozilla/pg19"}.get(case, txt_books)
    extra = {
        "hub_id_missing": ["--model_name_or_path", "nobody/no-such-model"],
        "revision_missing": ["--model_name_or_path", "someone/tiny-victorian-gpt", "--revision", "v9.9",
                             "--trust_remote_code"],
        "tokenizer_mismatch": ["--tokenizer", str(other_tokenizer)],
        "lora_target": ["--finetuning_type", "lora", "--lora_target_modules", "c_attn,q_proj"],
        "lora_without_peft": ["--finetuning_type", "lora"],
        "preset_contradiction": ["--model_preset", "small"],
        "override_contradiction": ["--model_overrides", "{n_layer: 4, resid_pdrop: 0.1}"],
        "epochs_of_a_stream": ["--num_train_epochs", "1"],
    }.get(case, [])
    words = {"no_txt": "no .txt books found", "empty_file": "Empty.txt is empty", "binary_file": "Picture.txt is a binary",
             "hub_id_missing": "nobody/no-such-model", "revision_missing": "'v9.9'",
             "tokenizer_mismatch": "does not match", "lora_target": "['q_proj'] match no linear module",
             "lora_without_peft": "pip install", "preset_contradiction": "model_preset 'small' contradicts",
             "override_contradiction": "n_layer=4", "epochs_of_a_stream": "num_train_epochs needs the size"}[case]
    args = ft_args(tmp_path / "out", tiny_export, data, "--max_steps", "2")
    return args + extra, words


@pytest.mark.parametrize("case", ["no_txt", "empty_file", "binary_file", "hub_id_missing", "revision_missing",
                                  "tokenizer_mismatch", "lora_target", "lora_without_peft", "preset_contradiction",
                                  "override_contradiction", "epochs_of_a_stream"])
def test_bad_input_is_one_line_before_any_compute_and_nothing_is_written(
        case, tmp_path, txt_books, tiny_export, tiny_tokenizer_dir, pg19_tiny, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache(tmp_path / "hub", "someone/tiny-victorian-gpt",
                                                                 tiny_export)))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    if case == "lora_without_peft":
        monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` raises ImportError, as when not installed
    args, words = _bad(tmp_path, txt_books, tiny_export, tiny_tokenizer_dir, pg19_tiny, case)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train_main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    message = err[-1]
    assert message.startswith("victorian-gpt train: error: ") and words in message, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["lora", "full-muon"])
def test_a_native_folder_fine_tunes_and_stays_native(kind, tmp_path, tiny_tokenizer_dir, txt_books):
    """A folder of transformers' own classes (what `victorian-gpt convert --to transformers` writes; here a Qwen3
    built on the spot): no remote code to trust; LoRA's defaults find q/k/v/o and the MLP projections, Muon finds the
    layers' matrices; the export is again a plain Qwen3 folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    native = tmp_path / "qwen3"
    Qwen3ForCausalLM(Qwen3Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
                                 bos_token_id=0, eos_token_id=0, pad_token_id=1)).save_pretrained(native)
    AutoTokenizer.from_pretrained(tiny_tokenizer_dir).save_pretrained(native)
    out = tmp_path / "run"
    extra = (["--finetuning_type", "lora"] if kind == "lora" else
             ["--optimizer", "muon", "--muon_learning_rate", "0.02"])
    assert train_main(ft_args(out, native, txt_books, *extra, "--max_steps", "2", "--eval_steps", "0",
                              "--test_split", "none", "--model_overrides", "{attention_dropout: 0.0}")) == 0
    summary = json.loads((out / "model" / "training_summary.json").read_text())
    if kind == "lora":
        assert summary["finetuning"]["lora"]["target_modules"] == sorted(
            ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"] and "auto_map" not in config
    model = AutoModelForCausalLM.from_pretrained(out / "model")  # no trust_remote_code needed
    before = load_weights(native)
    after = model.state_dict()
    assert not torch.equal(before["model.layers.0.self_attn.q_proj.weight"], after["model.layers.0.self_attn.q_proj.weight"])
    embeddings_moved = not torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
    assert embeddings_moved == (kind != "lora")


def test_fine_tuning_keys_are_checked_when_the_config_is_read(tmp_path):
    from training.config import load_config

    config = tmp_path / "lora.yaml"
    config.write_text("model_name_or_path: some/model\nfinetuning_type: lora\nlora_target_modules: [c_attn, c_fc]\n")
    assert load_config(str(config)).lora_target_modules == ["c_attn", "c_fc"]
    assert load_config(str(config), {"lora_target_modules": "c_attn,c_proj"}).lora_target_modules == ["c_attn",
                                                                                                       "c_proj"]
    for overrides, words in (({"model_name_or_path": None}, "set model_name_or_path"),
                             ({"optimizer": "muon"}, "AdamW"), ({"finetuning_type": "qlora"}, "finetuning_type"),
                             ({"lora_target_modules": "[]"}, "empty"), ({"lora_r": "0"}, "lora_r >= 1"),
                             ({"finetuning_type": "full", "lora_export": "adapter"}, "lora_export applies"),
                             ({"model_name_or_path": None, "finetuning_type": "full", "revision": "v1"},
                              "model_name_or_path, which is not set"),
                             ({"validation_split_percentage": "100"}, "between 0 and 100")):
        with pytest.raises(ValueError, match=words):
            load_config(str(config), overrides)


def test_fine_tuning_has_its_own_defaults_for_the_keys_the_user_did_not_give(tmp_path):
    """With model_name_or_path set, a key neither the YAML file nor the command line gives takes fine-tuning's default
    (per finetuning_type); a given key keeps its value; training from scratch keeps the from-scratch defaults."""
    from training.config import FINETUNING_DEFAULTS, TrainingConfig, load_config

    scratch = load_config(None, {})
    assert (scratch.tokens_per_step, scratch.learning_rate) == (TrainingConfig.tokens_per_step,
                                                                TrainingConfig.learning_rate)
    for kind in ("full", "lora"):
        config = load_config(None, {"model_name_or_path": "some/model", "finetuning_type": kind})
        for key, value in {**FINETUNING_DEFAULTS["common"], **FINETUNING_DEFAULTS[kind]}.items():
            assert getattr(config, key) == value, key
    assert FINETUNING_DEFAULTS["common"]["tokens_per_step"] < TrainingConfig.tokens_per_step
    assert FINETUNING_DEFAULTS["lora"]["learning_rate"] != FINETUNING_DEFAULTS["full"]["learning_rate"]
    yaml_file = tmp_path / "ft.yaml"
    yaml_file.write_text("model_name_or_path: some/model\nfinetuning_type: lora\nlora_r: 4\n")
    config = load_config(str(yaml_file), {"learning_rate": "1e-4", "tokens_per_step": "2048"})
    assert (config.lora_r, config.learning_rate, config.tokens_per_step) == (4, 1e-4, 2048)
    assert config.lora_alpha == FINETUNING_DEFAULTS["lora"]["lora_alpha"]
    assert {"lora_r", "learning_rate", "tokens_per_step", "model_name_or_path"} <= config.given_keys
    fine_tuning = {"model_name_or_path": "some/model"}
    for overrides, words in (({**fine_tuning, "replay_dataset": "data/pg19", "replay_ratio": "0"}, "replay_dataset needs"),
                             ({"replay_ratio": "0.25"}, "replay_dataset, which is not set"),
                             ({**fine_tuning, "replay_dataset": "data/pg19", "replay_ratio": "1"}, "below 1")):
        with pytest.raises(ValueError, match=words):
            load_config(None, overrides)


def test_fine_tuning_replays_the_data_its_base_was_trained_on_where_it_can_be_read(
        tmp_path, tiny_export, pg19_tiny, txt_books, capsys):
    """The default replay_ratio rehearses the dataset the base's training_summary.json names; a base whose data is not
    here (a Hub dataset, offline) fine-tunes without replay and says so; a ratio the user gave then is an error."""
    from helpers.exports import complete_export_for_hub
    from training.checks import check_inputs
    from training.config import FINETUNING_DEFAULTS, load_config
    from victorian_gpt.summary import TrainingSummary

    ratio = FINETUNING_DEFAULTS["common"]["replay_ratio"]
    assert 0 < ratio < 1
    base = tmp_path / "base"
    shutil.copytree(tiny_export, base)
    complete_export_for_hub(base)  # trained on emozilla/pg19, which cannot be read offline
    args = {"model_name_or_path": str(base), "dataset": str(txt_books), "output_dir": str(tmp_path / "out")}
    config = load_config(None, args)
    check_inputs(config)
    assert config.replay_ratio == 0 and config.replay_dataset is None
    assert "no replay: emozilla/pg19 (train), the data" in capsys.readouterr().err
    with pytest.raises(ValueError, match="replay_ratio 0.3: emozilla/pg19 .* cannot be read here; set replay_dataset"):
        check_inputs(load_config(None, {**args, "replay_ratio": "0.3"}))

    summary = TrainingSummary.read(base)
    summary.dataset = str(pg19_tiny)
    summary.write(base)
    config = load_config(None, args)
    check_inputs(config)
    assert (config.replay_dataset, config.replay_split, config.replay_ratio) == (str(pg19_tiny), "train", ratio)
    assert f"replaying {ratio:g} of the training blocks from {pg19_tiny} (train)" in capsys.readouterr().err
    config = load_config(None, {**args, "replay_ratio": "0"})
    check_inputs(config)
    assert config.replay_dataset is None


@pytest.mark.slow  # a fine-tuning run (~12 s)
def test_a_txt_dataset_without_a_test_folder_skips_the_test_evaluation_and_says_so(
        tmp_path, tiny_export, pg19_tiny, capsys):
    """train/ and validation/ alone: the run goes on without the default test split and prints why; a test split asked
    for by name is still a one-line error before any compute. The run is a number of epochs of its training split,
    half of each step's blocks replayed from the base's kind of data."""
    books = write_txt_books(tmp_path / "author", length=12_000, layout={"train": 2, "validation": 1})
    out = tmp_path / "run"
    args = ["--model_name_or_path", str(tiny_export), "--dataset", str(books), "--output_dir", str(out),
            "--finetuning_type", "lora", "--lora_export", "adapter", "--num_train_epochs", "0.25",
            "--replay_dataset", str(pg19_tiny), "--replay_ratio", "0.5",
            "--tokens_per_step", "512", "--micro_batch_size", "4", "--block_size", "64", "--eval_steps", "0", *FAST]
    assert train_main(args) == 0
    from transformers import AutoTokenizer

    out_text, err = capsys.readouterr()
    # a quarter of one pass over train/: the split is measured in tokens, 64 + 1 of them to a packed block, and as
    # many blocks again are replayed
    tokens = split_tokens(str(books), "train", AutoTokenizer.from_pretrained(tiny_export))
    steps = math.ceil(0.25 * (tokens // 65) / 0.5 * 64 / 512)
    assert 1 < steps < 1000 and f"num_train_epochs 0.25: {steps} optimizer steps" in out_text
    assert "has no 'test' split: the test evaluation is skipped" in err
    assert "fine-tuning defaults (lora): " in err and "learning_rate" in err and "tokens_per_step" not in err
    summary = json.loads((out / "model" / "training_summary.json").read_text())
    assert summary["steps"] == steps
    assert "test" not in summary["finetuning"]["after"] and "validation" in summary["finetuning"]["after"]
    with pytest.raises(SystemExit) as exit_info:
        train_main([*args, "--output_dir", str(tmp_path / "other"), "--test_split", "test"])
    assert exit_info.value.code == 2
    assert "has no 'test' split" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "other").exists()
