"""The batching engine: many concurrent requests, one background thread that owns the model (see `Engine`)."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import inspect
import logging
import threading
import time

import torch
import torch.nn.functional as F

from .context_shift import ContextShift, rotary_frequencies, shift_cache
from .errors import GenerationError, Overloaded, ValidationError
from .kv_cache import _cache_layers, _left_pad, _new_cache, _release_freed_memory
from .lora import adapter_rows
from .params import GenerationParameters, Limits, check_adapter, context_length
from .prefix_cache import PrefixCache
from .request import _eos_ids, _ids, _Request, close_at_exit
from .streaming import STREAM_TIMEOUT_S, request_processors

logger = logging.getLogger("victorian_gpt.serving")


class BatchedGeneration(_Request):
    """A request computed by an `Engine` (see `Engine.submit`); the same consumer interface as `Generation`."""

    def __init__(self, engine: "Engine", input_ids: list[int], params: GenerationParameters, *,
                 timeout: float | None = STREAM_TIMEOUT_S, asynchronous: bool = False, name: str | None = None):
        self.engine, self.model, self.tokenizer = engine, engine.model, engine.tokenizer
        self.input_ids, self.params, self.timeout = list(input_ids), params, timeout
        self.name = name or f"gen-{next(_ids)}"
        self.eos_ids = engine.eos_ids  # (none with `ignore_eos`: _setup clears them)
        self.adapter_id = params.adapter_id  # its LoRA adapter (None: the base), which its rows take in every step
        self._setup(self.tokenizer, self.input_ids, params, timeout, asynchronous, self.name)
        self.finishing = False  # set by the engine just before it hands over the last token
        self.streamer.is_last = lambda token_id, count: self.finishing
        # the engine's side: prompt + generated ids, this request's logits processors, its prefill progress
        self.ids = list(self.input_ids)
        # the tokens its KV cache holds (or is being prefilled with), at positions 0..; the last one, once decoding,
        # is the token the next step feeds in. The prompt at first; a context shift keeps a part (context_shift.py)
        self.context = list(self.input_ids)
        self.shifts = 0  # context shifts so far
        self.processors = request_processors(params)
        self.prefilled = 0  # context tokens already in `cache`
        self.cached_tokens = 0  # of those, how many came from the prefix cache
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

    With `prefix_cache_tokens` > 0, a prompt whose opening (whole blocks of `prefix_cache_block_size` tokens) was
    prefilled before starts from a copy of that KV and prefills only the rest (see prefix_cache.py); under the same
    LoRA adapter only, since an adapter's KV is its own.

    A model loaded with LoRA adapters (`load_model(lora_adapters=...)`, textgen.lora) serves each request with the
    adapter it names (`GenerationParameters.adapter_id`, None: the base): its prefill runs under that adapter, and in
    a decode step every row takes its own request's adapter, the base's rows none, all in the same forward pass.

    A batch-invariant model (`load_model`'s default, textgen.invariant) decodes each row with the bits it would get
    alone; the engine then prefills every prompt in pieces of exactly those blocks, cut at the same places whatever
    else is running, so the prompt's KV has the same bits computed in any step or taken from the prefix cache.

    The model contract: `model(input_ids [B, T], attention_mask [B, past + T], position_ids [B, T], cache=Cache,
    use_cache=True, logits_to_keep=1)` returning `.logits`; any transformers causal LM taking a `DynamicCache`
    (ours, `GPT2LMHeadModel`, Llama...) fits.
    """

    def __init__(self, model, tokenizer, *, limits: Limits | None = None, max_concurrent_requests: int = 128,
                 max_batch_size: int = 32, max_batch_total_tokens: int | None = None,
                 max_batch_prefill_tokens: int = 256, waiting_served_ratio: float = 0.3, max_waiting_tokens: int = 20,
                 timeout: float | None = STREAM_TIMEOUT_S, name: str = "engine", prefix_cache_tokens: int = 0,
                 prefix_cache_block_size: int = 64, context_shift: ContextShift | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.limits = limits or Limits.for_model(model, tokenizer)
        self.window = context_length(model, tokenizer)  # positions the model has: a longer context shifts
        self.context_shift = (context_shift or ContextShift.for_model(model)).check(self.window)
        self.rotary = rotary_frequencies(model)  # None: a shift encodes the kept tokens again
        self.max_concurrent_requests = int(max_concurrent_requests)
        self.max_batch_size = int(max_batch_size)
        self.max_batch_total_tokens = int(max_batch_total_tokens or max(16384, self.limits.max_total_tokens))
        # (a sequence's KV never outgrows the model's context: a longer one shifts, so it reserves at most that)
        self.max_batch_prefill_tokens = int(max_batch_prefill_tokens)
        self.waiting_served_ratio = float(waiting_served_ratio)
        self.max_waiting_tokens = int(max_waiting_tokens)
        self.timeout = timeout
        for key in ("max_concurrent_requests", "max_batch_size", "max_batch_prefill_tokens"):
            if getattr(self, key) < 1:
                raise ValueError(f"`{key}` must be at least 1, got {getattr(self, key)}")
        if self.waiting_served_ratio < 0 or self.max_waiting_tokens < 0:
            raise ValueError("`waiting_served_ratio` and `max_waiting_tokens` must not be negative")
        if self.max_batch_total_tokens < min(self.limits.max_total_tokens, self.window):
            raise ValueError(f"`max_batch_total_tokens` ({self.max_batch_total_tokens}) must be >= `max_total_tokens` "
                             f"({self.limits.max_total_tokens}) or the model's context ({self.window}), or no request "
                             "of full length could ever run")
        self.prefix_cache = PrefixCache(int(prefix_cache_tokens), int(prefix_cache_block_size))
        self.batch_invariant = bool(getattr(model, "batch_invariant", False))
        # the prefill's pieces: a cache block, or an even part of one within the step's budget
        self.prefill_piece = min(self.prefix_cache.block_size, self.max_batch_prefill_tokens)
        if self.batch_invariant and self.prefix_cache.block_size % self.prefill_piece:
            raise ValueError(f"`max_batch_prefill_tokens` ({self.max_batch_prefill_tokens}) must divide the prefix "
                             f"cache's block size ({self.prefix_cache.block_size}) or exceed it")
        self.prefilled_tokens = 0  # prompt tokens computed so far (not counting those the prefix cache served)
        self.eos_ids = _eos_ids(model)
        self.adapters = tuple(getattr(model, "lora_adapters", None) or ())  # the LoRA adapters requests may name
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._cond = threading.Condition()
        self._incoming: collections.deque[BatchedGeneration] = collections.deque()
        self._calls: collections.deque = collections.deque()  # (function, future): other work on the model
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
        close_at_exit(self)

    # -- the callers' side
    def submit(self, input_ids: list[int], params: GenerationParameters, *, asynchronous: bool = False,
               timeout: float | None = None, name: str | None = None) -> BatchedGeneration:
        """Queue a validated request (see `prepare_request`); iterate the result for its `Token`s.

        Raises `Overloaded` when `max_concurrent_requests` are already in flight, `ValidationError` for an adapter the
        model does not have. `asynchronous=True` (from a running event loop) gives a request to iterate with
        `async for`.
        """
        check_adapter(params.adapter_id, self.adapters)
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

    def call(self, function) -> concurrent.futures.Future:
        """Run `function()` on the engine's thread between two steps (the model's other work, such as a prompt's
        log-probabilities for TGI's `decoder_input_details` or OpenAI's `echo`); returns its future. One thread does
        all of the model's computing: GNU OpenMP keeps worker threads for every thread that runs parallel work, and
        beyond one pool per core it stops letting them wait actively, which makes every parallel region slower."""
        future = concurrent.futures.Future()
        with self._cond:
            if self._closed:
                raise GenerationError("the engine is shut down")
            self._calls.append((function, future))
            self._cond.notify()
        return future

    @contextlib.contextmanager
    def held(self):
        """Hold the engine between two steps while the block runs: the requests submitted in it are all taken at the
        next step, in the order submitted, so a batch is made up exactly (tests, benchmarks) rather than by timing."""
        with self._cond:  # the engine thread takes this lock before each step; submit() re-enters it
            yield self

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
            "batch_invariant": self.batch_invariant,
            **self.prefix_cache.stats(),
        }

    def metrics(self) -> dict:
        """Counters and gauges for /metrics (Prometheus): the batch, the queue and the prefix cache."""
        return {
            "requests_in_flight": self.in_flight(),
            "batch_current_size": len(self._running),
            "queue_size": len(self._waiting) + len(self._incoming),
            "decode_steps_total": self.steps,
            "prefill_tokens_total": self.prefilled_tokens,
            "prefix_cache_hits_total": self.prefix_cache.hits,
            "prefix_cache_lookups_total": self.prefix_cache.lookups,
            "prefix_cache_tokens_served_total": self.prefix_cache.tokens_served,
            "prefix_cache_evictions_total": self.prefix_cache.evictions,
            "prefix_cache_size_tokens": self.prefix_cache.size_tokens,
            "prefix_cache_bytes": self.prefix_cache.bytes,
            "prefix_cache_max_tokens": self.prefix_cache.max_tokens,
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
        return bool(self._closed or self._incoming or self._calls or self._waiting or self._prefilling
                    or self._running)

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
                calls, self._calls = self._calls, collections.deque()
            for function, future in calls:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(function())
                    except BaseException as error:  # carried to the caller
                        future.set_exception(error)
            try:
                with torch.inference_mode():
                    self._step()
            except BaseException as error:  # a fault of the step outside any one request: fail those in flight
                logger.exception("engine step failed")
                self._fail_all(error)
        with self._cond:
            self._waiting.extend(self._incoming)
            self._incoming.clear()
            calls, self._calls = self._calls, collections.deque()
        for _, future in calls:
            if future.set_running_or_notify_cancel():
                future.set_exception(GenerationError("the engine was shut down"))
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
            need = min(len(generation.input_ids) + generation.params.max_new_tokens, self.window)
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

    def _forward(self, input_ids, attention_mask, position_ids, cache, adapters):
        """The last position's logits of each row; row i under LoRA adapter `adapters[i]` (None: the base)."""
        device = self.model.device
        with adapter_rows(self.model, adapters) if self.adapters else contextlib.nullcontext():
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
                if generation.cache is None:  # its first chunk: start from the longest cached prefix, if any
                    found, generation.cache = self.prefix_cache.lookup(generation.context, self.model.config,
                                                                       adapter=generation.adapter_id)
                    generation.prefilled = generation.cached_tokens = found
                    if generation.cache is None:
                        generation.cache = _new_cache(self.model.config)
                start = generation.prefilled
                end = start + budget
                if self.batch_invariant:  # one piece of the grid, never cut by what others used of the budget
                    end = (start // self.prefill_piece + 1) * self.prefill_piece
                    if end - start > budget:
                        break  # the next step's
                chunk = generation.context[start:end]
                logits = self._forward([chunk], torch.ones(1, start + len(chunk), dtype=torch.long),
                                       [list(range(start, start + len(chunk)))], generation.cache,
                                       [generation.adapter_id])
                generation.prefilled += len(chunk)
                self.prefilled_tokens += len(chunk)
                budget -= len(chunk)
                if generation.prefilled < len(generation.context):
                    continue  # the rest of this prompt in the next step
                self._prefilling.pop(0)
                self._remember_prompt(generation)
                if not self._emit(generation, self._choose(generation, logits)):
                    self._join(generation)
            except Exception as error:
                if generation in self._prefilling:
                    self._prefilling.remove(generation)
                generation.cache = None
                self._fail(generation, error)

    def _remember_prompt(self, generation: BatchedGeneration):
        """Store a fully prefilled prompt's blocks in the prefix cache. A failure here costs the cache an entry, never
        the request (the cache's index is only changed once every copy was made)."""
        if not self.prefix_cache.enabled:
            return
        try:
            self.prefix_cache.insert(generation.context, generation.cache, adapter=generation.adapter_id)
        except Exception:
            logger.exception("%s: could not store its prompt in the prefix cache", generation.name)

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
        full = [i for i, g in enumerate(self._running) if len(g.context) > self.window]
        if full:
            self._shift(full)
            if not self._running:
                return
        rows = self._running
        mask = torch.cat([self._mask, torch.ones(len(rows), 1, dtype=torch.long)], dim=1)
        try:
            logits = self._forward([[g.context[-1]] for g in rows], mask, [[len(g.context) - 1] for g in rows],
                                   self._cache, [g.adapter_id for g in rows])
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
        generation.context.append(token)
        generated = len(generation.ids) - len(generation.input_ids)
        if generation.first_token_at is None:
            generation.first_token_at = time.perf_counter()
        last = (
            token in generation.eos_ids
            or generated >= generation.params.max_new_tokens
            or (generation.stop_criteria is not None
                and generation.stop_criteria.matches(generation.ids[len(generation.input_ids) :]))
        )
        generation.finishing = last
        if last:  # its slot is free before the client sees its last token (and may send its next request at once)
            self._release(generation)
        generation.streamer.put(torch.tensor([token]))
        if last:
            generation._finished("finished")
        return last

    def _shift(self, rows: list[int]):
        """Shift the contexts of the batch's rows `rows`, whose windows are full (context_shift.py): each leaves the
        batch with its own KV cache, which drops what the shift drops and rotates the rest back (rotary positions),
        and joins again; or (other positions) it prefills the kept context afresh, which also picks its next token."""
        detached = []
        for i in rows:
            generation = self._running[i]
            first = int(self._mask[i].long().argmax())  # its first real column (left padding before it)
            cache = _new_cache(self.model.config)
            for mine, theirs in zip(_cache_layers(cache), _cache_layers(self._cache)):
                mine.keys, mine.values = theirs.keys[i : i + 1, :, first:], theirs.values[i : i + 1, :, first:]
                mine.device, mine.is_initialized = mine.keys.device, True
            detached.append((generation, cache))
        self._remove_rows(rows)
        for generation, cache in detached:
            try:
                generation.shifts += 1
                kept = self.context_shift.apply(generation.context)
                if self.rotary is not None:
                    shift_cache(_cache_layers(cache), self.context_shift, len(generation.context) - 1, self.rotary)
                    generation.context, generation.cache = kept, cache
                    self._join(generation)
                else:  # encoded again from position 0: back to prefill, first in line
                    generation.context, generation.cache, generation.prefilled = kept, None, 0
                    generation.state = "prefill"
                    self._prefilling.insert(0, generation)
            except Exception as error:
                generation.cache = None
                self._fail(generation, error)

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

    def _release(self, generation: BatchedGeneration):
        """Give back what `generation` held: its reserved cache tokens and its place among the requests in flight."""
        self._reserved -= generation.reserved
        generation.reserved = 0
        with self._cond:
            self._in_flight -= 1

    def _finish(self, generation: BatchedGeneration, state: str):
        self._release(generation)
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
