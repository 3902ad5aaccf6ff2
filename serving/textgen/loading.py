"""Model loading: a Hub id or a local folder, through transformers' Auto classes, in the precision chosen for the
hardware (`--dtype auto`), running a repository's own code only when that is safe or asked for (the project's one
remote-code rule: `victorian_gpt.utils.hub.model_source`). `add_model_arguments` spells the loading flags once for
every command-line front end.
"""

from __future__ import annotations

import argparse
import logging
import threading

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from victorian_gpt.utils.hub import model_source

from .compiled import compile_decode
from .int8 import quantize_int8
from .invariant import make_batch_invariant
from .kernels import bf16_kernel_native
from .lora import attach_lora_adapters, check_modules, check_tokenizer, parse_lora_adapters, read_adapter
from .packed import pack_bf16

logger = logging.getLogger("victorian_gpt.serving")

QUANTIZE_CHOICES = ("int8",)
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with bf16 dot-product instructions


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them in /proc/cpuinfo (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def native_bf16(device: str | torch.device, flags: set[str] | None = None) -> str | None:
    """Why `device` computes bf16 natively (a short reason), or None if it does not.

    CPU: AVX-512 BF16 or AMX (oneDNN's bf16 GEMMs run on them; without them bf16 is emulated and slower than fp32;
    `torch.backends.cpu.get_cpu_capability()` says only "AVX512", so the flags are read from /proc/cpuinfo).
    CUDA: `torch.cuda.is_bf16_supported()` (Ampere and later).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return "the GPU computes bf16" if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        found = [flag for flag in NATIVE_BF16_CPU_FLAGS if flag in (cpu_flags() if flags is None else flags)]
        return f"the CPU computes bf16 ({', '.join(found)})" if found else None
    return None


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device, model_dtype: torch.dtype,
                  quantize: str | None = None, flags: set[str] | None = None) -> tuple[torch.dtype, str]:
    """(the dtype to load in, why): `auto` is bf16 where the device computes it natively, otherwise the model's own
    dtype (`model_dtype`); int8 keeps the model's own dtype around its integer GEMMs; None is the model's own."""
    if isinstance(dtype, torch.dtype):
        return dtype, "asked"
    if dtype is None:
        return model_dtype, "the model's own"
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_CHOICES)}")
    if dtype != "auto":
        return getattr(torch, dtype), "asked"
    if quantize:
        return model_dtype, f"auto: the model's own, around {quantize}"
    reason = native_bf16(device, flags)
    if reason and model_dtype in (torch.float32, torch.bfloat16):
        return torch.bfloat16, f"auto: {reason}"
    return model_dtype, "auto: the model's own (no native bf16 here)"



def _config_dtype(config: dict) -> torch.dtype:
    dtype = config.get("dtype") or config.get("torch_dtype")
    dtype = getattr(torch, dtype, None) if isinstance(dtype, str) else None
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def load_model(model_id: str, *, device: str | None = None, dtype: str | torch.dtype | None = None, revision=None,
               quantize: str | None = None, trust_remote_code: bool = False, torch_compile: bool = False,
               batch_invariant: bool = True, lora_adapters: dict[str, str] | None = None):
    """(model, tokenizer) from a Hub id or a local folder, through the Auto classes.

    `dtype`: "auto" (what the front ends default to) is bf16 where the device computes it natively (AVX-512 BF16 or
    AMX on a CPU, Ampere or later on a GPU), otherwise the model's own dtype; "float32" is the exact path; None is the
    model's own dtype. The choice and its reason are kept as `model.serving_dtype` (shown by /info and the Space).
    `quantize="int8"` replaces the model's linear layers (GPT-2 `Conv1D` or `nn.Linear`, the output head included)
    with `Int8Linear` after loading: the CPU path, about a third of fp32's bytes per token.
    A bf16 model on the CPU gets `PackedLinear` layers: the bf16 decode kernel for a few rows where it builds
    (`kernels.py`), otherwise weights packed for oneDNN.
    `trust_remote_code`: see the module's docstring; a native model never runs remote code.
    `torch_compile`: `generate()` decodes through a static KV cache and a torch.compile'd forward
    (`textgen.compiled`); a bf16 model keeps plain weights there if the decode kernels cannot be built (torch.compile
    cannot trace oneDNN's packed ones).
    `batch_invariant` (the default): a sequence decodes to the same bits alone or in the engine's batch
    (`textgen.invariant`); where that cannot be had (a GPU, no decode kernels), a warning says why and the model loads
    without it. `model.batch_invariant` says which. (With `torch_compile`, which compiles `generate()`'s decoding of
    one sequence, there is no batch and it is left out.)
    `lora_adapters` ({name: source}, `parse_lora_adapters`; a source is an adapter folder or a Hub id with an
    optional `@revision`): LoRA adapters served beside the base, a request choosing one by name
    (`GenerationParameters.adapter_id`), rows of different adapters decoding in the same batch (`textgen.lora`).
    Each is read and checked before any compute, a one-line ValueError naming it when it does not load or was made
    for another model (another architecture, tokenizer, module or shape). `model.lora_adapters` holds their names
    (() when none).
    """
    return in_a_thread_of_its_own(_load_model, model_id, device=device, dtype=dtype, revision=revision,
                                  quantize=quantize, trust_remote_code=trust_remote_code,
                                  torch_compile=torch_compile, batch_invariant=batch_invariant,
                                  lora_adapters=lora_adapters)


def in_a_thread_of_its_own(function, *args, **kwargs):
    """`function(*args, **kwargs)` computed in a thread that ends when it returns (its error raised here).

    Loading runs this way so that the thread which then runs the model (the engine's, a `Generation`'s) is the
    process's only one with a pool of OpenMP workers. GNU OpenMP, PyTorch's CPU thread pool on Linux, keeps workers
    for every thread that ever ran parallel work, and once it manages more threads than there are CPUs it stops
    letting idle workers wait actively: every parallel region (each linear layer of a decode step) then waits for its
    workers to wake, and on 2 cores a decode step took up to twice as long when the main thread had loaded the model
    (docs/generation-engine.md)."""
    box: dict = {}

    def run():
        try:
            box["result"] = function(*args, **kwargs)
        except BaseException as error:  # raised in the caller's thread
            box["error"] = error

    worker = threading.Thread(target=run, name="load-model")
    worker.start()
    worker.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def _load_model(model_id: str, *, device, dtype, revision, quantize, trust_remote_code, torch_compile,
                batch_invariant, lora_adapters):
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if quantize not in (None, *QUANTIZE_CHOICES):
        raise ValueError(f"unknown quantization {quantize!r}; choose one of {', '.join(QUANTIZE_CHOICES)}")
    if quantize and torch.device(device).type != "cpu":
        raise ValueError(f"--quantize {quantize} is the CPU path; on {device} use --dtype bfloat16 instead")
    lora_adapters = dict(lora_adapters or {})
    if lora_adapters and torch_compile:
        raise ValueError("LoRA adapters are served by the batching engine; --torch-compile compiles generate()'s "
                         "decode step of the base model alone")
    if model_id in lora_adapters:
        raise ValueError(f"LoRA adapter name {model_id!r} is the base model's own name")
    source = model_source(model_id, revision, trust_remote_code)
    # the adapters' files, configs and bases first: a wrong one stops here, before the model's weights are read
    adapters = [read_adapter(name, adapter, source["config"]) for name, adapter in lora_adapters.items()]
    chosen, why = resolve_dtype(dtype, device, _config_dtype(source["config"]), quantize)
    trust = source["trust_remote_code"]
    tokenizer = AutoTokenizer.from_pretrained(source["name"], trust_remote_code=trust, revision=revision)
    for adapter in adapters:
        check_tokenizer(adapter, tokenizer)
    model = AutoModelForCausalLM.from_pretrained(source["name"], trust_remote_code=trust, revision=revision,
                                                 dtype=chosen)
    for adapter in adapters:
        check_modules(adapter, model)
    prepare_for_serving(model.to(device).eval(), why, quantize=quantize, torch_compile=torch_compile,
                        batch_invariant=batch_invariant)
    attach_lora_adapters(model, adapters)
    if adapters:
        model.serving_dtype += f"; LoRA adapters: {', '.join(model.lora_adapters)}"
    return model, tokenizer


def prepare_for_serving(model, why: str = "asked", *, quantize: str | None = None, torch_compile: bool = False,
                        batch_invariant: bool = True):
    """What `load_model` does to a loaded model, in place (see its docstring for each option): int8 or packed bf16
    linear layers, batch-invariant decoding, the compiled decode step; `model.serving_dtype` says what was chosen and
    why (`why`: how the dtype was chosen). Returns `model`."""
    cpu = model.device.type == "cpu"
    if quantize == "int8":
        quantize_int8(model)
    elif model.dtype == torch.bfloat16 and cpu:
        kernel = bf16_kernel_native()  # else oneDNN packing, which torch.compile cannot trace
        if (kernel or not torch_compile) and pack_bf16(model).packed_linear_layers:
            why += "; linear layers on the bf16 decode kernel" if kernel else "; linear layers packed for oneDNN"
    model.batch_invariant = False
    if batch_invariant and not torch_compile:  # the compiled step is generate()'s, one sequence: no batch to vary
        refused = make_batch_invariant(model)
        if refused:
            logger.warning("serving without batch invariance: %s", refused)
        else:
            why += "; batch-invariant decoding"
    if torch_compile:
        compile_decode(model)
        why += "; generate() decodes through torch.compile"
    model.serving_dtype = f"{str(model.dtype).removeprefix('torch.')} ({why})"
    return model


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The positional `model` and the flags that choose how it is loaded, as `victorian-gpt generate` and
    `victorian-gpt serve` both take them (`load_model_from_args` reads them back)."""
    parser.add_argument("model", help="Hub repo id or local folder of an exported model")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                        help="auto: bf16 where the CPU (AVX-512 BF16 / AMX) or GPU computes it natively, otherwise "
                             "the model's own dtype; float32: the exact path (default: %(default)s)")
    parser.add_argument("--quantize", choices=QUANTIZE_CHOICES, default=None,
                        help="int8: int8 weights and per-token int8 activations, the CPU path")
    parser.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit hash)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let a Hub model whose config.json has auto_map run its own code (pin --revision to a "
                             "commit hash); a native model needs none, and a local folder's code is trusted")
    parser.add_argument("--batch-invariant", action=argparse.BooleanOptionalAction, default=True,
                        help="decode a sequence to the same bits (so the same text for a seed) alone or beside others "
                             "(default); --no-batch-invariant gives that up for PyTorch's kernels in batches of many "
                             "rows (docs/generation-engine.md)")
    parser.add_argument("--lora-adapters", type=_lora_adapters_argument, default=None, metavar="NAME=SOURCE,...",
                        help="LoRA adapters to load at start and serve beside the base model, as NAME=SOURCE pairs "
                             "separated by commas (SOURCE: an adapter folder, or a Hub id with an optional "
                             "@revision). A request picks one by name (TGI's `adapter_id`, OpenAI's `model`); "
                             "requests of different adapters and of the base decode in the same batch")


def _lora_adapters_argument(text: str) -> dict[str, str]:
    try:
        return parse_lora_adapters(text)
    except ValueError as error:  # argparse's one-line usage error, with our message
        raise argparse.ArgumentTypeError(str(error)) from None


def load_model_from_args(args: argparse.Namespace, **options):
    """`load_model` as the flags of `add_model_arguments` (and `options`, e.g. torch_compile) ask."""
    adapters = getattr(args, "lora_adapters", None)
    if isinstance(adapters, str):
        adapters = parse_lora_adapters(adapters)
    return load_model(args.model, device=args.device, dtype=args.dtype, quantize=args.quantize,
                      revision=args.revision, trust_remote_code=args.trust_remote_code,
                      batch_invariant=args.batch_invariant, lora_adapters=adapters, **options)
