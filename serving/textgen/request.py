"""What both ways of running a request share: its state and its consumer's side (iterate for `Token`s, sync or async;
`cancel()`; after the iteration `generated_text`, `generated_tokens`, `finish_reason`, `tokens`)."""

from __future__ import annotations

import asyncio
import atexit
import itertools
import logging
import queue
import threading
import time
import weakref

from .errors import GenerationError
from .streaming import AsyncTokenStreamer, StopSequenceCriteria, Token, TokenChooser, TokenStreamer

logger = logging.getLogger("victorian_gpt.serving")


_ids = itertools.count(1)
_active: set = set()
_active_lock = threading.Lock()


_workers: weakref.WeakSet = weakref.WeakSet()  # what computes in a background thread: engines, generate() threads


def close_at_exit(worker):
    """Have `worker.close()` run when the interpreter exits. A daemon thread still inside torch when Python finalises
    is stopped as it takes the GIL back, in C++ that may not unwind, and the process aborts ("terminate called without
    an active exception"); `atexit` runs while such threads still run, so each is stopped and joined there."""
    _workers.add(worker)


@atexit.register
def _close_workers():
    for worker in list(_workers):
        worker.close()


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
        self.chooser = TokenChooser(params.do_sample, params.seed, params.top_n_tokens)
        streamer_cls = AsyncTokenStreamer if asynchronous else TokenStreamer
        self.streamer = streamer_cls(tokenizer, self.chooser, timeout=timeout)
        self.stop_criteria = (StopSequenceCriteria(tokenizer, params.stop, len(input_ids), params.min_new_tokens)
                              if params.stop else None)
        if params.ignore_eos:  # vLLM's ignore_eos: only the length or a stop sequence ends this request
            self.eos_ids = frozenset()
        self.started = time.perf_counter()
        self.finished_at: float | None = None
        self.state = "queued"
        with _active_lock:
            _active.add(self)

    def _finished(self, state: str):
        """Called once by whatever computed the request, when it stops computing (any reason)."""
        self.state = state
        self.finished_at = time.perf_counter()
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
