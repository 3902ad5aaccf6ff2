"""`victorian-gpt` command line: one subcommand per job, each implemented where its job lives.

Subcommands are imported only when called, so `victorian-gpt generate` does not pay for the training stack.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

# subcommand -> ("module:function", one-line help). Each function takes the remaining argv and parses it itself.
COMMANDS = {
    "tokenizer": ("victorian_gpt.tokenization:main", "train the byte-level BPE tokenizer on a PG19-format source"),
    "train": ("training.train:main", "train a model (run under `accelerate launch` for DDP / mixed precision)"),
    "eval": ("training.evaluate:main", "print loss, perplexity and bits per byte of a model on a split, as JSON"),
    "generate": ("serving.generate:main", "generate text from a model (one prompt, a file, interactive)"),
    "serve": ("serving.server:main", "serve a model over Text Generation Inference's HTTP API"),
    "convert": (
        "victorian_gpt.conversion.cli:main",
        "convert an export to a native transformers folder (no remote code) or a GGUF file for llama.cpp",
    ),
    "card": ("hub.card:main", "write the model card README.md into an exported folder"),
    "push": ("hub.publish:push_main", "publish an exported folder to the Hugging Face Hub"),
    "push-space": ("hub.publish:push_space_main", "publish the Gradio demo as a Hugging Face Space"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="victorian-gpt",
        description="Train, evaluate, publish and serve VictorianGPT.",
        epilog="Run `victorian-gpt COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"victorian-gpt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv or ["--help"])  # prints help / the error and exits
    target, _ = COMMANDS[argv[0]]
    module_name, function_name = target.split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    return function(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
