"""Text generation shared by the Gradio Space, the TGI-protocol server and `victorian-gpt generate`.

One request is one `model.generate()` call running in a background thread:

- its tokens come back one by one through `TokenStreamer`, a `TextIteratorStreamer` (skip_prompt, timeout) that
  queues a `Token` (id, text, logprob, special) per generated token instead of word-sized text chunks;
- `CancelCriteria`, a `StoppingCriteria` watching a `threading.Event`, ends `generate()` at the next token once the
  consumer goes away (Stop button, closed tab, dropped HTTP connection), so no orphaned thread keeps computing;
- an exception inside `generate()` is carried to the consumer and raised there, never turned into a hang.

Sampling draws from a per-request, seeded `torch.Generator` (`TokenChooser`), not the process-wide RNG: concurrent
requests do not disturb one another and a seed reproduces its text. Parameters are checked by `prepare_request`
with Text Generation Inference's rules and messages, so the three front ends reject the same values the same way.

This file is uploaded to the Space beside `app.py`: it imports only torch and transformers (models are loaded
through the Auto classes with `trust_remote_code=True`, as a downloaded Space would).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import random
import threading
import time
from dataclasses import dataclass, field

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TextIteratorStreamer,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

logger = logging.getLogger("victorian_gpt.serving")

DEFAULT_MAX_NEW_TOKENS = 100  # what TGI generates when a request names no `max_new_tokens`
MAX_STOP_SEQUENCES = 4  # TGI's `--max-stop-sequences` default
STREAM_TIMEOUT_S = 120.0  # longest wait for the next token before the consumer gives up


class ValidationError(ValueError):
    """A request parameter is out of range. The message follows TGI's wording (HTTP 422, error_type validation)."""


class GenerationError(RuntimeError):
    """`generate()` failed inside the background thread (TGI's error_type `generation`)."""


# ----------------------------------------------------------------------------------------------------------------
# Loading


def load_model(model_id: str, *, device: str | None = None, dtype: str | torch.dtype | None = None, revision=None):
    """(model, tokenizer) from a Hub id or a local export folder, through the Auto classes with remote code."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(model_id, trust_remote_code=True, revision=revision)
    model = AutoModelForCausalLM.from_pretrained(model_id, trust_remote_code=True, revision=revision, dtype=dtype)
    model.to(device).eval()
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
# The pieces handed to generate()


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
    """The last logits processor: picks the next token itself and records its log-probability.

    Greedy requests take the argmax; sampling requests draw with `torch.multinomial` from this request's own
    `torch.Generator`, exactly as `generate(do_sample=True)` would from the global one. It returns scores in which only
    the chosen token survives, and `generate()` (run with do_sample=False) takes that token.
    """

    def __init__(self, do_sample: bool, seed: int | None):
        self.do_sample = do_sample
        self.seed = seed
        self.generator: torch.Generator | None = None
        self.logprobs: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.do_sample:
            if self.generator is None:
                self.generator = torch.Generator(device=scores.device).manual_seed(self.seed)
            probs = torch.softmax(scores, dim=-1)
            next_tokens = torch.multinomial(probs, num_samples=1, generator=self.generator)
        else:
            next_tokens = scores.argmax(dim=-1, keepdim=True)
        logprobs = torch.log_softmax(scores.float(), dim=-1).gather(-1, next_tokens)
        self.logprobs.append(float(logprobs[0, 0]))
        return torch.full_like(scores, -float("inf")).scatter_(-1, next_tokens, 0.0)


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

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        generated = input_ids[0, self.prompt_length :][-self.tail :]
        text = self.tokenizer.decode(generated, skip_special_tokens=True)
        self.matched = next((s for s in self.stop if text.endswith(s)), None)
        return torch.full((input_ids.shape[0],), self.matched is not None, dtype=torch.bool, device=input_ids.device)


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
        self.is_last = lambda token_id, count: False  # set by `Generation`, which knows the stopping rules

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
# One request


_ids = itertools.count(1)
_active: set["Generation"] = set()
_active_lock = threading.Lock()


def active_generations() -> int:
    """How many `generate()` threads are computing right now in this process."""
    with _active_lock:
        return len(_active)


@dataclass(eq=False)  # identity semantics: instances live in a set
class Generation:
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
        self.cancelled = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.tokens: list[Token] = []
        self.chooser = TokenChooser(self.params.do_sample, self.params.seed)
        self.cancel_criteria = CancelCriteria(self.cancelled)
        streamer_cls = AsyncTokenStreamer if self.asynchronous else TokenStreamer
        self.streamer = streamer_cls(self.tokenizer, self.chooser, timeout=self.timeout)
        self.stop_criteria = (
            StopSequenceCriteria(self.tokenizer, self.params.stop, len(self.input_ids)) if self.params.stop else None
        )
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        # The streamer sees each token after the stopping criteria ran on it, so it can tell the last one.
        self.streamer.is_last = lambda token_id, count: (
            count >= self.params.max_new_tokens
            or token_id in self.eos_ids
            or (self.stop_criteria is not None and self.stop_criteria.matched is not None)
        )
        self.started = time.perf_counter()
        with _active_lock:
            _active.add(self)
        self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self.thread.start()

    # -- the background thread
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
        warpers = LogitsProcessorList()
        if p.do_sample:  # the same warpers, in the same order, as generate(do_sample=True) builds
            if p.temperature != 1.0:
                warpers.append(TemperatureLogitsWarper(p.temperature))
            if p.top_k:
                warpers.append(TopKLogitsWarper(p.top_k))
            if p.top_p is not None and p.top_p < 1.0:
                warpers.append(TopPLogitsWarper(p.top_p))
            if p.typical_p is not None and p.typical_p < 1.0:
                warpers.append(TypicalLogitsWarper(p.typical_p))
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
        finally:
            self.done.set()
            with _active_lock:
                _active.discard(self)
            n = len(self.streamer.token_ids)
            state = "failed" if self.error else ("cancelled" if self.cancel_criteria.fired else "finished")
            logger.info(
                "%s %s after %d/%d tokens in %.2fs", self.name, state, n, self.params.max_new_tokens,
                time.perf_counter() - self.started,
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
        """Cancel and wait for the thread to end."""
        self.cancel()
        self.thread.join(timeout)

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


def generate_text(model, tokenizer, prompt: str, *, limits: Limits | None = None, **parameters) -> str:
    """Blocking convenience: the continuation of `prompt` (parameters as in `prepare_request`)."""
    limits = limits or Limits.for_model(model, tokenizer)
    input_ids, params = prepare_request(tokenizer, prompt, limits, **parameters)
    generation = Generation(model, tokenizer, input_ids, params)
    for _ in generation:
        pass
    return generation.generated_text
