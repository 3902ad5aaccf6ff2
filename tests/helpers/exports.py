"""Finishing an export folder as training finishes it, for the card and Hub tests: training_summary.json (the typed
record training writes, `victorian_gpt.summary.TrainingSummary`) and loss_curve.png."""

from __future__ import annotations

import json
from pathlib import Path

from victorian_gpt.summary import TrainingSummary

# Measured-looking figures the Hub-card tests look for verbatim in the card; not produced by a model.
HUB_EXPORT_EVAL = {
    "validation": {"loss": 5.4321, "perplexity": 228.6912, "bits_per_byte": 2.1234, "tokens": 12345, "bytes": 54321},
    "test": {"loss": 5.5012, "perplexity": 245.0317, "bits_per_byte": 2.2046, "tokens": 23456, "bytes": 98765},
}


def complete_export_for_hub(folder: Path, evaluation: dict | None = None) -> Path:
    """Finish an export folder as training does: training_summary.json and loss_curve.png. `evaluation` defaults to
    HUB_EXPORT_EVAL; pass {} for a run that measured nothing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    TrainingSummary(
        model_preset="tiny",
        model_config=json.loads((folder / "config.json").read_text()),
        training_config={"model_preset": "tiny", "block_size": 128, "learning_rate": 3e-4, "max_steps": 40},
        dataset="emozilla/pg19",
        dataset_splits={"train": "train", "validation": "validation", "test": "test"},
        books_seen=3, tokens_seen=163840, steps=40, tokens_per_step=4096,
        micro_batch_size=8, gradient_accumulation_steps=2, num_processes=2,
        learning_rate=3e-4, lr_schedule="cosine", warmup_steps=4, weight_decay=0.01, max_grad_norm=1.0,
        mixed_precision="no", hardware="CPU (2 cores)", wall_time_s=3723.4,
        eval=HUB_EXPORT_EVAL if evaluation is None else evaluation,
        loss_curve="loss_curve.png",
        transformers_version="5.23.0", torch_version="2.13.0", victorian_gpt_version="0.1.0",
    ).write(folder)
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([6.2, 5.9, 5.6, 5.4], label="train")
    fig.savefig(folder / "loss_curve.png", dpi=40)
    plt.close(fig)
    return folder
