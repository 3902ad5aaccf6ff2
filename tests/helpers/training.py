"""The tiny training config and the commands the training tests run: one process, or two gloo DDP processes through
`accelerate launch`; and what a run leaves in metrics.jsonl."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from helpers.isolation import REPO_ROOT

TINY_CONFIG = str(REPO_ROOT / "training" / "configs" / "tiny.yaml")


def launch_2() -> list[str]:
    """`accelerate launch --multi_gpu --num_processes 2`: on a CPU-only machine, two gloo DDP processes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port)]


def tiny_args(out: Path, data: Path, *extra: str) -> list[str]:
    return ["--config", TINY_CONFIG, "--dataset", str(data), "--output_dir", str(out), "--report_to", "none",
            "--test_split", "none", *extra]


def run(cmd, timeout=240):
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def step_losses(out: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in metrics(out) if "loss" in m}
