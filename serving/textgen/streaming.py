"""Sampling and streaming: what one request needs to choose its tokens and hand them to its consumer.

Sampling draws from a per-request, seeded `torch.Generator` (`TokenChooser`), not the process-wide RNG: concurrent
requests do not disturb one another and a seed reproduces its text. The warpers are transformers' own, in
`generate()`'s order. Each request has its own `TokenStreamer` (a `TextIteratorStreamer` that queues one `Token` --
id, text, logprob, special -- per generated token), fed through `put`/`end` by `generate()` or by the engine.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import torch
from transformers import (  # noqa: I001
    LogitsProcessor,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    StoppingCriteria,
    TemperatureLogitsWarper,
    TextIteratorStreamer,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from .params import GenerationParameters

STREAM_TIMEOUT_S = 120.0  # longest wait for the next token before the consumer gives up
LOGPROB_FLOOR = -9999.0  # what an impossible token's log-probability (-inf) is reported as, as vLLM writes it


@dataclass
class Token:
    """One generated token, as TGI streams it."""

    id: int
    text: str
    logprob: float | None
    special: bool
    last: bool = False  # generation ends with this token (length, end of sequence or stop sequence)
    top_tokens: list[Token] = field(default_factory=list)  # the request's `top_n_tokens` most likely, best first

    def to_dict(self) -> dict:
        return {"id": self.id, "text": self.text, "logprob": self.logprob, "special": self.special}


class TokenChooser(LogitsProcessor):
    """Picks the next token and records its log-probability.

    Greedy requests take the argmax; sampling requests draw with `torch.multinomial` from this request's own
    `torch.Generator`, exactly as `generate(do_sample=True)` would from the global one. As the last logits processor
    of `generate()` it returns scores in which only the chosen token survives, and `generate()` (run with
    do_sample=False) takes that token; the engine calls `choose` directly.
    """

    def __init__(self, do_sample: bool, seed: int | None, top_n_tokens: int = 0):
        self.do_sample = do_sample
        self.seed = seed
        self.top_n_tokens = top_n_tokens
        self.generator: torch.Generator | None = None
        self.logprobs: list[float] = []
        self.top_tokens: list[list[tuple[int, float]]] = []  # per step, with top_n_tokens: (id, logprob), best first

    def choose(self, scores: torch.FloatTensor) -> torch.LongTensor:
        """The next token of each row of `scores` (batch, vocab), as a (batch, 1) tensor."""
        if self.do_sample:
            if self.generator is None:
                self.generator = torch.Generator(device=scores.device).manual_seed(self.seed)
            probs = torch.softmax(scores, dim=-1)
            next_tokens = torch.multinomial(probs, num_samples=1, generator=self.generator)
        else:
            next_tokens = scores.argmax(dim=-1, keepdim=True)
        logprobs = torch.log_softmax(scores.float(), dim=-1)
        self.logprobs.append(float(logprobs.gather(-1, next_tokens)[0, 0]))
        if self.top_n_tokens:
            values, ids = logprobs[0].topk(min(self.top_n_tokens, logprobs.shape[-1]))
            self.top_tokens.append(list(zip(ids.tolist(), values.tolist())))
        return next_tokens

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        next_tokens = self.choose(scores)
        return torch.full_like(scores, -float("inf")).scatter_(-1, next_tokens, 0.0)


def request_processors(params: GenerationParameters) -> LogitsProcessorList:
    """What is applied to a request's logits before `TokenChooser` picks (by the engine, and by `generate()` in a
    `Generation`), in `generate()`'s order: the repetition penalty, OpenAI's frequency and presence penalties,
    `min_new_tokens`, then the sampling warpers."""
    processors = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if params.frequency_penalty or params.presence_penalty:
        processors.append(FrequencyPresencePenaltyLogitsProcessor(params.frequency_penalty, params.presence_penalty))
    if params.min_new_tokens and params.eos_token_id and not params.ignore_eos:
        processors.append(MinNewTokensLogitsProcessor(params.min_new_tokens, params.eos_token_id))
    processors.extend(sampling_warpers(params))
    return processors


class _GeneratedTokensProcessor(LogitsProcessor):
    """A logits processor of one request that looks at the tokens it generated: the ids it is first called with are
    the prompt (the engine and `generate()` both call a request's processors once per new token, prompt + generated
    ids each time), so it needs no prompt length up front."""

    prompt_length: int | None = None

    def generated(self, input_ids: torch.LongTensor) -> torch.LongTensor:
        if self.prompt_length is None:
            self.prompt_length = input_ids.shape[-1]
        return input_ids[:, self.prompt_length :]


class FrequencyPresencePenaltyLogitsProcessor(_GeneratedTokensProcessor):
    """OpenAI's `frequency_penalty` and `presence_penalty`, as vLLM applies them: each logit is lowered by
    `frequency_penalty` times the number of times its token was generated so far, and by `presence_penalty` once it
    was generated at all (negative values encourage repeats). The prompt is not counted."""

    def __init__(self, frequency_penalty: float, presence_penalty: float):
        self.frequency_penalty, self.presence_penalty = float(frequency_penalty), float(presence_penalty)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = self.generated(input_ids).to(scores.device)
        if generated.shape[-1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(-1, generated.clamp(max=scores.shape[-1] - 1),
                                                       torch.ones_like(generated, dtype=scores.dtype))
        return scores - counts * self.frequency_penalty - (counts > 0).to(scores.dtype) * self.presence_penalty


class MinNewTokensLogitsProcessor(_GeneratedTokensProcessor):
    """transformers' `MinNewTokensLengthLogitsProcessor` (vLLM's `min_tokens`): the end-of-sequence tokens are
    impossible until `min_new_tokens` tokens were generated."""

    def __init__(self, min_new_tokens: int, eos_token_id: tuple[int, ...]):
        self.min_new_tokens, self.eos_token_id = int(min_new_tokens), list(eos_token_id)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.generated(input_ids).shape[-1] >= self.min_new_tokens:
            return scores
        scores = scores.clone()
        scores[:, [i for i in self.eos_token_id if i < scores.shape[-1]]] = -float("inf")
        return scores


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
    """TGI's stop sequences: stop once the generated text ends with one of them (not before `min_new_tokens`)."""

    def __init__(self, tokenizer, stop: tuple[str, ...], prompt_length: int, min_new_tokens: int = 0):
        self.tokenizer, self.stop, self.prompt_length = tokenizer, stop, prompt_length
        self.min_new_tokens = min_new_tokens
        self.tail = max(len(s) for s in stop) + 8  # every token is at least one character, bar a few byte pieces
        self.matched: str | None = None

    def matches(self, generated: list[int]) -> bool:
        """Whether the generated token ids so far end with a stop sequence (remembered in `matched`)."""
        if len(generated) < self.min_new_tokens:
            self.matched = None
            return False
        text = self.tokenizer.decode(generated[-self.tail :], skip_special_tokens=True)
        self.matched = next((s for s in self.stop if text.endswith(s)), None)
        return self.matched is not None

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        stopped = self.matches(input_ids[0, self.prompt_length :].tolist())
        return torch.full((input_ids.shape[0],), stopped, dtype=torch.bool, device=input_ids.device)


def next_text(tokenizer, ids: list[int], prefix_offset: int, read_offset: int) -> tuple[str, int, int]:
    """Incremental detokenisation, as TGI does it: the text the last of `ids` adds (decode a short window, keep what
    is new), or "" while it ends inside a multi-byte character that the next token completes. Returns the text and
    the two offsets to pass with the next token."""
    prefix = tokenizer.decode(ids[prefix_offset:read_offset])
    text = tokenizer.decode(ids[prefix_offset:])
    if len(text) > len(prefix) and not text.endswith("\ufffd"):
        return text[len(prefix) :], read_offset, len(ids)
    return "", prefix_offset, read_offset


def token_texts(tokenizer, ids: list[int]) -> list[str]:
    """Each token's text, as `TokenStreamer` gives it (the pieces join into the decoded text)."""
    texts, prefix_offset, read_offset = [], 0, 0
    for n in range(1, len(ids) + 1):
        piece, prefix_offset, read_offset = next_text(tokenizer, ids[:n], prefix_offset, read_offset)
        texts.append(piece)
    return texts


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
        self.first_token_at: float | None = None  # time.perf_counter() when the first token was handed over
        self.is_last = lambda token_id, count: False  # set by the owner, which knows the stopping rules
        self.last_emitted = False  # the last token was handed over: its consumer may be done with the request

    def put(self, value: torch.Tensor):
        if value.dim() > 1:
            if value.shape[0] > 1:
                raise ValueError("TokenStreamer only supports batch size 1")
            value = value[0]
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        for token_id in value.tolist():
            step = len(self.token_ids)
            logprob = self.chooser.logprobs[step] if len(self.chooser.logprobs) > step else None
            top = self.chooser.top_tokens[step] if len(self.chooser.top_tokens) > step else ()
            self.token_ids.append(token_id)
            last = self.is_last(token_id, len(self.token_ids))
            self.last_emitted = self.last_emitted or last
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
            top_tokens = [Token(i, self.tokenizer.decode([i]), max(lp, LOGPROB_FLOOR), i in self.special_ids)
                          for i, lp in top]
            self._emit(Token(token_id, self._next_text(), logprob, token_id in self.special_ids, last, top_tokens))

    def _next_text(self) -> str:
        piece, self.prefix_offset, self.read_offset = next_text(self.tokenizer, self.token_ids, self.prefix_offset,
                                                                self.read_offset)
        return piece

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
