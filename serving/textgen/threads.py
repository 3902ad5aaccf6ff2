"""One request, one `model.generate()` thread: the CLI's one-shot mode, the server's `--engine threads`, and what a
`pipeline` user would run."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig, StoppingCriteriaList

from .lora import use_adapter
from .params import GenerationParameters, Limits, check_adapter, prepare_request
from .request import _eos_ids, _ids, _Request, close_at_exit
from .streaming import STREAM_TIMEOUT_S, CancelCriteria, request_processors

logger = logging.getLogger("victorian_gpt.serving")


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
        check_adapter(self.params.adapter_id, tuple(getattr(self.model, "lora_adapters", None) or ()))
        self.eos_ids = _eos_ids(self.model)  # (none with `ignore_eos`: _setup clears them)
        self._setup(self.tokenizer, self.input_ids, self.params, self.timeout, self.asynchronous, self.name)
        self.cancel_criteria = CancelCriteria(self.cancelled)
        # The streamer sees each token after the stopping criteria ran on it, so it can tell the last one.
        self.streamer.is_last = lambda token_id, count: (
            count >= self.params.max_new_tokens
            or token_id in self.eos_ids
            or (self.stop_criteria is not None and self.stop_criteria.matched is not None)
        )
        self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self.thread.start()
        close_at_exit(self)

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
            repetition_penalty=1.0,  # in request_processors, with the other processors, in the engine's order
            eos_token_id=sorted(self.eos_ids),  # [] with `ignore_eos` (None would mean "the model's")
            bos_token_id=defaults.bos_token_id,
            pad_token_id=defaults.pad_token_id if defaults.pad_token_id is not None else defaults.eos_token_id,
        )
        warpers = request_processors(p)
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
            with use_adapter(self.model, self.params.adapter_id):  # its LoRA adapter, in this thread only
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
