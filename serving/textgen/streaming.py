"""Sampling and streaming: what one request needs to choose its tokens and hand them to its consumer.

Sampling draws from a per-request, seeded `torch.Generator` (`TokenChooser`), not the process-wide RNG: concurrent
requests do not disturb one another and a seed reproduces its text. The warpers are transformers' own, in
`generate()`'s order. Each request has its own `TokenStreamer` (a `TextIteratorStreamer` that queues one `Token` --
id, text, logprob, special -- per generated token), fed through `put`/`end` by `generate()` or by the engine.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

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


def request_processors(params: GenerationParameters) -> LogitsProcessorList:
    """What the engine applies to a request's logits before `TokenChooser` picks, in `generate()`'s order: the
    repetition penalty, then the sampling warpers."""
    processors = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    processors.extend(sampling_warpers(params))
    return processors


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
