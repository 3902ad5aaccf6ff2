"""`victorian-gpt generate`: text from a model folder or Hub repo, one prompt, a file of prompts, or interactively.

    victorian-gpt generate MODEL --prompt "It was a dark and stormy night" [--stream]
    victorian-gpt generate MODEL --prompts-file openings.txt > continuations.jsonl
    victorian-gpt generate MODEL --interactive

Sampling defaults are the model's own (`generation_config.json`); the flags override them. Generation itself is the
engine's (serving/textgen/), so the CLI, the Space and the TGI server validate and sample identically: every mode
runs its continuations through one batching engine (`textgen.Engine`; `--prompts-file` decodes up to `--batch-size`
prompts together). `--max-new-tokens` may go past the model's context: when the window is full the context shifts
(`--context-keep`, `--context-discard`; docs/generation-engine.md), and an opening longer than the model reads is cut
from the left with a notice. `--dtype auto` (the default) is bf16 where the CPU (AVX-512 BF16 / AMX) or GPU computes
it natively, otherwise the model's own dtype; `--dtype float32` is the exact path; `--quantize int8` loads int8
weights (the CPU path); `--torch-compile` runs `--prompt` and `--interactive` through `generate()` with a static KV
cache and torch.compile (compiled once, then faster per token; it stops at the model's context). `--lora-adapters
NAME=SOURCE,...` loads LoRA adapters beside the model and `--adapter-id NAME` continues with one. A Hub model with
remote code (config.json with `auto_map`) runs it only with `--trust-remote-code`; a local folder's code is trusted,
and a native model needs none.
"""

from __future__ import annotations

import argparse
import json
import sys

from tqdm.auto import tqdm

from . import textgen

UNLIMITED = 10**9  # prompt + new tokens: the engine writes past the model's context, so no total limit of its own

HELP_INTERACTIVE = """Type an opening and press Enter to continue it. Commands:
  /temperature T      set the temperature (e.g. /temperature 0.8)
  /max-new-tokens N   set the length of each continuation (also /length N)
  /top-k K, /top-p P, /repetition-penalty R, /seed S   set the other controls
  /settings           show the current settings
  /help               this text
  /quit               leave (also /exit, or Ctrl-D)
Ctrl-C while text is being written stops that continuation."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="victorian-gpt generate",
        description="Generate text with a VictorianGPT model (an exported folder or a Hub repo id).",
    )
    textgen.add_model_arguments(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="the opening to continue")
    source.add_argument("--prompts-file", help="a text file with one prompt per line; writes JSON Lines")
    source.add_argument("--interactive", action="store_true", help="a prompt loop (type /help inside)")
    sampling = parser.add_argument_group("generation (defaults: the model's generation_config.json)")
    sampling.add_argument("--max-new-tokens", type=int, default=None)
    sampling.add_argument("--temperature", type=float, default=None)
    sampling.add_argument("--top-k", type=int, default=None, help="0 turns top-k filtering off")
    sampling.add_argument("--top-p", type=float, default=None, help="1.0 turns nucleus filtering off")
    sampling.add_argument("--repetition-penalty", type=float, default=None)
    sampling.add_argument("--seed", type=int, default=None, help="seed of the sampler (default: random)")
    sampling.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    sampling.add_argument("--adapter-id", default=None, metavar="NAME",
                          help="continue with this LoRA adapter, one of --lora-adapters (default: the base model)")
    parser.add_argument("--stream", action="store_true", help="print tokens as they are generated (--prompt)")
    parser.add_argument("--output", help="with --prompts-file: write the JSON Lines here instead of stdout")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="with --prompts-file: prompts decoded together at most (default: %(default)s)")
    parser.add_argument("--torch-compile", action="store_true",
                        help="decode through generate()'s static KV cache and torch.compile (--prompt, --interactive): "
                             "the first continuation compiles (tens of seconds on a small CPU), the next ones are "
                             "faster; it stops at the model's context (no context shift)")
    textgen.add_context_shift_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.adapter_id is not None and args.adapter_id not in (args.lora_adapters or {}):
        parser.error(f"--adapter-id {args.adapter_id!r} is not one of --lora-adapters "
                     f"({', '.join(args.lora_adapters or {}) or 'none given'})")
    if args.torch_compile and args.prompts_file:
        print("victorian-gpt generate: --torch-compile compiles generate()'s decode step (--prompt, --interactive); "
              "--prompts-file runs the batching engine, which it does not compile", file=sys.stderr)
        return 2
    if args.batch_size < 1:
        print("victorian-gpt generate: --batch-size must be at least 1", file=sys.stderr)
        return 2
    try:
        model, tokenizer = textgen.load_model_from_args(args, torch_compile=args.torch_compile)
    except (OSError, ValueError) as error:
        print(f"victorian-gpt generate: cannot load {args.model!r}: {error}", file=sys.stderr)
        return 2
    try:
        shift = textgen.context_shift_from_args(args, model).check(textgen.context_length(model, tokenizer))
    except ValueError as error:
        print(f"victorian-gpt generate: {error}", file=sys.stderr)
        return 2
    # The engine writes past the window (the context shifts); generate()'s compiled static cache cannot
    limits = textgen.Limits.for_model(model, tokenizer, max_total_tokens=None if args.torch_compile else UNLIMITED)
    settings = textgen.sampling_defaults(model.generation_config)
    overrides = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                     top_p=args.top_p, repetition_penalty=args.repetition_penalty)
    settings.update({k: v for k, v in overrides.items() if v is not None})
    settings.update(seed=args.seed, do_sample=settings["do_sample"] and not args.greedy)

    session = Session(model, tokenizer, limits, settings, batch_size=args.batch_size, context_shift=shift,
                      compiled=args.torch_compile, adapter_id=args.adapter_id)
    try:
        if args.interactive:
            return session.interactive()
        if args.prompts_file:
            return session.prompts_file(args.prompts_file, args.output)
        return session.one(args.prompt, stream=args.stream)
    except textgen.ValidationError as error:
        print(f"victorian-gpt generate: {error}", file=sys.stderr)
        return 2
    except textgen.GenerationError as error:
        print(f"victorian-gpt generate: generation failed: {error}", file=sys.stderr)
        return 1
    finally:
        session.close()


class Session:
    """The loaded model plus the current settings (which the interactive loop changes in place). Continuations run
    through one batching engine, which writes past the model's context; with `compiled`, through `generate()`."""

    def __init__(self, model, tokenizer, limits, settings: dict, batch_size: int = 32,
                 context_shift: textgen.ContextShift | None = None, compiled: bool = False,
                 adapter_id: str | None = None):
        self.model, self.tokenizer, self.limits, self.settings = model, tokenizer, limits, settings
        self.batch_size, self.context_shift, self.compiled = batch_size, context_shift, compiled
        self.adapter_id = adapter_id  # the LoRA adapter every continuation uses (None: the base)
        self._engine = None

    @property
    def engine(self) -> textgen.Engine:
        if self._engine is None:
            self._engine = textgen.Engine(self.model, self.tokenizer, limits=self.limits, timeout=None,
                                          max_batch_size=self.batch_size, max_concurrent_requests=10**6,
                                          context_shift=self.context_shift)
        return self._engine

    def close(self):
        if self._engine is not None:
            self._engine.close()

    def prepare(self, prompt: str, settings: dict | None = None, quiet: bool = False, where: str = "the opening"):
        """(input_ids, params) for `prompt` under `settings` (default: the current ones); raises ValidationError.
        An opening longer than the model reads is cut from the left, with a notice on stderr naming `where`."""
        parameters = textgen.control_parameters(**(self.settings if settings is None else settings))
        length = len(self.tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"])
        if length > self.limits.max_input_tokens:
            parameters["truncate"] = self.limits.max_input_tokens
            if not quiet:
                print(f"victorian-gpt generate: {where} is {length} tokens, more than the model reads at once; "
                      f"it goes on from its last {self.limits.max_input_tokens}", file=sys.stderr)
        return textgen.prepare_request(self.tokenizer, prompt, self.limits, adapter_id=self.adapter_id, **parameters)

    def start(self, prompt: str):
        input_ids, params = self.prepare(prompt)
        if self.compiled:
            return textgen.Generation(self.model, self.tokenizer, input_ids, params)
        return self.engine.submit(input_ids, params)

    def one(self, prompt: str, stream: bool) -> int:
        with self.start(prompt) as generation:
            for token in generation:
                if stream and not token.special:
                    print(token.text, end="", flush=True)
        if stream:
            print()
        else:
            print(generation.generated_text)
        return 0

    def prompts_file(self, path: str, output: str | None) -> int:
        try:
            with open(path, encoding="utf-8") as f:
                prompts = [line.rstrip("\n") for line in f]
        except OSError as error:
            print(f"victorian-gpt generate: cannot read {path!r}: {error}", file=sys.stderr)
            return 2
        prompts = [p for p in prompts if p.strip()]
        # Check every prompt before generating anything, so a bad line 90 does not waste the first 89.
        for number, prompt in enumerate(prompts, 1):
            try:
                self.prepare(prompt, quiet=True)
            except textgen.ValidationError as error:
                raise textgen.ValidationError(f"{path}, prompt {number}: {error}") from None
        out = open(output, "w", encoding="utf-8") if output else sys.stdout
        # All prompts go to one engine, which decodes up to `batch_size` of them together; records are written in
        # the file's order as each completes.
        engine = self.engine
        generations = []
        try:
            for number, prompt in enumerate(prompts, 1):
                generations.append(engine.submit(*self.prepare(prompt, where=f"{path}, prompt {number}")))
            tokens = 0
            with tqdm(total=len(prompts), desc="generating", unit="prompt", disable=None, file=sys.stderr) as bar:
                for prompt, generation in zip(prompts, generations):
                    for _ in generation:
                        pass
                    tokens += generation.generated_tokens
                    bar.set_postfix(tok_s=f"{tokens / max(bar.format_dict['elapsed'], 1e-9):,.1f}")
                    bar.update(1)
                    record = {
                        "prompt": prompt,
                        "generated_text": generation.generated_text,
                        "generated_tokens": generation.generated_tokens,
                        "finish_reason": generation.finish_reason,
                        "seed": generation.params.seed,
                    }
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                    out.flush()
        finally:
            for generation in generations:
                generation.cancel()
            if output:
                out.close()
        return 0

    # -- interactive loop
    SETTABLE = {
        "temperature": float, "max-new-tokens": int, "length": int, "top-k": int, "top-p": float,
        "repetition-penalty": float, "seed": int,
    }

    def interactive(self) -> int:
        print(HELP_INTERACTIVE)
        self.show_settings()
        while True:
            try:
                line = input(">>> ")
            except EOFError:
                print()
                return 0
            except KeyboardInterrupt:
                print()
                return 0
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if self.command(line) == "quit":
                    return 0
                continue
            try:
                generation = self.start(line)
            except textgen.ValidationError as error:
                print(f"error: {error}")
                continue
            try:
                for token in generation:
                    if not token.special:
                        print(token.text, end="", flush=True)
                print(f"\n[{generation.generated_tokens} tokens, {generation.finish_reason}]")
            except KeyboardInterrupt:
                print("\n[stopped]")
            finally:
                generation.close()

    def command(self, line: str) -> str | None:
        name, _, value = line[1:].partition(" ")
        name = name.lower().replace("_", "-")
        if name in ("quit", "exit", "q"):
            return "quit"
        if name == "help":
            print(HELP_INTERACTIVE)
        elif name == "settings":
            self.show_settings()
        elif name in self.SETTABLE:
            key = "max_new_tokens" if name in ("length", "max-new-tokens") else name.replace("-", "_")
            try:
                new = self.SETTABLE[name](value.strip())
                # check the new value against the same rules a generation would, before keeping it
                self.prepare("x", {**self.settings, key: new}, quiet=True)
            except ValueError as error:  # a bad number, or a ValidationError
                print(f"error: {name} {value.strip()!r}: {error}")
                return None
            self.settings[key] = new
            self.show_settings()
        else:
            print(f"unknown command /{name}; type /help")
        return None

    def show_settings(self):
        s = self.settings
        mode = "sampling" if s["do_sample"] else "greedy"
        print(
            f"[{mode}: max_new_tokens={s['max_new_tokens']} temperature={s['temperature']} top_k={s['top_k']} "
            f"top_p={s['top_p']} repetition_penalty={s['repetition_penalty']} seed={s['seed']}]"
        )
