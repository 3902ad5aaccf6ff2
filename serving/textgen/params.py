"""Request parameters and their validation: Text Generation Inference's rules and messages
(router/src/validation.rs), shared by the Space, the TGI-protocol server and `victorian-gpt generate`, so the three
front ends reject the same values the same way."""

from __future__ import annotations

import random
from dataclasses import dataclass

from transformers import GenerationConfig

from victorian_gpt.utils.modeling import context_length as model_context_length

from .errors import ValidationError

DEFAULT_MAX_NEW_TOKENS = 100  # what TGI generates when a request names no `max_new_tokens`
MAX_STOP_SEQUENCES = 4  # TGI's `--max-stop-sequences` default
MAX_TOP_N_TOKENS = 5  # TGI's `--max-top-n-tokens` default (and OpenAI's largest `logprobs`)


def context_length(model, tokenizer) -> int:
    """Tokens the model can attend to (the tokenizer's `model_max_length` for a config that names none): prompt plus
    generated text must fit in it."""
    return model_context_length(model.config, default=tokenizer.model_max_length)


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


@dataclass(frozen=True)
class Limits:
    """Server-wide limits, named as TGI's launcher flags."""

    max_input_tokens: int
    max_total_tokens: int
    max_stop_sequences: int = MAX_STOP_SEQUENCES
    max_top_n_tokens: int = MAX_TOP_N_TOKENS
    adapters: tuple[str, ...] = ()  # the LoRA adapters a request may name (`adapter_id`), as `load_model` loaded them

    @classmethod
    def for_model(cls, model, tokenizer, max_input_tokens=None, max_total_tokens=None,
                  max_top_n_tokens=MAX_TOP_N_TOKENS) -> Limits:
        window = context_length(model, tokenizer)
        total = max_total_tokens or window
        limits = cls(max_input_tokens=max_input_tokens or min(total, window) - 1, max_total_tokens=total,
                     max_top_n_tokens=int(max_top_n_tokens),
                     adapters=tuple(getattr(model, "lora_adapters", None) or ()))
        if limits.max_top_n_tokens < 0:
            raise ValueError(f"need max_top_n_tokens >= 0, got {limits.max_top_n_tokens}")
        if not 0 < limits.max_input_tokens < limits.max_total_tokens:
            raise ValueError(f"need 0 < max_input_tokens ({limits.max_input_tokens}) < max_total_tokens ({total})")
        if limits.max_input_tokens >= window:  # generation goes on past the window (the context shifts); a prompt fits
            raise ValueError(f"max_input_tokens ({limits.max_input_tokens}) must be below the model's context "
                             f"({window}): a longer prompt is cut from the left with `truncate`")
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
    top_n_tokens: int = 0  # TGI's: the most likely tokens of each step, with their log-probabilities
    frequency_penalty: float = 0.0  # OpenAI's: minus penalty x times a token was generated, on its logit
    presence_penalty: float = 0.0  # OpenAI's: minus penalty once a token was generated, on its logit
    min_new_tokens: int = 0  # transformers' (vLLM's `min_tokens`): no end of sequence nor stop sequence before
    eos_token_id: tuple[int, ...] = ()  # what `min_new_tokens` holds back (the model's end-of-sequence ids)
    ignore_eos: bool = False  # vLLM's: generate through end-of-sequence tokens, up to `max_new_tokens`
    adapter_id: str | None = None  # TGI's: the LoRA adapter to decode with (`Limits.adapters`); None: the base model


def check_adapter(adapter_id: str | None, adapters: tuple[str, ...]) -> None:
    """The ValidationError for a request naming an adapter the server does not have (None: the base, always)."""
    if adapter_id is not None and adapter_id not in adapters:
        raise ValidationError(f"unknown adapter '{adapter_id}'; this server has: {', '.join(adapters)}" if adapters
                              else f"unknown adapter '{adapter_id}'; this server has none")


def prepare_request(
    tokenizer,
    inputs: str | list[int],
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
    top_n_tokens: int | None = None,
    frequency_penalty: float | None = None,
    presence_penalty: float | None = None,
    min_new_tokens: int | None = None,
    ignore_eos: bool = False,
    eos_token_id: int | list[int] | None = None,
    adapter_id: str | None = None,
) -> tuple[list[int], GenerationParameters]:
    """Check a request with TGI's rules and tokenize its prompt. Returns (prompt token ids, parameters).

    `inputs` is the prompt's text, or its token ids. As in TGI, giving any of temperature/top_k/top_p/typical_p
    turns sampling on; a prompt longer than `max_input_tokens` is rejected unless `truncate` is given, in which case
    only its last `truncate` tokens are kept. Every front end (TGI's routes, OpenAI's, the Space, the CLI) maps its
    own names onto these, so a value is refused the same way whichever route it came by. `eos_token_id` (default:
    the tokenizer's) is what `min_new_tokens` holds back. `adapter_id` (TGI's) names one of `limits.adapters`, the
    LoRA adapters loaded with the model (None: the base model).
    """
    check_adapter(adapter_id, limits.adapters)
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
    if top_n_tokens is not None and not 0 <= top_n_tokens <= limits.max_top_n_tokens:
        raise ValidationError(
            f"`top_n_tokens` must be >= 0 and <= {limits.max_top_n_tokens}. Given: {top_n_tokens}"
        )
    for name, value in (("frequency_penalty", frequency_penalty), ("presence_penalty", presence_penalty)):
        if value is not None and not -2.0 <= value <= 2.0:
            raise ValidationError(f"`{name}` must be >= -2.0 and <= 2.0")
    if min_new_tokens is not None and min_new_tokens < 0:
        raise ValidationError(f"`min_new_tokens` must be >= 0. Given: {min_new_tokens}")
    if not isinstance(inputs, str):  # token ids
        inputs = list(inputs)
        vocabulary = len(tokenizer)
        bad = next((i for i in inputs if not isinstance(i, int) or not 0 <= i < vocabulary), None)
        if bad is not None:
            raise ValidationError(f"`inputs` token ids must be in [0, {vocabulary}). Given: {bad}")
    if not inputs:
        raise ValidationError("`inputs` cannot be empty")
    if truncate is not None and not 0 < truncate <= limits.max_input_tokens:
        raise ValidationError(
            f"`truncate` must be strictly positive and less than {limits.max_input_tokens}. Given: {truncate}"
        )

    ids = tokenizer(inputs, add_special_tokens=False, verbose=False)["input_ids"] if isinstance(inputs, str) else inputs
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
    if min_new_tokens and min_new_tokens > max_new_tokens:
        raise ValidationError(
            f"`min_new_tokens` must be <= `max_new_tokens`. Given: {min_new_tokens} `min_new_tokens` and "
            f"{max_new_tokens} `max_new_tokens`"
        )
    if eos_token_id is None:
        eos_token_id = tokenizer.eos_token_id
    eos = tuple(eos_token_id if isinstance(eos_token_id, (list, tuple, set, frozenset)) else [eos_token_id])

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
        top_n_tokens=int(top_n_tokens or 0),
        frequency_penalty=float(frequency_penalty or 0.0),
        presence_penalty=float(presence_penalty or 0.0),
        min_new_tokens=int(min_new_tokens or 0),
        eos_token_id=tuple(sorted(int(i) for i in eos if i is not None)) if min_new_tokens else (),
        ignore_eos=bool(ignore_eos),
        adapter_id=adapter_id,
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
