"""Checkpoints and interruption: where a run is saved, how it is found again, and how a signal becomes a save.

    output_dir/checkpoints/step_K/   accelerator.save_state (model, optimizer, grad scaler, every rank's RNG)
                                     + trainer_state.json (step, tokens, clocks, best model so far, ...)
                                     + data_state_rank{r}.npz (each rank's position in its data stream)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

from .blocks import save_data_state

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.json"


def step_of(path: Path) -> int:
    return int(path.name.split("_")[1])


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints (a save that crashed half-way left only a `.tmp-step_K` folder), oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    found = [p for p in root.glob("step_*") if (p / TRAINER_STATE).is_file()] if root.is_dir() else []
    return sorted(found, key=step_of)


def find_checkpoint(output_dir: Path, which: str) -> Path:
    if which != "latest":
        path = Path(which)
        if not (path / TRAINER_STATE).is_file():
            raise FileNotFoundError(f"resume_from_checkpoint={which!r} is not a checkpoint folder (no {TRAINER_STATE})")
        return path
    steps = list_checkpoints(output_dir)
    if not steps:
        raise FileNotFoundError(f"resume_from_checkpoint='latest' but {Path(output_dir) / CHECKPOINTS} holds no checkpoint")
    return steps[-1]


def save_checkpoint(accelerator, output_dir: Path, state: dict, keep: int, data_state: dict | None = None,
                    protect_step: int | None = None) -> Path:
    """`accelerator.save_state` plus this rank's data stream state into a temporary folder renamed into place: a crash
    mid-save leaves the previous checkpoint whole. Then drop all but the last `keep`, never `protect_step`'s (the
    best model's)."""
    root = Path(output_dir) / CHECKPOINTS
    final = root / f"step_{state['step']}"
    tmp = root / f".tmp-step_{state['step']}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # model, optimizer, grad scaler, every rank's RNG states
    if data_state is not None:
        save_data_state(tmp, accelerator.process_index, data_state)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=2))
        if final.exists():  # reached again after resuming from an earlier checkpoint
            shutil.rmtree(final)
        os.replace(tmp, final)
        old = list_checkpoints(output_dir)[:-keep or None]
        for path in old:
            if step_of(path) != protect_step:
                shutil.rmtree(path, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


class Interrupt:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, saves a checkpoint and exits (status 130).

    A signal often arrives twice: a scheduler signals every process of a job while `accelerate launch` (torchrun) also
    passes the signal it got on to each rank. A repeat within `REPEAT_S` seconds is that same request; a later one
    (Ctrl-C pressed again) stops at once, without saving.
    """

    REPEAT_S = 5.0

    def __init__(self):
        self.requested = False
        self.first = None
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            if time.monotonic() - self.first > self.REPEAT_S:
                raise KeyboardInterrupt
            return
        self.requested, self.first = True, time.monotonic()

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False
