"""The model card: `victorian-gpt card EXPORT_DIR` writes README.md from the export's files and training summary."""

from __future__ import annotations

import json
import re

import pytest
from huggingface_hub import ModelCard, ModelCardData

from helpers.exports import HUB_EXPORT_EVAL, complete_export_for_hub
from hub.card import build_card, check_card, main


def _front_matter(text: str) -> str:
    return re.match(r"---\n(.*?)\n---\n", text, re.S).group(1)


def test_card_command_writes_a_valid_card_with_the_measured_figures(hub_export, capsys):
    assert main([str(hub_export), "--repo-id", "victoria/tiny-victorian-gpt"]) == 0
    assert "README.md" in capsys.readouterr().out
    text = (hub_export / "README.md").read_text()

    # Metadata round-trips through ModelCardData (what the Hub parses) and carries the required keys.
    card = ModelCard.load(hub_export / "README.md")
    check_card(card)
    data = card.data
    assert (data.language, data.license, data.library_name, data.pipeline_tag) == (
        "en", "apache-2.0", "transformers", "text-generation"
    )
    assert "custom_code" in data.tags and data.datasets == ["emozilla/pg19"]
    assert ModelCardData(**card.data.to_dict()).to_dict() == card.data.to_dict()

    # model-index: exactly the measured perplexity and bits per byte, per split, on the dataset trained on.
    results = {(r.dataset_split, r.metric_type): r.metric_value for r in data.eval_results}
    assert results == {
        (split, metric): HUB_EXPORT_EVAL[split][metric]
        for split in ("validation", "test")
        for metric in ("perplexity", "bits_per_byte")
    }
    assert {r.dataset_type for r in data.eval_results} == {"emozilla/pg19"}
    assert {r.task_type for r in data.eval_results} == {"text-generation"}
    assert "| validation | 5.4321 | 228.69 | 2.1234 | — | 12,345 | 54,321 | — |" in text  # no word count measured
    assert "| test | 5.5012 | 245.03 | 2.2046 | — | 23,456 | 98,765 | — |" in text

    # Training facts come from training_summary.json.
    summary = json.loads((hub_export / "training_summary.json").read_text())
    assert f"consumed {summary['tokens_seen']:,} tokens" in text and f"read {summary['books_seen']} books" in text
    for row in ("| Tokens per optimizer step | 4,096 |", "| `gradient_accumulation_steps` | 2 |",
                "| `mixed_precision` | `no` |", "| Hardware | CPU (2 cores) |", "| Wall time | 1 h 02 min |",
                "| Learning rate | 0.0003 |", "| Optimizer steps | 40 |"):
        assert row in text, row
    # Sections a Hub user expects, the loss curve, the usage snippets and the PG19 citation.
    for heading in ("## Intended use and limitations", "## Training data", "## Training procedure", "## Evaluation",
                    "## How to use", "## Generation defaults", "## Citation"):
        assert heading in text, heading
    assert "![Training and validation loss](loss_curve.png)" in text
    assert 'repo_id = "victoria/tiny-victorian-gpt"' in text
    assert "trust_remote_code=True, revision=revision" in text and "TextIteratorStreamer" in text
    assert "arxiv.org/abs/1911.05507" in text and "Compressive Transformers" in text


def test_card_reads_architecture_and_generation_defaults_from_the_export(hub_export, tiny_export):
    import torch  # noqa: F401  (loaded already by the tiny_export fixture)
    from transformers import AutoModelForCausalLM

    generation = json.loads((hub_export / "generation_config.json").read_text())
    generation.update(temperature=0.85, top_k=17, max_new_tokens=77)
    (hub_export / "generation_config.json").write_text(json.dumps(generation))
    text = str(build_card(hub_export))

    for row in ("| `temperature` | 0.85 |", "| `top_k` | 17 |", "| `max_new_tokens` | 77 |",
                f"| `top_p` | {generation['top_p']} |", f"| `repetition_penalty` | {generation['repetition_penalty']} |",
                "| `do_sample` | True |"):
        assert row in text, row
    config = json.loads((hub_export / "config.json").read_text())
    assert (f"{config['n_layer']} layers, {config['n_embd']} channels, {config['n_head']} attention" in text)
    model = AutoModelForCausalLM.from_pretrained(tiny_export)
    n = sum(p.numel() for p in model.parameters())  # tied embedding counted once, as in the safetensors file
    assert f"with {n / 1e3:.1f}K parameters" in text
    # No --repo-id: the snippet names a placeholder repo built from the folder name, revision "main".
    assert 'repo_id = "your-username/tiny-victorian-gpt"' in text and 'revision = "main"' in text


def test_word_level_perplexity_best_step_and_early_stopping_reach_the_card(hub_export):
    evaluation = {split: dict(figures, word_perplexity=figures["perplexity"] * 3.5, words=figures["bytes"] // 5)
                  for split, figures in HUB_EXPORT_EVAL.items()}
    complete_export_for_hub(hub_export, evaluation=evaluation)
    summary = json.loads((hub_export / "training_summary.json").read_text())
    summary.update(optimizer="muon", muon_learning_rate=0.02, lr_schedule="warmup_stable_decay", max_train_minutes=25,
                   exported_step=30,
                   best_model={"metric": "bits_per_byte", "value": 2.1234, "step": 30, "load_best_model_at_end": True},
                   early_stopping={"patience": 2, "threshold": 0.01, "stopped_early": True, "stopped_at_step": 40})
    (hub_export / "training_summary.json").write_text(json.dumps(summary))
    card = build_card(hub_export, repo_id="victoria/tiny")
    check_card(card)
    results = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert results[("test", "word_perplexity")] == pytest.approx(245.0317 * 3.5)
    assert {r.metric_name for r in card.data.eval_results if r.metric_type == "word_perplexity"} == {
        "Word-level perplexity"}
    assert f"| test | 5.5012 | 245.03 | 2.2046 | {245.0317 * 3.5:.2f} | 23,456 | 98,765 | 19,753 |" in card.text
    assert "a word is a\nwhitespace-separated run of characters" in card.text
    assert ("| Weights published | step 30 (the best validation `bits_per_byte` (2.1234), `load_best_model_at_end`) |"
            in card.text)
    assert ("| Early stopping | stopped at step 40: no improvement of `bits_per_byte` by more than 0.01 in 2 "
            "evaluations |" in card.text)
    assert "| Optimizer | Muon (hidden matrices, lr 0.02) + AdamW (embeddings, head, norms, biases) |" in card.text
    assert "| Schedule | warmup_stable_decay, 4 warm-up steps, 25-minute training-time budget |" in card.text


def test_a_run_without_evaluation_gets_no_results(hub_export):
    complete_export_for_hub(hub_export, evaluation={})
    card = build_card(hub_export, repo_id="victoria/unevaluated")
    check_card(card)
    assert "model-index" not in _front_matter(str(card)) and card.data.eval_results is None
    assert "This model has not been evaluated: no figures are reported." in card.text
    assert "| validation |" not in card.text


def test_a_local_dataset_is_described_without_claiming_a_hub_id(hub_export, pg19_tiny):
    summary = json.loads((hub_export / "training_summary.json").read_text())
    summary.update(dataset=str(pg19_tiny), books_seen=None)
    (hub_export / "training_summary.json").write_text(json.dumps(summary))
    (hub_export / "loss_curve.png").unlink()
    card = build_card(hub_export, revision="0123456789abcdef0123456789abcdef01234567")
    check_card(card)
    assert card.data.datasets is None
    assert f"A local collection of books in PG19's format (`{pg19_tiny.name}`)" in card.text
    assert str(pg19_tiny.parent) not in card.text
    assert {r.dataset_name for r in card.data.eval_results} == {f"PG19 (local copy: {pg19_tiny.name})"}
    assert "loss_curve.png" not in card.text, "no broken image when the plot was not exported"
    assert 'revision = "0123456789abcdef0123456789abcdef01234567"' in card.text
    assert "replace `\"main\"`" not in card.text


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("summary", "training_summary.json not found"),
        ("weights", "missing model.safetensors"),
        ("bad_json", "training_summary.json is not valid JSON"),
    ],
)
def test_card_refuses_an_incomplete_export_and_writes_nothing(hub_export, breakage, message, capsys):
    if breakage == "summary":
        (hub_export / "training_summary.json").unlink()
    elif breakage == "weights":
        (hub_export / "model.safetensors").unlink()
    else:
        (hub_export / "training_summary.json").write_text("{not json")
    assert main([str(hub_export)]) == 2
    assert message in capsys.readouterr().err
    assert not (hub_export / "README.md").exists()


def test_card_rejects_an_invalid_repo_id(hub_export, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(hub_export), "--repo-id", "victoria/no spaces allowed"])
    assert exit_info.value.code == 2
    assert "invalid --repo-id" in capsys.readouterr().err
    assert not (hub_export / "README.md").exists()
