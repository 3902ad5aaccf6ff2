"""Our model against llama.cpp on the same weights: tokenization, greedy continuations, decode speed.

    python bench/bench_llamacpp.py [--parts tokenize,greedy,speed] [--which ours-fp32,...,llamacpp-q8_0]

(a) tokenize: llama.cpp (GGUF written by `victorian-gpt convert --to gguf`, pre-tokenizer "gpt-2") gives the same ids
    as our tokenizer for the sample's validation text (--dataset), plus accents, digits and curly quotes.
(b) greedy: at f32, llama.cpp's greedy continuation of three openings equals ours for 32 tokens, for the README main
    command's export (--export) and a GPT-2-preset export (--gpt2-export; a random one is made if not given).
(c) speed: ms per new token at the 124M shapes (random weights; batch 1, greedy, --new-tokens after a
    --prompt-tokens prompt, --threads threads), alternating repeats in one run: our generate() in fp32, bf16 and
    int8 (serving.textgen.load_model(quantize="int8")) against llama.cpp f32, f16 and q8_0.

llama.cpp runs in its own virtualenv (llama-cpp-python built from source, --llamacpp-python), in a worker process this
script drives over stdin/stdout; our model runs in this process. One JSON line per measurement, then a table.
Importable: `LlamaCpp` (the worker), `ours_ms_per_token`, `llamacpp_ms_per_token`, `make_124m_export`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VENV_PYTHON = "/work/venvs/llamacpp/bin/python"
OPENINGS = [
    "It was the best of times, it was the worst of times,",
    "My dear Watson,",
    "The old house stood at the end of the lane, and",
]
# What byte-level BPE and llama.cpp's regex must agree on beyond plain prose.
EDGE_TEXTS = [
    "Café, naïve, façade, Brontë, Æsop, Œdipus — résumé.",
    "In 1859 the price was £3 4s. 6d.; by 1,234,567 or 12.5% or 3.14159 or 0007.",
    "\u201cWell,\u201d said he, \u2018it\u2019s\u2014I daresay\u2014quite so\u2026\u2019 \u201cIndeed!\u201d",
    "  double  spaces,\ttabs,\n\nnew lines\r\n and trailing   ",
    "I've, you'll, he'd, we're, it's, 'tis, o'er, ne'er-do-well",
]
WHICH = ("ours-fp32", "ours-bf16", "ours-int8", "llamacpp-f32", "llamacpp-f16", "llamacpp-q8_0")
EXTRA = ("ours-bf16-plain",  # transformers' own bf16 (no packing), on request
         "ours-int8-intmm", "ours-bf16-packed",  # without the decode kernels: PyTorch's operators, oneDNN packing
         "ours-fp32-compile", "ours-bf16-compile", "ours-int8-compile", "ours-int8-intmm-compile")  # torch_compile


def emit(record: dict) -> dict:
    print(json.dumps(record), flush=True)
    return record


# --------------------------------------------------------------------------------------------------- llama.cpp side
WORKER = r"""
import json, sys, time
import llama_cpp.llama_cpp as low_level
from llama_cpp import Llama

if "--no-extra-bufts" in sys.argv:
    # Extra CPU buffer types (AMX tiles, weight repacking) off: in a VM that does not grant AMX state, a build with
    # -DGGML_NATIVE=ON on an AMX CPU traps (invalid opcode, `tilezero`) on its first q8_0 matmul.
    _default_params = low_level.llama_model_default_params
    def _params():
        params = _default_params()
        params.use_extra_bufts = False
        return params
    low_level.llama_model_default_params = _params  # what Llama.__init__ calls

models = {}
for line in sys.stdin:
    request = json.loads(line)
    cmd = request["cmd"]
    try:
        if cmd == "load":
            models[request["path"]] = Llama(model_path=request["path"], n_ctx=request["n_ctx"],
                                            n_threads=request["threads"], n_threads_batch=request["threads"],
                                            n_batch=request["n_ctx"], verbose=False)
            reply = {"ok": True}
        elif cmd == "tokenize":
            llm = models[request["path"]]
            reply = {"ids": llm.tokenize(request["text"].encode("utf-8"), add_bos=False, special=False)}
        elif cmd == "generate":
            llm = models[request["path"]]
            tokens, start = [], time.perf_counter()
            for token in llm.generate(request["ids"], top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0,
                                      reset=True):
                tokens.append(token)
                if len(tokens) == request["n"]:
                    break
            reply = {"ids": tokens, "seconds": time.perf_counter() - start}
        else:
            reply = {"error": f"unknown command {cmd}"}
    except Exception as error:
        reply = {"error": f"{type(error).__name__}: {error}"}
    print(json.dumps(reply), flush=True)
"""


class LlamaCpp:
    """llama.cpp (llama-cpp-python) in a worker process of its own interpreter; one request at a time."""

    def __init__(self, python: str = DEFAULT_VENV_PYTHON, threads: int = 2, extra_bufts: bool = True):
        if not Path(python).exists():
            raise SystemExit(f"no llama.cpp interpreter at {python}: build llama-cpp-python there (see the docstring)")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        self.threads = threads
        self.extra_bufts = extra_bufts
        flags = [] if extra_bufts else ["--no-extra-bufts"]
        self.proc = subprocess.Popen([python, "-c", WORKER, *flags], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env, bufsize=1)

    def _call(self, **request) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the llama.cpp worker died (see its stderr above)")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"llama.cpp: {reply['error']}")
        return reply

    def load(self, path: str | Path, n_ctx: int) -> str:
        self._call(cmd="load", path=str(path), n_ctx=n_ctx, threads=self.threads)
        return str(path)

    def tokenize(self, path: str, text: str) -> list[int]:
        return self._call(cmd="tokenize", path=path, text=text)["ids"]

    def generate(self, path: str, ids: list[int], n: int) -> tuple[list[int], float]:
        reply = self._call(cmd="generate", path=path, ids=list(ids), n=n)
        return reply["ids"], reply["seconds"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def llamacpp_ms_per_token(llama: LlamaCpp, path: str, prompt: list[int], new_tokens: int) -> float:
    """Wall time of prompt + `new_tokens` greedy tokens, per new token (the prompt's prefill included)."""
    tokens, seconds = llama.generate(path, prompt, new_tokens)
    assert len(tokens) == new_tokens, len(tokens)
    return 1000 * seconds / new_tokens


# --------------------------------------------------------------------------------------------------- our side
def convert(export: Path, out: Path, outtype: str = "f32") -> Path:
    sys.path.insert(0, str(REPO))
    from victorian_gpt.conversion import to_gguf

    return to_gguf(export, out, outtype=outtype, overwrite=True)


def ours_greedy(model, prompt: list[int], n: int) -> list[int]:
    import torch

    ids = torch.tensor([prompt])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                         repetition_penalty=1.0)
    return out[0, len(prompt):].tolist()  # shorter than n if it chose the end-of-text token (llama.cpp goes on)


def ours_ms_per_token(model, prompt: list[int], new_tokens: int) -> float:
    """Wall time of our generate() (greedy, KV cache) for prompt + `new_tokens`, per new token."""
    import torch

    ids = torch.tensor([prompt])
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens, repetition_penalty=1.0)
    seconds = time.perf_counter() - start
    assert out.shape[1] == len(prompt) + new_tokens
    return 1000 * seconds / new_tokens


def make_export(folder: Path, preset: str, tokenizer_dir: Path, seed: int = 0, **overrides) -> Path:
    """A random-weight export of `preset` (every weight moved off its init, so no head is all zeros)."""
    import torch
    from transformers import AutoTokenizer

    sys.path.insert(0, str(REPO))
    from victorian_gpt import VictorianGPTConfig, VictorianGPTForCausalLM
    from victorian_gpt.export import save_model_folder

    torch.manual_seed(seed)
    config = VictorianGPTConfig.from_preset(preset, **overrides)
    model = VictorianGPTForCausalLM(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return save_model_folder(model, tokenizer, folder)


make_124m_export = make_export


def load_ours(export: Path, kind: str):
    """fp32, bf16 and int8 as the serving front ends load them (`serving.textgen.load_model`: bf16 with linear
    layers on the decode kernel, or packed for oneDNN, on the CPU); bf16-plain as transformers alone loads it
    (`from_pretrained(dtype=...)`); bf16-packed: packed for oneDNN (bf16 before its decode kernel);
    `<kind>-compile`: with `load_model(torch_compile=True)` (static KV cache, compiled decode step); int8-intmm: int8
    with `torch._int_mm` for every call (what int8 was before its decode kernel)."""
    sys.path.insert(0, str(REPO))
    from serving.textgen import load_model

    if kind in ("bf16-plain", "bf16-packed"):
        import torch
        from transformers import AutoModelForCausalLM

        from serving.textgen import pack_bf16

        model = AutoModelForCausalLM.from_pretrained(export, dtype=torch.bfloat16, trust_remote_code=True).eval()
        return model if kind == "bf16-plain" else pack_bf16(model, kernel=False)
    kind, compiled = kind.removesuffix("-compile"), kind.endswith("-compile")
    dtype = {"fp32": "float32", "bf16": "bfloat16", "int8": "float32", "int8-intmm": "float32"}[kind]
    model, _ = load_model(str(export), device="cpu", dtype=dtype, quantize="int8" if kind.startswith("int8") else None,
                          trust_remote_code=True, torch_compile=compiled)
    if kind == "int8-intmm":  # every call on PyTorch's operators, as before the decode kernel (the same bits)
        for module in model.modules():
            if hasattr(module, "kernel"):
                module.kernel = False
    return model


# --------------------------------------------------------------------------------------------------- the parts
def read_split(dataset: Path, split: str) -> str:
    for name in (f"{split}.jsonl.gz", f"{split}.jsonl"):
        path = dataset / name
        if path.is_file():
            opener = gzip.open if name.endswith(".gz") else open
            with opener(path, "rt", encoding="utf-8") as f:
                return "\n".join(json.loads(line)["text"] for line in f if line.strip())
    raise SystemExit(f"--dataset {dataset}: no {split}.jsonl(.gz)")


def part_tokenize(llama: LlamaCpp, export: Path, work: Path, dataset: Path) -> list[dict]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(export, trust_remote_code=True)  # our own export
    gguf_path = llama.load(convert(export, work / "tokenize.gguf"), n_ctx=256)
    records = []
    texts = [("validation", read_split(dataset, "validation"))] + [(f"edge-{i}", t) for i, t in enumerate(EDGE_TEXTS)]
    for name, text in texts:
        ours = tokenizer(text, add_special_tokens=False)["input_ids"]
        theirs = llama.tokenize(gguf_path, text)
        first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
        if first is None and len(ours) != len(theirs):
            first = min(len(ours), len(theirs))
        records.append(emit({"bench": "llamacpp_tokenize", "text": name, "chars": len(text), "tokens": len(ours),
                             "identical": ours == theirs, "first_difference": first}))
    return records


def part_greedy(llama: LlamaCpp, exports: dict[str, Path], work: Path, n: int = 32) -> list[dict]:
    from transformers import AutoTokenizer

    records = []
    for label, export in exports.items():
        model = load_ours(export, "fp32")
        tokenizer = AutoTokenizer.from_pretrained(export, trust_remote_code=True)  # our own export
        gguf_path = llama.load(convert(export, work / f"greedy-{label}.gguf"), n_ctx=model.config.n_positions)
        for opening in OPENINGS:
            prompt = tokenizer(opening, add_special_tokens=False)["input_ids"]
            ours = ours_greedy(model, prompt, n)
            theirs, _ = llama.generate(gguf_path, prompt, n)
            theirs = theirs[:len(ours)]
            first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
            records.append(emit({"bench": "llamacpp_greedy", "model": label, "outtype": "f32", "opening": opening,
                                 "new_tokens": n, "identical": ours == theirs, "first_difference": first,
                                 "text": tokenizer.decode(ours)}))
    return records


def part_speed(llama: LlamaCpp, which: list[str], presets: list[str], work: Path, tokenizer_dir: Path,
               prompt_tokens: int, new_tokens: int, repeats: int) -> list[dict]:
    import statistics

    import torch

    records = []
    for preset in presets:
        export = make_export(work / f"speed-{preset}", preset, tokenizer_dir)
        runners = {}
        for name in which:
            side, kind = name.split("-", 1)
            if side == "ours":
                model = load_ours(export, kind)
                runners[name] = lambda prompt, n, m=model: ours_ms_per_token(m, prompt, n)
            else:
                path = llama.load(convert(export, work / f"speed-{preset}-{kind}.gguf", kind), n_ctx=prompt_tokens + new_tokens)
                runners[name] = lambda prompt, n, p=path: llamacpp_ms_per_token(llama, p, prompt, n)
        generator = torch.Generator().manual_seed(0)
        prompt = torch.randint(2, 4000, (prompt_tokens,), generator=generator).tolist()
        for name, run in runners.items():  # warm-up: first-call allocations, thread pools, compilation
            run(prompt, 8)
            if name.endswith("-compile"):  # and a second length: one compilation serves every length
                run(prompt, 16)
        times = {name: [] for name in runners}
        for _ in range(repeats):  # alternating, so a busy spell hits every contender alike
            for name, run in runners.items():
                times[name].append(run(prompt, new_tokens))
        for name, values in times.items():
            records.append(emit({"bench": "llamacpp_speed", "preset": preset, "which": name, "threads": llama.threads,
                                 "llamacpp_extra_bufts": llama.extra_bufts,
                                 "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "repeats": repeats,
                                 "ms_per_token_median": round(statistics.median(values), 2),
                                 "ms_per_token_min": round(min(values), 2), "all": [round(v, 2) for v in values]}))
    return records


def table(records: list[dict]) -> str:
    lines = []
    speed = [r for r in records if r["bench"] == "llamacpp_speed"]
    if speed:
        # ours against llama.cpp's counterpart: the same weights at the nearest precision (bf16 against f16)
        counterpart = {"fp32": "f32", "bf16": "f16", "bf16-plain": "f16", "int8": "q8_0", "int8-intmm": "q8_0",
                       "bf16-packed": "f16"}
        counterpart.update({f"{kind}-compile": theirs for kind, theirs in list(counterpart.items())})
        median = {(r["preset"], r["which"]): r["ms_per_token_median"] for r in speed}
        lines += ["| preset | engine | precision | ms/token (median) | min | ours / llama.cpp |", "|---|---|---|---|---|---|"]
        for r in speed:
            side, kind = r["which"].split("-", 1)
            engine = "ours (generate())" if side == "ours" else "llama.cpp"
            theirs = median.get((r["preset"], f"llamacpp-{counterpart.get(kind)}")) if side == "ours" else None
            ratio = f"{r['ms_per_token_median'] / theirs:.2f}x ({counterpart[kind]})" if theirs else ""
            lines.append(f"| {r['preset']} | {engine} | {kind} | {r['ms_per_token_median']} | {r['ms_per_token_min']} "
                         f"| {ratio} |")
    for kind in ("llamacpp_tokenize", "llamacpp_greedy"):
        rows = [r for r in records if r["bench"] == kind]
        if rows:
            same = sum(r["identical"] for r in rows)
            lines.append(f"{kind}: {same}/{len(rows)} identical")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="tokenize,greedy,speed")
    parser.add_argument("--which", default=",".join(WHICH), help=f"speed contenders, from {','.join(WHICH + EXTRA)}")
    parser.add_argument("--presets", default="modern-124m,gpt2-124m",
                        help="shapes of the speed part (random weights), comma-separated")
    parser.add_argument("--export", default=str(REPO / "runs" / "pg19-sample-cpu" / "model"))
    parser.add_argument("--gpt2-export", default=None, help="a GPT-2-preset export (default: a random small one)")
    parser.add_argument("--dataset", default=str(REPO.parent / "shared" / "data" / "pg19-sample"))
    parser.add_argument("--llamacpp-python", default=DEFAULT_VENV_PYTHON)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-extra-bufts", action="store_true",
                        help="llama.cpp without extra CPU buffer types (AMX, repacking): for a VM that traps on AMX")
    parser.add_argument("--prompt-tokens", type=int, default=20)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    which = args.which.split(",")
    if bad := [w for w in which if w not in WHICH + EXTRA]:
        parser.error(f"--which: unknown {bad}; choose from {WHICH + EXTRA}")
    export = Path(args.export)
    if parts & {"tokenize", "greedy"} and not (export / "config.json").is_file():
        parser.error(f"--export {export} is not an export folder")

    import torch

    torch.set_num_threads(args.threads)
    llama = LlamaCpp(args.llamacpp_python, threads=args.threads, extra_bufts=not args.no_extra_bufts)
    records = []
    with tempfile.TemporaryDirectory(prefix="bench_llamacpp.") as tmp:
        work = Path(tmp)
        tokenizer_dir = export if (export / "tokenizer.json").is_file() else REPO / "runs" / "pg19-sample-cpu" / "tokenizer"
        if "tokenize" in parts:
            records += part_tokenize(llama, export, work, Path(args.dataset))
        if "greedy" in parts:
            gpt2 = Path(args.gpt2_export) if args.gpt2_export else make_export(
                work / "gpt2-small-random", "small", tokenizer_dir, vocab_size=4096)
            records += part_greedy(llama, {"main-command (Qwen3)": export, "gpt2-preset (GPT-2)": gpt2}, work)
        if "speed" in parts:
            records += part_speed(llama, which, args.presets.split(","), work, tokenizer_dir, args.prompt_tokens,
                                  args.new_tokens, args.repeats)
    llama.close()
    print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
