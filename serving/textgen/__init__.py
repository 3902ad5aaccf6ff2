"""Text generation shared by the Gradio Space, the TGI-protocol server and `victorian-gpt generate`.

Two ways to run a request, with one consumer interface (iterate for `Token`s, sync or async; `cancel()`; after the
iteration `generated_text`, `generated_tokens`, `finish_reason`, `tokens`):

- `Engine`: one batching engine for many concurrent requests (the server, the Space). One background thread owns the
  model; the running sequences decode together, one token each per step, sharing one read of the weights. A new
  request joins between steps: its prompt is prefilled on its own, in chunks of at most `max_batch_prefill_tokens`
  so the others stall for one chunk at most, and its KV cache is then merged into the batch (left padding, a 2-D
  attention mask, explicit position ids). A finished or cancelled sequence leaves the batch at the next step. Beyond
  `max_concurrent_requests` in flight, `submit` raises `Overloaded` (HTTP 429) at once rather than queueing forever.
  The entry point:

      engine = textgen.Engine(model, tokenizer)               # once; limits as TGI's launcher names them
      input_ids, params = textgen.prepare_request(tokenizer, prompt, engine.limits, max_new_tokens=50)
      with engine.submit(input_ids, params) as generation:    # `asynchronous=True` for `async for`
          for token in generation:
              print(token.text, end="")
      generation.generated_text

- `Generation(model, tokenizer, input_ids, params)`: one request as one `model.generate()` call in a background
  thread: the CLI's one-shot mode, and what a `pipeline` user would run.

Either way each request has its own `TokenStreamer` (a `TextIteratorStreamer` that queues one `Token` -- id, text,
logprob, special -- per generated token), fed through `put`/`end` by `generate()` or by the engine; a consumer that
goes away (Stop button, closed tab, dropped HTTP connection) cancels its request at the next token, and an exception
in the computation is carried to the consumer and raised there, never turned into a hang.

Sampling draws from a per-request, seeded `torch.Generator` (`TokenChooser`), not the process-wide RNG: concurrent
requests do not disturb one another and a seed reproduces its text. The engine applies each request's own
repetition penalty, temperature, top-k, top-p and typical-p with transformers' own logits processors, in
`generate()`'s order, so a request alone in the engine gives exactly `generate()`'s tokens. In a batch the matmuls
see other shapes (and padding), which can change the lowest bits of the logits and so, rarely, flip a near-tie
(bench/bench_server.py counts how often). Parameters are checked by `prepare_request` with Text Generation
Inference's rules and messages, so the three front ends reject the same values the same way.

`load_model(..., quantize="int8")` is the int8 CPU path (`Int8Linear`): int8 weights (per output channel) and
int8 activations (per token, computed at each call), multiplied with int32 accumulation: by the decode kernel for a
few rows (`kernels.py`), by PyTorch's integer GEMM beyond. `load_model(..., torch_compile=True)` compiles
`generate()`'s decode step (`compiled.py`).

This package is uploaded to the Space beside `app.py`: it imports only torch and transformers (models are loaded
through the Auto classes, as a downloaded Space would). One concern per file:

    params.py      request parameters and their validation (TGI's rules): Limits, GenerationParameters, prepare_request
    errors.py      ValidationError, GenerationError, Overloaded
    loading.py     load_model: the dtype for the hardware (--dtype auto), the remote-code rule applied;
                   the loading flags of the command-line front ends
    int8.py        Int8Linear, quantize_int8
    kernels.py     the decode kernels (decode_kernels.cpp, built at first use): int8 and bf16 products of a few rows
    compiled.py    generate()'s decode step through a static KV cache and torch.compile: compile_decode
    streaming.py   sampling and streaming: Token, TokenChooser, the stopping criteria, TokenStreamer
    request.py     the consumer's side every request shares
    threads.py     one request, one generate() thread: Generation, generate_text
    engine.py      the batching engine: Engine, BatchedGeneration
    context_shift.py  writing past the window: ContextShift (what a full context keeps), the RoPE re-rotation
    kv_cache.py    the engine's KV cache layers
    layers.py      swapping a model's linear layers for those serving variants
    invariant.py   batch-invariant decoding (the default): Float32Linear, batch_invariant_attention,
                   make_batch_invariant
    packed.py      bf16 linear layers packed for oneDNN (the CPU decode path): PackedLinear, pack_bf16
    prefix_cache.py  the KV of recently prefilled prompt openings (PrefixCache)
    lora.py        LoRA adapters per request in the same batch: parse_lora_adapters, LoraLinear, adapter_rows
"""

from .compiled import compile_decode
from .context_shift import ContextShift, add_context_shift_arguments, context_shift_from_args
from .engine import BatchedGeneration, Engine
from .errors import GenerationError, Overloaded, ValidationError
from .int8 import Int8Linear, quantize_int8
from .invariant import BATCH_INVARIANT, Float32Linear, batch_invariant_attention, make_batch_invariant
from .kernels import BF16_KERNEL_MAX_ROWS, INT8_KERNEL_MAX_ROWS, bf16_kernel_native, decode_kernels_available
from .loading import (
    DTYPE_CHOICES,
    QUANTIZE_CHOICES,
    add_model_arguments,
    in_a_thread_of_its_own,
    load_model,
    load_model_from_args,
    model_source,
    native_bf16,
    prepare_for_serving,
    resolve_dtype,
)
from .lora import LoraLinear, adapter_rows, attach_lora_adapters, parse_lora_adapters, use_adapter
from .packed import PackedLinear, pack_bf16, packing_available
from .params import (
    DEFAULT_MAX_NEW_TOKENS,
    MAX_STOP_SEQUENCES,
    MAX_TOP_N_TOKENS,
    GenerationParameters,
    Limits,
    context_length,
    control_parameters,
    prepare_request,
    sampling_defaults,
)
from .prefix_cache import PrefixCache
from .request import active_generations
from .streaming import (
    LOGPROB_FLOOR,
    STREAM_TIMEOUT_S,
    AsyncTokenStreamer,
    CancelCriteria,
    FrequencyPresencePenaltyLogitsProcessor,
    MinNewTokensLogitsProcessor,
    StopSequenceCriteria,
    Token,
    TokenChooser,
    TokenStreamer,
    next_text,
    request_processors,
    sampling_warpers,
    token_texts,
)
from .threads import Generation, generate_text

__all__ = [
    "AsyncTokenStreamer", "BATCH_INVARIANT", "BF16_KERNEL_MAX_ROWS", "BatchedGeneration", "CancelCriteria",
    "ContextShift", "DEFAULT_MAX_NEW_TOKENS", "DTYPE_CHOICES", "Engine", "Float32Linear",
    "FrequencyPresencePenaltyLogitsProcessor", "Generation", "GenerationError", "GenerationParameters",
    "INT8_KERNEL_MAX_ROWS", "Int8Linear", "LOGPROB_FLOOR", "Limits", "LoraLinear", "MAX_STOP_SEQUENCES",
    "MAX_TOP_N_TOKENS", "MinNewTokensLogitsProcessor", "Overloaded", "PackedLinear", "PrefixCache", "QUANTIZE_CHOICES",
    "STREAM_TIMEOUT_S", "StopSequenceCriteria", "Token", "TokenChooser", "TokenStreamer", "ValidationError",
    "active_generations", "adapter_rows", "add_context_shift_arguments", "add_model_arguments", "attach_lora_adapters",
    "batch_invariant_attention", "bf16_kernel_native", "compile_decode", "context_length", "context_shift_from_args",
    "control_parameters", "decode_kernels_available", "generate_text", "in_a_thread_of_its_own", "load_model",
    "load_model_from_args", "make_batch_invariant", "model_source", "native_bf16", "next_text", "pack_bf16",
    "packing_available", "parse_lora_adapters", "prepare_for_serving", "prepare_request", "quantize_int8",
    "request_processors", "resolve_dtype", "sampling_defaults", "sampling_warpers", "token_texts", "use_adapter",
]
