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
int8 activations (per token, computed at each call), multiplied by PyTorch's integer GEMM with int32 accumulation.

This file is uploaded to the Space beside `app.py`: it imports only torch and transformers (models are loaded
through the Auto classes with `trust_remote_code=True`, as a downloaded Space would).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import queue
import random
import threading
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (  # noqa: I001
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TextIteratorStreamer,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)
from transformers.cache_utils import DynamicLayer

logger = logging.getLogger("victorian_gpt.serving")

DEFAULT_MAX_NEW_TOKENS = 100  # what TGI generates when a request names no `max_new_tokens`
MAX_STOP_SEQUENCES = 4  # TGI's `--max-stop-sequences` default
STREAM_TIMEOUT_S = 120.0  # longest wait for the next token before the consumer gives up


class ValidationError(ValueError):
    """A request parameter is out of range. The message follows TGI's wording (HTTP 422, error_type validation)."""


class GenerationError(RuntimeError):
    """The computation failed (in `generate()` or the engine's step): TGI's error_type `generation`."""


class Overloaded(RuntimeError):
    """More requests in flight than `max_concurrent_requests` (TGI answers 429, error_type `overloaded`)."""


# ----------------------------------------------------------------------------------------------------------------
# Loading


QUANTIZE_CHOICES = ("int8",)


def load_model(model_id: str, *, device: str | None = None, dtype: str | torch.dtype | None = None, revision=None,
               quantize: str | None = None):
    """(model, tokenizer) from a Hub id or a local export folder, through the Auto classes with remote code.

    `quantize="int8"` replaces the model's linear layers (GPT-2 `Conv1D` or `nn.Linear`, the output head included)
    with `Int8Linear` after loading: the CPU path, about a third of fp32's bytes per token.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if quantize not in (None, *QUANTIZE_CHOICES):
        raise ValueError(f"unknown quantization {quantize!r}; choose one of {', '.join(QUANTIZE_CHOICES)}")
    if quantize and torch.device(device).type != "cpu":
        raise ValueError(f"--quantize {quantize} is the CPU path; on {device} use --dtype bfloat16 instead")
    if isinstance(dtype, str) and dtype != "auto":
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r} (e.g. float32, bfloat16, float16)")
        dtype = getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(model_id, trust_remote_code=True, revision=revision)
    model = AutoModelForCausalLM.from_pretrained(model_id, trust_remote_code=True, revision=revision, dtype=dtype)
    model.to(device).eval()
    if quantize == "int8":
        quantize_int8(model)
    return model, tokenizer


def context_length(model, tokenizer) -> int:
    """Tokens the model can attend to: prompt plus generated text must fit in it."""
    return int(getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length)


def sampling_defaults(generation_config: GenerationConfig) -> dict:
    """The model's own sampling defaults (`generation_config.json`), as the Space's and CLI's starting values."""
    return dict(
        max_new_tokens=generation_config.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
        do_sample=bool(generation_config.do_sample),
        temperature=generation_config.temperature if generation_config.temperature is not None else 1.0,
        top_k=generation_config.top_k or 0,
        top_p=generation_config.top_p if generation_config.top_p is not None else 1.0,
        repetition_penalty=generation_config.repetition_penalty or 1.0,
    )


# ----------------------------------------------------------------------------------------------------------------
# Validation (TGI's rules: router/src/validation.rs)


@dataclass(frozen=True)
class Limits:
    """Server-wide limits, named as TGI's launcher flags."""

    max_input_tokens: int
    max_total_tokens: int
    max_stop_sequences: int = MAX_STOP_SEQUENCES

    @classmethod
    def for_model(cls, model, tokenizer, max_input_tokens=None, max_total_tokens=None) -> "Limits":
        total = max_total_tokens or context_length(model, tokenizer)
        limits = cls(max_input_tokens=max_input_tokens or total - 1, max_total_tokens=total)
        if not 0 < limits.max_input_tokens < limits.max_total_tokens <= context_length(model, tokenizer):
            raise ValueError(
                f"need 0 < max_input_tokens ({limits.max_input_tokens}) < max_total_tokens ({total}) "
                f"<= the model's context ({context_length(model, tokenizer)})"
            )
        return limits


@dataclass(frozen=True)
class GenerationParameters:
    """A validated request: exactly what `generate()` will be asked to do."""

    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    typical_p: float | None = None
    repetition_penalty: float = 1.0
    seed: int | None = None  # set whenever do_sample is (drawn at random if the request gave none), as TGI reports it
    stop: tuple[str, ...] = ()


def prepare_request(
    tokenizer,
    inputs: str,
    limits: Limits,
    *,
    max_new_tokens: int | None = None,
    do_sample: bool = False,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    typical_p: float | None = None,
    repetition_penalty: float | None = None,
    seed: int | None = None,
    stop: list[str] | tuple[str, ...] | None = None,
    truncate: int | None = None,
) -> tuple[list[int], GenerationParameters]:
    """Check a request with TGI's rules and tokenize its prompt. Returns (prompt token ids, parameters).

    As in TGI, giving any of temperature/top_k/top_p/typical_p turns sampling on; a prompt longer than
    `max_input_tokens` is rejected unless `truncate` is given, in which case only its last `truncate` tokens are kept.
    """
    sampling = do_sample or any(v is not None for v in (temperature, top_k, top_p, typical_p))
    if temperature is not None and temperature <= 0:
        raise ValidationError("`temperature` must be strictly positive")
    if repetition_penalty is not None and repetition_penalty <= 0:
        raise ValidationError("`repetition_penalty` must be strictly positive")
    if top_p is not None and not 0 < top_p < 1:
        raise ValidationError("`top_p` must be > 0.0 and < 1.0")
    if typical_p is not None and not 0 < typical_p < 1:
        raise ValidationError("`typical_p` must be > 0.0 and < 1.0")
    if top_k is not None and top_k <= 0:
        raise ValidationError("`top_k` must be strictly positive")
    if max_new_tokens is not None and max_new_tokens <= 0:
        raise ValidationError("`max_new_tokens` must be strictly positive")
    stop = tuple(stop or ())
    if len(stop) > limits.max_stop_sequences:
        raise ValidationError(f"`stop` supports up to {limits.max_stop_sequences} stop sequences. Given: {len(stop)}")
    if any(not s for s in stop):
        raise ValidationError("`stop` sequences cannot be empty")
    if seed is not None and not 0 <= seed < 2**64:
        raise ValidationError("`seed` must be an integer in [0, 2^64)")
    if not inputs:
        raise ValidationError("`inputs` cannot be empty")
    if truncate is not None and not 0 < truncate <= limits.max_input_tokens:
        raise ValidationError(
            f"`truncate` must be strictly positive and less than {limits.max_input_tokens}. Given: {truncate}"
        )

    ids = tokenizer(inputs, add_special_tokens=False)["input_ids"]
    input_length = min(len(ids), truncate) if truncate is not None else len(ids)
    if max_new_tokens is None:  # TGI: whatever fits, up to its default length
        max_new_tokens = max(1, min(DEFAULT_MAX_NEW_TOKENS, limits.max_total_tokens - input_length))
    if input_length + max_new_tokens > limits.max_total_tokens:
        raise ValidationError(
            f"`inputs` tokens + `max_new_tokens` must be <= {limits.max_total_tokens}. "
            f"Given: {input_length} `inputs` tokens and {max_new_tokens} `max_new_tokens`"
        )
    if input_length > limits.max_input_tokens:
        raise ValidationError(f"`inputs` must have less than {limits.max_input_tokens} tokens. Given: {input_length}")
    if input_length == 0:
        raise ValidationError("`inputs` cannot be empty")

    params = GenerationParameters(
        max_new_tokens=int(max_new_tokens),
        do_sample=bool(sampling),
        temperature=float(temperature) if temperature is not None else 1.0,
        top_k=int(top_k) if top_k is not None else None,
        top_p=float(top_p) if top_p is not None else None,
        typical_p=float(typical_p) if typical_p is not None else None,
        repetition_penalty=float(repetition_penalty) if repetition_penalty is not None else 1.0,
        seed=(int(seed) if seed is not None else random.getrandbits(63)) if sampling else None,
        stop=stop,
    )
    return ids[len(ids) - input_length :], params


def control_parameters(
    *, max_new_tokens: int, do_sample: bool, temperature: float, top_k: int, top_p: float,
    repetition_penalty: float, seed: int | None = None,
) -> dict:
    """The Space's and the CLI's controls as `prepare_request` arguments.

    Top-k 0 and top-p 1 mean "filter off" (TGI's "not given"); greedy decoding leaves the sampling controls out, since
    TGI would read any of them as a request to sample.
    """
    common = dict(max_new_tokens=int(max_new_tokens), repetition_penalty=float(repetition_penalty))
    if not do_sample:
        return dict(common, do_sample=False)
    return dict(
        common,
        do_sample=True,
        temperature=float(temperature),
        top_k=int(top_k) if top_k else None,
        top_p=float(top_p) if top_p < 1 else None,
        seed=int(seed) if seed is not None else None,
    )


# ----------------------------------------------------------------------------------------------------------------
# int8 (the CPU path)


class Int8Weight(torch.Tensor):
    """How `Int8Linear.weight` shows its int8 matrix: a tensor subclass, as torchao's quantized weights are, so code
    that special-cases plain float weights (the model's fast CPU output head) calls the module instead."""


class Int8Linear(nn.Module):
    """A linear layer with int8 weights, computed with int8 activations and int32 accumulation (`torch._int_mm`).

    Weights are quantized once, symmetrically per output channel; activations at each call, symmetrically per token
    (per row), so a sequence's result does not depend on what else is in the batch: the integer product is exact.
    Measured on a 2-core CPU, weight-only int8 was slower than fp32 in eager PyTorch (torchao dequantizes the whole
    matrix per call; `torch._weight_int8pack_mm` has no fast kernel there), while this reads 4x fewer bytes than fp32
    through oneDNN's VNNI kernels: see bench/bench_int8.py.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        """`weight` is (out_features, in_features), as `nn.Linear` stores it."""
        super().__init__()
        weight = weight.detach().float()
        self.out_features, self.in_features = weight.shape
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
        qweight = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        self.register_buffer("qweight", qweight.contiguous())  # (out, in): its .t() is the column-major B of _int_mm
        self.register_buffer("weight_scale", scale)
        self.bias = nn.Parameter(bias.detach().float().clone(), requires_grad=False) if bias is not None else None

    @classmethod
    def from_module(cls, module: nn.Module) -> "Int8Linear":
        from transformers.pytorch_utils import Conv1D

        if isinstance(module, Conv1D):  # GPT-2's layout: weight (in, out)
            return cls(module.weight.t(), module.bias)
        return cls(module.weight, module.bias)

    @property
    def weight(self) -> torch.Tensor:
        return self.qweight.as_subclass(Int8Weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Few, simple ops: at one token per step each op's fixed cost counts as much as its arithmetic.
        shape = x.shape
        rows = x.reshape(-1, self.in_features).float()
        if rows.device.type == "cpu":
            row_scale = torch.linalg.vector_norm(rows, ord=float("inf"), dim=1, keepdim=True).div_(127).clamp_(min=1e-12)
            qrows = torch.round(rows / row_scale).to(torch.int8)  # |rows / row_scale| <= 127 by construction
            out = torch._int_mm(qrows, self.qweight.t()).float().mul_(row_scale)
        else:  # no fast integer GEMM for small batches elsewhere: dequantize (int8 is meant for the CPU)
            out = rows @ (self.qweight.float() * self.weight_scale[:, None]).t()
            out = out if self.bias is None else out + self.bias.float()
            return out.reshape(*shape[:-1], self.out_features).to(x.dtype)
        out = out.mul_(self.weight_scale) if self.bias is None else torch.addcmul(self.bias, out, self.weight_scale)
        return out.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every `nn.Linear` and GPT-2 `Conv1D` of `model` (the output head too) with `Int8Linear`, in place.

    Embeddings stay in floating point; a head tied to the input embedding gets its own int8 copy. Returns `model`.
    """
    from transformers.pytorch_utils import Conv1D

    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in (nn.Linear, Conv1D):
                setattr(parent, name, Int8Linear.from_module(child))
                replaced += 1
    if not replaced:
        raise ValueError("quantize int8: the model has no nn.Linear or Conv1D layer to quantize")
    model.quantization = "int8"
    return model


# ----------------------------------------------------------------------------------------------------------------
# The pieces of one request


@dataclass
class Token:
    """One generated token, as TGI streams it."""

    id: int
    text: str
    logprob: float | None
    special: bool
    last: bool = False  # generation ends with this token (length, end of sequence or stop sequence)

    def to_dict(self) -> dict:
        return {"id": self.id, "text": self.text, "logprob": self.logprob, "special": self.special}


class TokenChooser(LogitsProcessor):
    """Picks the next token and records its log-probability.

    Greedy requests take the argmax; sampling requests draw with `torch.multinomial` from this request's own
    `torch.Generator`, exactly as `generate(do_sample=True)` would from the global one. As the last logits processor
    of `generate()` it returns scores in which only the chosen token survives, and `generate()` (run with
    do_sample=False) takes that token; the engine calls `choose` directly.
    """

    def __init__(self, do_sample: bool, seed: int | None):
        self.do_sample = do_sample
        self.seed = seed
        self.generator: torch.Generator | None = None
        self.logprobs: list[float] = []

    def choose(self, scores: torch.FloatTensor) -> torch.LongTensor:
        """The next token of each row of `scores` (batch, vocab), as a (batch, 1) tensor."""
        if self.do_sample:
            if self.generator is None:
                self.generator = torch.Generator(device=scores.device).manual_seed(self.seed)
            probs = torch.softmax(scores, dim=-1)
            next_tokens = torch.multinomial(probs, num_samples=1, generator=self.generator)
        else:
            next_tokens = scores.argmax(dim=-1, keepdim=True)
        logprobs = torch.log_softmax(scores.float(), dim=-1).gather(-1, next_tokens)
        self.logprobs.append(float(logprobs[0, 0]))
        return next_tokens

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        next_tokens = self.choose(scores)
        return torch.full_like(scores, -float("inf")).scatter_(-1, next_tokens, 0.0)


def sampling_warpers(params: GenerationParameters) -> LogitsProcessorList:
    """The logits warpers of a sampling request, the same and in the same order as `generate(do_sample=True)` builds."""
    warpers = LogitsProcessorList()
    if params.do_sample:
        if params.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k:
            warpers.append(TopKLogitsWarper(params.top_k))
        if params.top_p is not None and params.top_p < 1.0:
            warpers.append(TopPLogitsWarper(params.top_p))
        if params.typical_p is not None and params.typical_p < 1.0:
            warpers.append(TypicalLogitsWarper(params.typical_p))
    return warpers


class CancelCriteria(StoppingCriteria):
    """Stops `generate()` at the next token once `event` is set (the consumer went away)."""

    def __init__(self, event: threading.Event):
        self.event = event
        self.fired = False  # whether it is what ended the generation

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        self.fired = self.event.is_set()
        return torch.full((input_ids.shape[0],), self.fired, dtype=torch.bool, device=input_ids.device)


class StopSequenceCriteria(StoppingCriteria):
    """TGI's stop sequences: stop once the generated text ends with one of them."""

    def __init__(self, tokenizer, stop: tuple[str, ...], prompt_length: int):
        self.tokenizer, self.stop, self.prompt_length = tokenizer, stop, prompt_length
        self.tail = max(len(s) for s in stop) + 8  # every token is at least one character, bar a few byte pieces
        self.matched: str | None = None

    def matches(self, generated: list[int]) -> bool:
        """Whether the generated token ids so far end with a stop sequence (remembered in `matched`)."""
        text = self.tokenizer.decode(generated[-self.tail :], skip_special_tokens=True)
        self.matched = next((s for s in self.stop if text.endswith(s)), None)
        return self.matched is not None

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        stopped = self.matches(input_ids[0, self.prompt_length :].tolist())
        return torch.full((input_ids.shape[0],), stopped, dtype=torch.bool, device=input_ids.device)


class TokenStreamer(TextIteratorStreamer):
    """A `TextIteratorStreamer` that queues one `Token` per generated token rather than word-sized text.

    Each token's text is found by incremental detokenisation (decode a short window, keep what is new), holding back
    a token that ends inside a multi-byte character until the next one completes it, as TGI does.
    """

    def __init__(self, tokenizer, chooser: TokenChooser, timeout: float | None = STREAM_TIMEOUT_S):
        super().__init__(tokenizer, skip_prompt=True, timeout=timeout)
        self.chooser = chooser
        self.special_ids = set(tokenizer.all_special_ids)
        self.token_ids: list[int] = []
        self.prefix_offset = self.read_offset = 0
        self.is_last = lambda token_id, count: False  # set by the owner, which knows the stopping rules

    def put(self, value: torch.Tensor):
        if value.dim() > 1:
            if value.shape[0] > 1:
                raise ValueError("TokenStreamer only supports batch size 1")
            value = value[0]
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        for token_id in value.tolist():
            logprob = self.chooser.logprobs[len(self.token_ids)] if len(self.chooser.logprobs) > len(self.token_ids) else None
            self.token_ids.append(token_id)
            last = self.is_last(token_id, len(self.token_ids))
            self._emit(Token(token_id, self._next_text(), logprob, token_id in self.special_ids, last))

    def _next_text(self) -> str:
        ids = self.token_ids
        prefix = self.tokenizer.decode(ids[self.prefix_offset : self.read_offset])
        text = self.tokenizer.decode(ids[self.prefix_offset :])
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(ids)
            return text[len(prefix) :]
        return ""

    def end(self):
        self._emit(self.stop_signal)

    def _emit(self, item):
        self.text_queue.put(item, timeout=self.timeout)


class AsyncTokenStreamer(TokenStreamer):
    """`TokenStreamer` for asyncio consumers (the HTTP server): iterate it with `async for`."""

    def __init__(self, tokenizer, chooser: TokenChooser, timeout: float | None = STREAM_TIMEOUT_S):
        super().__init__(tokenizer, chooser, timeout)
        self.loop = asyncio.get_running_loop()
        self.async_queue: asyncio.Queue = asyncio.Queue()

    def _emit(self, item):
        self.loop.call_soon_threadsafe(self.async_queue.put_nowait, item)

    def __aiter__(self):
        return self

    async def __anext__(self) -> Token:
        item = await asyncio.wait_for(self.async_queue.get(), self.timeout)
        if item is self.stop_signal:
            raise StopAsyncIteration
        return item


# ----------------------------------------------------------------------------------------------------------------
# What both ways of running a request share: the consumer's side


_ids = itertools.count(1)
_active: set = set()
_active_lock = threading.Lock()


def active_generations() -> int:
    """How many requests are being computed right now in this process (`generate()` threads and engine sequences)."""
    with _active_lock:
        return len(_active)


class _Request:
    """A request's state and its consumer's interface; subclasses compute it (`Generation`, `Engine`)."""

    def _setup(self, tokenizer, input_ids, params, timeout, asynchronous, name):
        self.cancelled = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.tokens: list[Token] = []
        self.chooser = TokenChooser(params.do_sample, params.seed)
        streamer_cls = AsyncTokenStreamer if asynchronous else TokenStreamer
        self.streamer = streamer_cls(tokenizer, self.chooser, timeout=timeout)
        self.stop_criteria = StopSequenceCriteria(tokenizer, params.stop, len(input_ids)) if params.stop else None
        self.started = time.perf_counter()
        self.state = "queued"
        with _active_lock:
            _active.add(self)

    def _finished(self, state: str):
        """Called once by whatever computed the request, when it stops computing (any reason)."""
        self.state = state
        self.done.set()
        with _active_lock:
            _active.discard(self)
        logger.info(
            "%s %s after %d/%d tokens in %.2fs", self.name, state, len(self.streamer.token_ids),
            self.params.max_new_tokens, time.perf_counter() - self.started,
        )
        try:
            self.streamer.end()
        except Exception:  # the consumer's loop is gone (server shutdown): nobody left to tell
            pass

    # -- the consumer
    def __iter__(self):
        ended = False
        try:
            for token in self.streamer:
                self.tokens.append(token)
                yield token
            ended = True
        except queue.Empty as error:
            raise GenerationError(f"no token within {self.timeout}s") from error
        finally:
            if not ended:
                self.cancel()  # the consumer stopped early (closed, timed out): stop computing
        self._raise_error()

    async def __aiter__(self):
        ended = False
        try:
            async for token in self.streamer:
                self.tokens.append(token)
                yield token
            ended = True
        except asyncio.TimeoutError as error:
            raise GenerationError(f"no token within {self.timeout}s") from error
        finally:
            if not ended:
                self.cancel()
        self._raise_error()

    def _raise_error(self):
        if self.error is not None:
            raise GenerationError(f"{type(self.error).__name__}: {self.error}") from self.error

    def cancel(self):
        self.cancelled.set()

    def close(self, timeout: float | None = 10.0):
        """Cancel and wait until the computation has stopped."""
        self.cancel()
        self.done.wait(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- results (after the iteration)
    @property
    def generated_tokens(self) -> int:
        return len(self.tokens)

    @property
    def generated_text(self) -> str:
        return self.tokenizer.decode([t.id for t in self.tokens], skip_special_tokens=True)

    @property
    def finish_reason(self) -> str:
        """TGI's finish reasons: `stop_sequence`, `eos_token` or `length`."""
        if self.stop_criteria is not None and self.stop_criteria.matched is not None:
            return "stop_sequence"
        if self.tokens and self.tokens[-1].id in self.eos_ids:
            return "eos_token"
        return "length"


def _eos_ids(model) -> set[int]:
    eos = model.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [eos]) - {None}


# ----------------------------------------------------------------------------------------------------------------
# One request, one generate() thread


@dataclass(eq=False)  # identity semantics: instances live in a set
class Generation(_Request):
    """One request's `generate()` in a background thread. Iterate it (sync or async) for `Token`s.

    `cancel()` (or leaving the `with` block / closing the iterator) stops the computation at the next token.
    After the iteration ends: `generated_text`, `generated_tokens`, `finish_reason`, `tokens`.
    """

    model: object
    tokenizer: object
    input_ids: list[int]
    params: GenerationParameters
    timeout: float | None = STREAM_TIMEOUT_S
    asynchronous: bool = False
    name: str = field(default_factory=lambda: f"gen-{next(_ids)}")

    def __post_init__(self):
        self._setup(self.tokenizer, self.input_ids, self.params, self.timeout, self.asynchronous, self.name)
        self.cancel_criteria = CancelCriteria(self.cancelled)
        self.eos_ids = _eos_ids(self.model)
        # The streamer sees each token after the stopping criteria ran on it, so it can tell the last one.
        self.streamer.is_last = lambda token_id, count: (
            count >= self.params.max_new_tokens
            or token_id in self.eos_ids
            or (self.stop_criteria is not None and self.stop_criteria.matched is not None)
        )
        self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self.thread.start()

    def _generate_kwargs(self) -> dict:
        p, model = self.params, self.model
        device = model.device
        input_ids = torch.tensor([self.input_ids], dtype=torch.long, device=device)
        defaults = model.generation_config
        config = GenerationConfig(
            max_new_tokens=p.max_new_tokens,
            # TokenChooser does the choosing; generate() only takes the one token it leaves, greedily. Every
            # sampling field is spelt out so that none is filled in from the model's sampling defaults.
            do_sample=False,
            temperature=1.0,
            top_k=None,
            top_p=1.0,
            repetition_penalty=p.repetition_penalty,
            eos_token_id=defaults.eos_token_id,
            bos_token_id=defaults.bos_token_id,
            pad_token_id=defaults.pad_token_id if defaults.pad_token_id is not None else defaults.eos_token_id,
        )
        warpers = sampling_warpers(p)
        warpers.append(self.chooser)
        criteria = StoppingCriteriaList([self.cancel_criteria])
        if self.stop_criteria is not None:
            criteria.append(self.stop_criteria)
        return dict(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            generation_config=config,
            logits_processor=warpers,
            stopping_criteria=criteria,
            streamer=self.streamer,
        )

    def _run(self):
        try:
            self.model.generate(**self._generate_kwargs())
        except BaseException as error:  # carried to the consumer, raised there
            self.error = error
            logger.exception("%s: generate() failed", self.name)
        self._finished("failed" if self.error else ("cancelled" if self.cancel_criteria.fired else "finished"))

    def close(self, timeout: float | None = 10.0):
        """Cancel and wait for the thread to end."""
        self.cancel()
        self.thread.join(timeout)


def generate_text(model, tokenizer, prompt: str, *, limits: Limits | None = None, **parameters) -> str:
    """Blocking convenience: the continuation of `prompt` (parameters as in `prepare_request`)."""
    limits = limits or Limits.for_model(model, tokenizer)
    input_ids, params = prepare_request(tokenizer, prompt, limits, **parameters)
    generation = Generation(model, tokenizer, input_ids, params)
    for _ in generation:
        pass
    return generation.generated_text


# ----------------------------------------------------------------------------------------------------------------
# Many requests, one batching engine


class BatchedGeneration(_Request):
    """A request computed by an `Engine` (see `Engine.submit`); the same consumer interface as `Generation`."""

    def __init__(self, engine: "Engine", input_ids: list[int], params: GenerationParameters, *,
                 timeout: float | None = STREAM_TIMEOUT_S, asynchronous: bool = False, name: str | None = None):
        self.engine, self.model, self.tokenizer = engine, engine.model, engine.tokenizer
        self.input_ids, self.params, self.timeout = list(input_ids), params, timeout
        self.name = name or f"gen-{next(_ids)}"
        self.eos_ids = engine.eos_ids
        self._setup(self.tokenizer, self.input_ids, params, timeout, asynchronous, self.name)
        self.finishing = False  # set by the engine just before it hands over the last token
        self.streamer.is_last = lambda token_id, count: self.finishing
        # the engine's side: prompt + generated ids, this request's logits processors, its prefill progress
        self.ids = list(self.input_ids)
        self.processors = LogitsProcessorList()
        if params.repetition_penalty != 1.0:  # generate() puts it before the warpers
            self.processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
        self.processors.extend(sampling_warpers(params))
        self.prefilled = 0  # prompt tokens already in `cache`
        self.cache = None  # this request's own KV cache until it joins the batch
        self.reserved = 0  # tokens of the batch budget it holds (prompt + max_new_tokens) once admitted
        self.first_token_at: float | None = None

    def cancel(self):
        super().cancel()
        self.engine._wake()

    @property
    def time_to_first_token(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started


class Engine:
    """One batching engine for every request of a process: `submit` requests, iterate what it returns.

    A background thread runs the model. Each step it (1) drops the sequences whose consumer went away, (2) admits
    waiting requests as TGI's router does: at once when nothing runs, otherwise when at least
    `floor(running * waiting_served_ratio)` are waiting or `max_waiting_tokens` decode steps went by since the last
    admission, within `max_batch_size` sequences and `max_batch_total_tokens` (each sequence counted at its prompt
    plus `max_new_tokens`), (3) prefills admitted prompts, at most `max_batch_prefill_tokens` tokens in the step, each
    prompt alone (no padding) in its own KV cache, choosing its first token from the last position's logits and then
    merging its cache into the batch's, and (4) decodes one token for every running sequence in one forward pass: the
    batch is left-padded to its longest sequence, with a 2-D attention mask (1 = real token) and each row's own
    position ids. Sequences that end (length, EOS, stop sequence) or are cancelled leave the batch (their rows are
    selected out of the cache, and columns that became padding everywhere are trimmed).

    The model contract: `model(input_ids [B, T], attention_mask [B, past + T], position_ids [B, T], cache=Cache,
    use_cache=True, logits_to_keep=1)` returning `.logits`; any transformers causal LM taking a `DynamicCache`
    (ours, `GPT2LMHeadModel`, Llama...) fits.
    """

    def __init__(self, model, tokenizer, *, limits: Limits | None = None, max_concurrent_requests: int = 128,
                 max_batch_size: int = 32, max_batch_total_tokens: int | None = None,
                 max_batch_prefill_tokens: int = 256, waiting_served_ratio: float = 0.3, max_waiting_tokens: int = 20,
                 timeout: float | None = STREAM_TIMEOUT_S, name: str = "engine"):
        self.model, self.tokenizer = model, tokenizer
        self.limits = limits or Limits.for_model(model, tokenizer)
        self.max_concurrent_requests = int(max_concurrent_requests)
        self.max_batch_size = int(max_batch_size)
        self.max_batch_total_tokens = int(max_batch_total_tokens or max(16384, self.limits.max_total_tokens))
        self.max_batch_prefill_tokens = int(max_batch_prefill_tokens)
        self.waiting_served_ratio = float(waiting_served_ratio)
        self.max_waiting_tokens = int(max_waiting_tokens)
        self.timeout = timeout
        for key in ("max_concurrent_requests", "max_batch_size", "max_batch_prefill_tokens"):
            if getattr(self, key) < 1:
                raise ValueError(f"`{key}` must be at least 1, got {getattr(self, key)}")
        if self.waiting_served_ratio < 0 or self.max_waiting_tokens < 0:
            raise ValueError("`waiting_served_ratio` and `max_waiting_tokens` must not be negative")
        if self.max_batch_total_tokens < self.limits.max_total_tokens:
            raise ValueError(f"`max_batch_total_tokens` ({self.max_batch_total_tokens}) must be >= `max_total_tokens` "
                             f"({self.limits.max_total_tokens}), or no request of full length could ever run")
        self.eos_ids = _eos_ids(model)
        params = __import__("inspect").signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._cond = threading.Condition()
        self._incoming: collections.deque[BatchedGeneration] = collections.deque()
        self._in_flight = 0  # submitted and not finished (guarded by _cond)
        self._closed = False
        # engine thread only:
        self._waiting: collections.deque[BatchedGeneration] = collections.deque()
        self._prefilling: list[BatchedGeneration] = []
        self._running: list[BatchedGeneration] = []  # row i of the batch's cache and mask
        self._cache = None
        self._mask: torch.Tensor | None = None  # (rows, cached length): 1 = real token, 0 = left padding
        self._reserved = 0
        self._steps_since_admission = 0
        self.steps = 0  # decode steps so far (for tests and benchmarks)
        self.peak_batch_size = 0  # the most sequences decoded together so far
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    # -- the callers' side
    def submit(self, input_ids: list[int], params: GenerationParameters, *, asynchronous: bool = False,
               timeout: float | None = None, name: str | None = None) -> BatchedGeneration:
        """Queue a validated request (see `prepare_request`); iterate the result for its `Token`s.

        Raises `Overloaded` when `max_concurrent_requests` are already in flight. `asynchronous=True` (from a running
        event loop) gives a request to iterate with `async for`.
        """
        if len(input_ids) + params.max_new_tokens > self.limits.max_total_tokens:
            raise ValidationError(f"`inputs` tokens + `max_new_tokens` must be <= {self.limits.max_total_tokens}. "
                                  f"Given: {len(input_ids)} `inputs` tokens and {params.max_new_tokens} `max_new_tokens`")
        with self._cond:
            if self._closed:
                raise GenerationError("the engine is shut down")
            if self._in_flight >= self.max_concurrent_requests:
                raise Overloaded("Model is overloaded")
            self._in_flight += 1
        try:
            generation = BatchedGeneration(self, input_ids, params, asynchronous=asynchronous, name=name,
                                           timeout=self.timeout if timeout is None else timeout)
        except BaseException:
            with self._cond:
                self._in_flight -= 1
            raise
        with self._cond:
            self._incoming.append(generation)
            self._cond.notify()
        return generation

    def in_flight(self) -> int:
        """Requests submitted and not finished (queued, prefilling or decoding)."""
        with self._cond:
            return self._in_flight

    def info(self) -> dict:
        """The batching limits, named as TGI's launcher flags and `/info` fields."""
        return {
            "max_concurrent_requests": self.max_concurrent_requests,
            "max_batch_size": self.max_batch_size,
            "max_batch_total_tokens": self.max_batch_total_tokens,
            "max_batch_prefill_tokens": self.max_batch_prefill_tokens,
            "max_waiting_tokens": self.max_waiting_tokens,
            "waiting_served_ratio": self.waiting_served_ratio,
        }

    def close(self, timeout: float | None = 30.0):
        """Stop the engine thread; requests still in flight end with a GenerationError."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _wake(self):
        with self._cond:
            self._cond.notify()

    # -- the engine thread
    def _has_work(self) -> bool:  # under self._cond
        return bool(self._closed or self._incoming or self._waiting or self._prefilling or self._running)

    def _loop(self):
        while True:
            with self._cond:
                idle = not self._has_work()
            if idle:
                _release_freed_memory()
            with self._cond:
                while not self._has_work():
                    self._cond.wait()
                if self._closed:
                    break
                self._waiting.extend(self._incoming)
                self._incoming.clear()
            try:
                with torch.inference_mode():
                    self._step()
            except BaseException as error:  # a fault of the step outside any one request: fail those in flight
                logger.exception("engine step failed")
                self._fail_all(error)
        with self._cond:
            self._waiting.extend(self._incoming)
            self._incoming.clear()
        self._fail_all(GenerationError("the engine was shut down"))

    def _step(self):
        self._drop_cancelled()
        self._admit()
        if self._prefilling:
            self._prefill()
        if self._running:
            self._decode()

    def _drop_cancelled(self):
        for generation in [g for g in self._waiting if g.cancelled.is_set()]:
            self._waiting.remove(generation)
            self._finish(generation, "cancelled")
        for generation in [g for g in self._prefilling if g.cancelled.is_set()]:
            self._prefilling.remove(generation)
            generation.cache = None
            self._finish(generation, "cancelled")
        rows = [i for i, g in enumerate(self._running) if g.cancelled.is_set()]
        if rows:
            leaving = [self._running[i] for i in rows]
            self._remove_rows(rows)
            for generation in leaving:
                self._finish(generation, "cancelled")

    def _admit(self):
        if not self._waiting:
            return
        busy = len(self._running) + len(self._prefilling)
        if busy and len(self._waiting) < int(busy * self.waiting_served_ratio) \
                and self._steps_since_admission < self.max_waiting_tokens:
            return
        admitted = False
        while self._waiting and busy < self.max_batch_size:
            generation = self._waiting[0]
            need = len(generation.input_ids) + generation.params.max_new_tokens
            if self._reserved + need > self.max_batch_total_tokens:
                break
            self._waiting.popleft()
            generation.reserved, self._reserved = need, self._reserved + need
            generation.state = "prefill"
            generation.streamer.put(torch.tensor(generation.input_ids))  # the prompt, skipped as generate() does
            self._prefilling.append(generation)
            busy += 1
            admitted = True
        if admitted:
            self._steps_since_admission = 0

    def _forward(self, input_ids, attention_mask, position_ids, cache):
        device = self.model.device
        return self.model(
            input_ids=torch.tensor(input_ids, dtype=torch.long, device=device),
            attention_mask=attention_mask.to(device),
            position_ids=torch.tensor(position_ids, dtype=torch.long, device=device),
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_kwarg: cache},
        ).logits[:, -1]

    def _prefill(self):
        """Prefill admitted prompts, at most `max_batch_prefill_tokens` tokens this step."""
        budget = self.max_batch_prefill_tokens
        while self._prefilling and budget > 0:
            generation = self._prefilling[0]
            try:
                start = generation.prefilled
                chunk = generation.input_ids[start : start + budget]
                if generation.cache is None:
                    generation.cache = _new_cache(self.model.config)
                logits = self._forward([chunk], torch.ones(1, start + len(chunk), dtype=torch.long),
                                       [list(range(start, start + len(chunk)))], generation.cache)
                generation.prefilled += len(chunk)
                budget -= len(chunk)
                if generation.prefilled < len(generation.input_ids):
                    continue  # the rest of this prompt in the next step
                self._prefilling.pop(0)
                if not self._emit(generation, self._choose(generation, logits)):
                    self._join(generation)
            except Exception as error:
                if generation in self._prefilling:
                    self._prefilling.remove(generation)
                generation.cache = None
                self._fail(generation, error)

    def _join(self, generation: BatchedGeneration):
        """Merge a prefilled request's KV cache into the batch's (left padding to the longer of the two)."""
        new, generation.cache = generation.cache, None
        length = _cache_layers(new)[0].keys.shape[-2]
        generation.state = "decode"
        if not self._running:
            self._cache, self._mask = new, torch.ones(1, length, dtype=torch.long)
        else:
            batch_length = self._mask.shape[1]
            total = max(batch_length, length)
            for mine, theirs in zip(_cache_layers(self._cache), _cache_layers(new)):
                mine.keys = torch.cat([_left_pad(mine.keys, total), _left_pad(theirs.keys, total)])
                mine.values = torch.cat([_left_pad(mine.values, total), _left_pad(theirs.values, total)])
            mask = torch.zeros(1, total, dtype=torch.long)
            mask[:, total - length :] = 1
            self._mask = torch.cat([F.pad(self._mask, (total - batch_length, 0)), mask])
        self._running.append(generation)

    def _decode(self):
        """One token for every running sequence, in one forward pass."""
        rows = self._running
        mask = torch.cat([self._mask, torch.ones(len(rows), 1, dtype=torch.long)], dim=1)
        try:
            logits = self._forward([[g.ids[-1]] for g in rows], mask, [[len(g.ids) - 1] for g in rows], self._cache)
        except Exception as error:
            self._cache = self._mask = None
            self._running = []
            for generation in rows:
                self._fail(generation, error)
            return
        self._mask = mask
        self.steps += 1
        self.peak_batch_size = max(self.peak_batch_size, len(rows))
        self._steps_since_admission += 1
        leaving = []
        for i, generation in enumerate(rows):
            try:
                if self._emit(generation, self._choose(generation, logits[i : i + 1])):
                    leaving.append(i)
            except Exception as error:
                leaving.append(i)
                generation.error = error
        if leaving:
            self._remove_rows(leaving)

    def _choose(self, generation: BatchedGeneration, logits: torch.Tensor) -> int:
        scores = logits.float()
        if generation.processors:
            ids = torch.tensor([generation.ids], dtype=torch.long, device=scores.device)
            scores = generation.processors(ids, scores)
        return int(generation.chooser.choose(scores)[0, 0])

    def _emit(self, generation: BatchedGeneration, token: int) -> bool:
        """Hand `token` to the request's streamer; finish the request if it was its last. Returns whether it was."""
        generation.ids.append(token)
        generated = len(generation.ids) - len(generation.input_ids)
        if generation.first_token_at is None:
            generation.first_token_at = time.perf_counter()
        last = (
            token in self.eos_ids
            or generated >= generation.params.max_new_tokens
            or (generation.stop_criteria is not None
                and generation.stop_criteria.matches(generation.ids[len(generation.input_ids) :]))
        )
        generation.finishing = last
        generation.streamer.put(torch.tensor([token]))
        if last:
            self._finish(generation, "finished")
        return last

    def _remove_rows(self, rows: list[int]):
        """Select the rows that stay out of the batch's cache and mask; trim columns that are padding everywhere."""
        leaving = set(rows)
        keep = [i for i in range(len(self._running)) if i not in leaving]
        for i in sorted(leaving, reverse=True):
            generation = self._running.pop(i)
            if generation.error is not None and not generation.done.is_set():
                self._finish(generation, "failed")
        if not keep:
            self._cache = self._mask = None
            return
        index = torch.tensor(keep, dtype=torch.long)
        mask = self._mask[index]
        first = int(mask.any(dim=0).long().argmax())  # the first column some row still uses
        self._mask = mask[:, first:]
        for layer in _cache_layers(self._cache):
            layer.keys = layer.keys.index_select(0, index.to(layer.keys.device))[:, :, first:]
            layer.values = layer.values.index_select(0, index.to(layer.values.device))[:, :, first:]

    def _finish(self, generation: BatchedGeneration, state: str):
        self._reserved -= generation.reserved
        generation.reserved = 0
        with self._cond:
            self._in_flight -= 1
        generation._finished(state)

    def _fail(self, generation: BatchedGeneration, error: BaseException):
        logger.error("%s: generation failed: %s: %s", generation.name, type(error).__name__, error)
        generation.error = error
        self._finish(generation, "failed")

    def _fail_all(self, error: BaseException):
        everyone = list(self._waiting) + self._prefilling + self._running
        self._waiting.clear()
        self._prefilling, self._running = [], []
        self._cache = self._mask = None
        for generation in everyone:
            if not generation.done.is_set():
                generation.cache = None
                self._fail(generation, error)


class _GrowingLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values are views of buffers with room to grow, so that appending a token
    writes it in place instead of copying the whole cache (`torch.cat`) at every step: in a batch of B sequences of
    L tokens that copy is B x L x layers, and it would grow with each of them. When the engine replaces `keys` and
    `values` (joining, leaving, trimming), the next update copies them into fresh buffers once."""

    def update(self, key_states, value_states, *args, **kwargs):
        keys = self.keys
        if not self.is_initialized or keys is None or keys.numel() == 0:
            return super().update(key_states, value_states, *args, **kwargs)
        length, new = keys.shape[-2], key_states.shape[-2]
        buffers = getattr(self, "_room", None)
        if (buffers is None or buffers[0].data_ptr() != keys.data_ptr() or buffers[0].stride() != keys.stride()
                or buffers[0].shape[:2] != keys.shape[:2] or buffers[0].shape[-2] < length + new):
            capacity = length + new + max(64, length // 2)
            buffers = tuple(torch.empty(*t.shape[:2], capacity, t.shape[-1], dtype=t.dtype, device=t.device)
                            for t in (keys, self.values))
            buffers[0][:, :, :length] = keys
            buffers[1][:, :, :length] = self.values
            self._room = buffers
        buffers[0][:, :, length : length + new] = key_states
        buffers[1][:, :, length : length + new] = value_states
        self.keys, self.values = buffers[0][:, :, : length + new], buffers[1][:, :, : length + new]
        return self.keys, self.values


def _new_cache(config) -> DynamicCache:
    """A `DynamicCache` for `config` whose plain layers grow in place (`_GrowingLayer`)."""
    cache = DynamicCache(config=config)
    layers = getattr(cache, "layers", None) or []
    for i, layer in enumerate(layers):
        if type(layer) is DynamicLayer:
            layers[i] = _GrowingLayer()
    return cache


def _release_freed_memory():
    """Give memory freed by finished sequences back to the OS (glibc keeps it in its arenas otherwise, so a server's
    resident size would stay at its busiest); called when the engine goes idle. A no-op elsewhere than glibc."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


def _cache_layers(cache) -> list:
    """The per-layer objects of a transformers `DynamicCache` (each with `.keys` and `.values`, (B, H, T, D))."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise TypeError(f"the engine needs a transformers >= 4.56 DynamicCache with `.layers`, got {type(cache)}")
    return layers


def _left_pad(states: torch.Tensor, length: int) -> torch.Tensor:
    """Pad (B, H, T, D) states with zeros on the left of T up to `length`."""
    missing = length - states.shape[-2]
    return F.pad(states, (0, 0, missing, 0)) if missing else states
