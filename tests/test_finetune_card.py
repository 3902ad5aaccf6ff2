"""The card of a fine-tune: `base_model` / `base_model_relation` (the Hub's model tree), the fine-tuning data, and
before/after figures on its held-out books and on general text; a LoRA adapter folder gets a peft card."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard

from hub.card import check_card, main

BEFORE = {"validation": {"bits_per_byte": 1.6000}, "general": {"bits_per_byte": 1.7000}}
AFTER = {"validation": {"bits_per_byte": 1.4400}, "general": {"bits_per_byte": 1.7085}}


def _finetuning(relation: str, kind: str, base: str = "victoria/victorian-gpt") -> dict:
    return {"base_model": base, "revision": None, "finetuning_type": kind, "base_model_relation": relation,
            **({"lora": {"r": 8, "alpha": 16.0, "dropout": 0.05, "target_modules": ["c_attn", "c_fc", "c_proj"],
                         "export": "adapter" if relation == "adapter" else "merged"}} if kind == "lora" else {}),
            "trainable_parameters": 16384, "total_parameters": 157440, "dataset": "/home/me/books/dickens-txt",
            "general_dataset": "/data/pg19-sample", "general_split": "test", "before": BEFORE, "after": AFTER}


def test_a_full_fine_tune_names_its_base_and_shows_what_was_gained_and_forgotten(hub_export, capsys):
    summary = json.loads((hub_export / "training_summary.json").read_text())
    summary["finetuning"] = _finetuning("finetune", "full")
    summary["dataset"] = "/home/me/books/dickens-txt"
    (hub_export / "training_summary.json").write_text(json.dumps(summary))
    assert main([str(hub_export), "--repo-id", "me/dickens-gpt"]) == 0
    card = ModelCard.load(hub_export / "README.md")
    check_card(card)
    assert card.data.base_model == "victoria/victorian-gpt" and card.data.base_model_relation == "finetune"
    assert card.data.library_name == "transformers" and "fine-tuned" in card.data.tags
    text = card.text
    assert "a fine-tune of" in text and "`dickens-txt`" in text and "/home/me" not in text
    assert "| held-out books (validation) | 1.6000 | 1.4400 | -10.0 % |" in text
    assert "| general text: `pg19-sample` (test) | 1.7000 | 1.7085 | +0.5 % |" in text
    # a base read from a local folder: named in the text, but the model tree needs a Hub id (--base-model)
    summary["finetuning"]["base_model"] = "/home/me/runs/victorian/model"
    (hub_export / "training_summary.json").write_text(json.dumps(summary))
    assert main([str(hub_export)]) == 0
    assert ModelCard.load(hub_export / "README.md").data.base_model is None
    assert main([str(hub_export), "--base-model", "victoria/victorian-gpt-small"]) == 0
    assert ModelCard.load(hub_export / "README.md").data.base_model == "victoria/victorian-gpt-small"
    capsys.readouterr()
    assert main([str(hub_export), "--base-model", "not a repo id"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_an_adapter_folder_gets_a_peft_card(tmp_path, tiny_export):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from victorian_gpt.export import save_model_folder

    base = AutoModelForCausalLM.from_pretrained(tiny_export, trust_remote_code=True)
    model = get_peft_model(base, LoraConfig(r=8, target_modules=["c_attn", "c_fc", "c_proj"], fan_in_fan_out=True))
    summary = {"model_config": json.loads((tiny_export / "config.json").read_text()), "dataset": "me/dickens",
               "finetuning": _finetuning("adapter", "lora"), "eval": {"validation": {"bits_per_byte": 1.44}},
               "books_seen": 4, "tokens_seen": 147456, "steps": 18}
    folder = save_model_folder(model, AutoTokenizer.from_pretrained(tiny_export), tmp_path / "adapter",
                                 extra_files={"training_summary.json": json.dumps(summary).encode()})
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                        "tokenizer.json", "tokenizer_config.json",
                                                        "training_summary.json"]
    assert main([str(folder), "--repo-id", "me/dickens-lora"]) == 0
    card = ModelCard.load(folder / "README.md")
    check_card(card)
    assert (card.data.base_model, card.data.base_model_relation) == ("victoria/victorian-gpt", "adapter")
    assert card.data.library_name == "peft" and {"lora", "peft"} <= set(card.data.tags)
    assert card.data.datasets == ["me/dickens"]
    assert "PeftModel.from_pretrained(base, repo_id, revision=revision)" in card.text
    assert "141.1K parameters" in card.text  # the base's size, not the adapter's


def test_push_builds_the_card_with_a_base_model_given_on_the_command_line(hub_export, capsys):
    """`victorian-gpt push --base-model`: a fine-tune trained from a local folder names its Hub base in the card it
    uploads; a folder whose README.md exists is uploaded as it is, so the flag is refused there, in one line."""
    from hub.publish import PublishError, plan_model_upload, push_main

    summary = json.loads((hub_export / "training_summary.json").read_text())
    summary["finetuning"] = _finetuning("finetune", "full", base="/home/me/runs/victorian/model")
    (hub_export / "training_summary.json").write_text(json.dumps(summary))
    (hub_export / "README.md").unlink(missing_ok=True)
    operations = plan_model_upload(hub_export, "me/dickens-gpt", base_model="victoria/victorian-gpt-small")
    card_bytes = next(op.path_or_fileobj for op in operations if op.path_in_repo == "README.md")
    card = ModelCard(card_bytes.decode())
    assert (card.data.base_model, card.data.base_model_relation) == ("victoria/victorian-gpt-small", "finetune")
    assert plan_model_upload(hub_export, "me/dickens-gpt") and not (hub_export / "README.md").exists()

    assert main([str(hub_export)]) == 0  # a README.md of its own now
    with pytest.raises(PublishError, match="--base-model victoria/victorian-gpt-small"):
        plan_model_upload(hub_export, "me/dickens-gpt", base_model="victoria/victorian-gpt-small")
    capsys.readouterr()
    assert push_main([str(hub_export), "--repo-id", "me/dickens-gpt", "--base-model", "not a repo id",
                      "--token", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid --base-model 'not a repo id'" in err
