"""`victorian-gpt convert`: an export (folder or Hub repo) into formats that engines serve without our code.

    victorian-gpt convert EXPORT --to transformers --output DIR       # Qwen3 / Llama / GPT-2 classes, no remote code
    victorian-gpt convert EXPORT --to gguf --output FILE.gguf [--outtype f32|f16|q8_0]    # llama.cpp, Ollama, ...

Output appears whole or not at all (written to a temporary sibling, then renamed). See docs/conversion.md.
"""

from __future__ import annotations

import argparse
import json
import sys

from .common import ConversionError
from .gguf import to_gguf
from .native import to_transformers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="victorian-gpt convert",
        description="Convert an export (folder or Hub repo id) to a native transformers folder (Qwen3 / Llama / "
        "GPT-2 classes, no remote code) or to a GGUF file for llama.cpp.",
    )
    parser.add_argument("export", help="export folder, or a Hub repo id USER/NAME")
    parser.add_argument("--to", required=True, choices=("transformers", "gguf"), help="what to write")
    parser.add_argument("--output", required=True, help="folder (--to transformers) or .gguf file (--to gguf)")
    parser.add_argument("--outtype", default=None, help="GGUF tensor type: f32 (exact, default), f16 or q8_0")
    parser.add_argument("--revision", help="branch, tag or commit of a Hub repo id (pin a commit for reproducibility)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    args = parser.parse_args(argv)
    prog = "victorian-gpt convert"
    try:
        if args.to == "transformers":
            if args.outtype is not None:
                raise ConversionError("--outtype applies to --to gguf only")
            path = to_transformers(args.export, args.output, revision=args.revision, overwrite=args.overwrite)
            architecture = json.loads((path / "config.json").read_text())["architectures"][0]
            print(f"wrote {path} ({architecture}; load it with AutoModelForCausalLM, no trust_remote_code)")
        else:
            path = to_gguf(args.export, args.output, outtype=args.outtype or "f32", revision=args.revision,
                           overwrite=args.overwrite)
            print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {args.outtype or 'f32'})")
    except ConversionError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
