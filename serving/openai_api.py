"""OpenAI's API on the same engine and the same validation as TGI's routes: `POST /v1/completions`,
`POST /v1/chat/completions`, `GET /v1/models`, as the `openai` package, LangChain's `OpenAI`/`ChatOpenAI`, litellm
and lm-eval's `local-completions` speak it (with vLLM's extras).

- Parameters map onto `textgen.prepare_request` (`max_tokens` → `max_new_tokens`, `logprobs` → `top_n_tokens`,
  `min_tokens` → `min_new_tokens`, ...), so a value is refused the same way on every route; the message names the
  OpenAI parameter and the answer is a 400 in OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`).
- `temperature` 0 is greedy decoding, as in TGI's and vLLM's OpenAI routes; otherwise the request samples (default
  temperature 1, as OpenAI's) with its own seeded generator. With `n` > 1 and a `seed`, choice i draws with
  seed + i: the choices differ and the same request gives the same choices again.
- A stop sequence ends the text and is not part of it (as OpenAI and vLLM); a stream holds back text that could be
  the start of one until it is known not to be.
- `echo` puts the prompt before the text, and with `logprobs` the prompt's own log-probabilities first (the first
  token's `null`): one forward pass over the prompt. `max_tokens: 0` with `echo` computes no new token: the prompt
  alone, what lm-eval's loglikelihood requests read.
- Log-probabilities are those of the distribution the token was drawn from (after the penalties and the sampling
  warpers: for greedy decoding, the model's own), as TGI reports them; an impossible token's is -9999.0.
- With LoRA adapters (`--lora-adapters`), `model` picks one, as in vLLM: an adapter's name selects it, the base's
  name (`--served-model-name`, or the model argument) or none selects the base, and `/v1/models` lists the base and
  each adapter (`parent`: the base). An unknown name is then a 404 `model_not_found` naming the models there are;
  without adapters the server has one model and any name is that model, as in TGI.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict

from . import textgen
from .errors import openai_error_body

CHAT_TEMPLATES = Path(__file__).resolve().parent / "chat_templates"
MISSING_CHAT_TEMPLATE = (
    "This model has no chat template: it is a base model, which continues text rather than answering messages. "
    "Use /v1/completions, or start the server with --chat-template FILE (a Jinja template, as transformers' "
    "chat_template; one ships as serving/chat_templates/victorian-opening.jinja)"
)
# How OpenAI's routes name the parameters that prepare_request's messages name as TGI does.
COMPLETION_NAMES = {"inputs": "prompt", "max_new_tokens": "max_tokens", "top_n_tokens": "logprobs",
                    "min_new_tokens": "min_tokens"}
CHAT_NAMES = dict(COMPLETION_NAMES, inputs="messages", top_n_tokens="top_logprobs")
SEED_SPACE = 2**64


class OpenAIError(Exception):
    """A request refused by an OpenAI route: answered as `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.status, self.param, self.code = message, status, param, code


def renamed(error: textgen.ValidationError, names: dict) -> OpenAIError:
    """`prepare_request`'s message with OpenAI's parameter names; `param` is the first one it names."""
    message = re.sub(r"`(\w+)`", lambda m: f"`{names.get(m.group(1), m.group(1))}`", str(error))
    first = re.search(r"`(\w+)`", message)
    return OpenAIError(message, param=first.group(1) if first else None)


def read_chat_template(path: str) -> str:
    """The text of a chat template file: a path, or the name of one shipped in serving/chat_templates/."""
    candidate = Path(path)
    if not candidate.is_file() and (CHAT_TEMPLATES / f"{path}.jinja").is_file():
        candidate = CHAT_TEMPLATES / f"{path}.jinja"
    if not candidate.is_file():
        raise ValueError(f"no such file: {path!r} (shipped: {read_chat_template.SHIPPED})")
    return candidate.read_text()


read_chat_template.SHIPPED = ", ".join(sorted(p.stem for p in CHAT_TEMPLATES.glob("*.jinja"))) or "none"


# ---- requests


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class SamplingOptions(BaseModel):
    """What both routes take. Unknown fields are ignored, as OpenAI's clients send some this server has no use for."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    stop: str | list[str] | None = None
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # vLLM's sampling extras (the `openai` client's `extra_body`)
    top_k: int | None = None
    repetition_penalty: float | None = None
    min_tokens: int | None = None
    ignore_eos: bool = False


class CompletionRequest(SamplingOptions):
    prompt: str | list[int] | list[list[int]] | list[str]
    max_tokens: int | None = 16  # OpenAI's and vLLM's default; null: what fits, up to TGI's default (100)
    logprobs: int | None = None
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[dict] | None = None
    name: str | None = None


class ChatCompletionRequest(SamplingOptions):
    messages: list[ChatMessage]
    max_tokens: int | None = None  # none: what fits, up to TGI's default (100)
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list | None = None
    tool_choice: Any = None
    response_format: dict | None = None


# ---- validation: OpenAI's names onto prepare_request


def generation_arguments(req: SamplingOptions, max_tokens: int | None, top_n: int | None,
                         adapter_id: str | None = None) -> tuple[dict, bool]:
    """`prepare_request`'s keyword arguments for `req` (`adapter_id`: the LoRA adapter its `model` picked), and
    whether it decodes greedily (temperature 0)."""
    if req.n < 1:
        raise OpenAIError(f"`n` must be at least 1. Given: {req.n}", param="n")
    if req.logit_bias:
        raise OpenAIError("`logit_bias` is not supported by this server", param="logit_bias")
    temperature = 1.0 if req.temperature is None else req.temperature
    if temperature < 0:
        raise OpenAIError(f"`temperature` must be >= 0 (0 is greedy decoding). Given: {temperature}",
                          param="temperature")
    greedy = temperature == 0
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    return {
        "max_new_tokens": max_tokens,
        "do_sample": not greedy,
        "temperature": None if greedy else temperature,
        "top_k": None if req.top_k in (None, 0, -1) else req.top_k,  # vLLM: -1 (or 0) is off
        "top_p": None if req.top_p is None or req.top_p == 1.0 else req.top_p,  # OpenAI: 1 is off
        "repetition_penalty": req.repetition_penalty,
        "seed": req.seed,
        "stop": stop,
        "top_n_tokens": top_n,
        "frequency_penalty": req.frequency_penalty,
        "presence_penalty": req.presence_penalty,
        "min_new_tokens": req.min_tokens,
        "ignore_eos": req.ignore_eos,
        "adapter_id": adapter_id,
    }, greedy


def adapter_of(server, model: str | None) -> str | None:
    """The LoRA adapter a request's `model` picks (None: the base), as vLLM reads it. Without adapters any name is
    the one model (as TGI); with them an unknown name is a 404 `model_not_found` naming the models there are."""
    if not server.adapters:
        return None
    if model in server.adapters:
        return model
    if not model or model in (server.served_model_name, server.model_id):
        return None
    available = ", ".join([server.served_model_name, *server.adapters])
    raise OpenAIError(f"The model `{model}` does not exist; this server has: {available}", status=404, param="model",
                      code="model_not_found")


def prepare(server, prompt, arguments: dict, greedy: bool, names: dict):
    """(prompt ids, parameters) for one prompt, through the one validation every route shares."""
    try:
        ids, params = textgen.prepare_request(server.tokenizer, prompt, server.limits,
                                              eos_token_id=server.eos_token_ids, **arguments)
    except textgen.ValidationError as error:
        raise renamed(error, names) from None
    if greedy:  # the sampling values were checked; temperature 0 means none of them applies
        params = dataclasses.replace(params, do_sample=False, seed=None, temperature=1.0, top_k=None, top_p=None,
                                     typical_p=None)
    return ids, params


def prompts_of(prompt) -> list:
    """OpenAI's four prompt forms as a list of prompts (each a string or a list of token ids)."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise OpenAIError("`prompt` cannot be empty", param="prompt")
    if isinstance(prompt[0], int):
        return [prompt]
    return list(prompt)


def chat_prompt(server, messages) -> str:
    """The text a conversation becomes under the server's chat template (`--chat-template`)."""
    if server.chat_template is None:
        raise OpenAIError(MISSING_CHAT_TEMPLATE, param="messages", code="chat_template_missing")
    conversation = []
    for message in messages:
        message = message if isinstance(message, ChatMessage) else ChatMessage.model_validate(message)
        content = message.content
        if isinstance(content, list):  # content parts: text only
            if any(part.get("type") != "text" for part in content):
                raise OpenAIError("only text content parts are supported", param="messages")
            content = "".join(str(part.get("text", "")) for part in content)
        conversation.append({"role": message.role, "content": content or ""})
    if not conversation:
        raise OpenAIError("`messages` cannot be empty", param="messages")
    try:
        return server.tokenizer.apply_chat_template(conversation, chat_template=server.chat_template,
                                                    tokenize=False, add_generation_prompt=True)
    except Exception as error:  # noqa: BLE001 - the template's own checks (raise_exception), Jinja's errors
        raise OpenAIError(f"the chat template could not render these messages: {error}", param="messages") from None


# ---- choices: n generations per prompt


class ChoiceText:
    """A choice's text as OpenAI gives it: special tokens (end of sequence) print nothing, and a stop sequence ends
    the text without being part of it. `add` returns what can be sent now: text that could still turn out to be the
    start of a stop sequence is held back, and so is a token that ends inside a multi-byte character; at the last
    token the whole text is the generation's own decoding (`final_text`), so nothing held back is lost."""

    def __init__(self, stop: tuple[str, ...]):
        self.stop = tuple(stop)
        self.longest = max((len(s) for s in self.stop), default=0)
        self.text = ""  # everything decoded so far
        self.sent = 0  # of which this much was handed out

    def add(self, token: textgen.Token, matched_stop: str | None = None, final_text: str | None = None) -> str:
        if not token.special:
            self.text += token.text
        if token.last:
            if final_text is not None and final_text.startswith(self.text[: self.sent]):
                self.text = final_text
            end = len(self.text)
            if matched_stop:
                at = self.text.rfind(matched_stop)
                end = max(at, self.sent) if at >= 0 else end
            return self._take(end)
        return self._take(len(self.text) - self._held())

    def _held(self) -> int:
        pending = self.text[self.sent :]
        for k in range(min(self.longest - 1, len(pending)), 0, -1):
            if any(s.startswith(pending[-k:]) for s in self.stop):
                return k
        return 0

    def _take(self, end: int) -> str:
        delta = self.text[self.sent : end]
        self.sent = max(self.sent, end)
        return delta

    @property
    def final(self) -> str:
        return self.text[: self.sent]


@dataclasses.dataclass(eq=False)
class Choice:
    index: int
    prompt_index: int
    input_ids: list[int]
    params: textgen.GenerationParameters
    generation: Any = None  # None: `max_tokens` 0 with `echo`, nothing to compute
    text: ChoiceText = None
    finished: bool = False

    def __post_init__(self):
        self.text = ChoiceText(self.params.stop)

    @property
    def finish_reason(self) -> str:
        """OpenAI's: `stop` (end of sequence or a stop sequence) or `length`."""
        if self.generation is None:
            return "length"
        return "length" if self.generation.finish_reason == "length" else "stop"

    def add(self, token: textgen.Token) -> str:
        """The text `token` lets through (see `ChoiceText`)."""
        if not token.last:
            return self.text.add(token)
        return self.text.add(token, self.matched_stop, self.generation.generated_text)

    @property
    def matched_stop(self) -> str | None:
        criteria = getattr(self.generation, "stop_criteria", None)
        return criteria.matched if criteria is not None else None

    @property
    def generated_tokens(self) -> int:
        return 0 if self.generation is None else len(self.generation.tokens)


def submit_choices(server, prepared: list[tuple[list[int], textgen.GenerationParameters]], n: int,
                   compute: bool = True) -> list[Choice]:
    """n choices per prompt, grouped per prompt in order; all or none are submitted (429 when overloaded)."""
    choices: list[Choice] = []
    try:
        for p, (ids, params) in enumerate(prepared):
            for i in range(n):
                seeded = params if params.seed is None or i == 0 else dataclasses.replace(
                    params, seed=(params.seed + i) % SEED_SPACE)
                choice = Choice(len(choices), p, ids, seeded)
                if compute:
                    choice.generation = server.submit(ids, seeded)
                choices.append(choice)
    except BaseException:
        for choice in choices:
            if choice.generation is not None:
                choice.generation.cancel()
        raise
    return choices


async def _drain(generation):
    async for _ in generation:
        pass


async def finish_all(request: Request, generations: list) -> None:
    """Run every generation to its end, cancelling them all if the client hangs up meanwhile."""
    consume = asyncio.ensure_future(asyncio.gather(*(_drain(g) for g in generations)))
    try:
        while not consume.done():
            await asyncio.wait({consume}, timeout=0.25)
            if not consume.done() and await request.is_disconnected():
                for generation in generations:
                    generation.cancel()
        consume.result()  # re-raises a GenerationError
    finally:
        for generation in generations:
            generation.cancel()  # no-op once finished


def usage(choices: list[Choice], prompts: list[list[int]]) -> dict:
    prompt_tokens = sum(len(ids) for ids in prompts)
    completion_tokens = sum(c.generated_tokens for c in choices)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


DONE = "data: [DONE]\n\n"


def stream_choices(choices: list[Choice], first_chunks: list[dict], chunk_of, usage_chunk) -> StreamingResponse:
    """Server-sent events for `choices`, their tokens interleaved as they come: `first_chunks`, then
    `chunk_of(choice, token)` per token (a chunk, a list of them, or None), then `usage_chunk()` (None: no usage
    asked), then `data: [DONE]`. A generation that fails sends an `error` event, then `[DONE]`."""
    running = [c for c in choices if c.generation is not None]

    async def events():
        queue: asyncio.Queue = asyncio.Queue()
        ended = object()

        async def pump(choice: Choice):
            try:
                async for token in choice.generation:
                    chunks = chunk_of(choice, token)
                    for chunk in chunks if isinstance(chunks, list) else [chunks] if chunks is not None else []:
                        queue.put_nowait(sse(chunk))
                    if token.last:
                        choice.finished = True
                if not choice.finished:
                    raise textgen.GenerationError("Incomplete generation")
            except Exception as error:  # noqa: BLE001 - carried to the response
                queue.put_nowait(error)
            finally:
                queue.put_nowait(ended)

        tasks = []
        try:
            for chunk in first_chunks:
                yield sse(chunk)
            tasks = [asyncio.ensure_future(pump(c)) for c in running]
            remaining = len(tasks)
            while remaining:
                item = await queue.get()
                if item is ended:
                    remaining -= 1
                elif isinstance(item, Exception):
                    raise item
                else:
                    yield item
            final = usage_chunk()
            if final is not None:
                yield sse(final)
        except Exception as error:  # noqa: BLE001 - a failed generation (or anything else) ends the stream visibly
            yield sse(openai_error_body(str(error) or type(error).__name__, 500))
        finally:
            # Closing this generator (Starlette does when the client disconnects) cancels every generation.
            for choice in running:
                choice.generation.cancel()
            for task in tasks:
                task.cancel()
        yield DONE

    return StreamingResponse(events(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})


# ---- log-probabilities


def completion_logprobs(entries: list[tuple[str, float | None, dict | None]], offset: int = 0) -> dict:
    """OpenAI's completions `logprobs` object from (token text, logprob, top {text: logprob}) entries; `text_offset`
    counts characters from `offset`."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for text, logprob, top in entries:
        out["tokens"].append(text)
        out["token_logprobs"].append(logprob)
        out["top_logprobs"].append(top)
        out["text_offset"].append(offset)
        offset += len(text)
    return out


def token_entry(token: textgen.Token) -> tuple[str, float | None, dict]:
    """A generated token as a logprobs entry: its top alternatives (best first) and itself, as vLLM lists them."""
    return token.text, token.logprob, top_dict([(t.text, t.logprob) for t in token.top_tokens], token.text,
                                               token.logprob)


def top_dict(alternatives: list[tuple[str, float]], text: str, logprob: float) -> dict:
    """OpenAI's `top_logprobs` entry {text: logprob}: the alternatives, best first (where two tokens print the same,
    e.g. pieces of one character, the better one's value stays), then the token itself if it is not among them."""
    top: dict = {}
    for alternative, value in alternatives:
        top.setdefault(alternative, value)
    top.setdefault(text, logprob)
    return top


def prompt_entries(server, ids: list[int], top_n: int, adapter_id: str | None = None,
                   ) -> list[tuple[str, float | None, dict | None]]:
    """The prompt's tokens as logprobs entries: each one's logprob given those before it (the first's null), under
    the request's adapter."""
    texts = textgen.token_texts(server.tokenizer, ids)
    entries = []
    for i, (text, (logprob, tops)) in enumerate(zip(texts, server.prompt_logprobs(ids, top_n, adapter_id))):
        if i == 0:
            entries.append((text, None, None))
            continue
        entries.append((text, logprob, top_dict([(server.tokenizer.decode([t]), lp) for t, lp in tops], text,
                                                logprob)))
    return entries


def chat_logprob(token: textgen.Token, top_n: int) -> dict:
    """A chat completion's `logprobs.content` entry."""

    def one(text, logprob):
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return dict(one(token.text, token.logprob), top_logprobs=[one(t.text, t.logprob) for t in token.top_tokens[:top_n]])


# ---- the routes


def openai_router(server) -> APIRouter:
    router = APIRouter(prefix="/v1")

    def entry(name: str, root: str, parent: str | None) -> dict:
        return {"id": name, "object": "model", "created": server.created, "owned_by": "victorian-gpt", "root": root,
                "parent": parent, "max_model_len": server.limits.max_total_tokens}

    @router.get("/models")
    async def models():
        """The base, then each LoRA adapter with the base as its `parent` (as vLLM lists them)."""
        base = server.served_model_name
        return {"object": "list", "data": [entry(base, server.model_id, None), *(
            entry(name, server.adapter_sources.get(name, name), base) for name in server.adapters)]}

    @router.post("/completions")
    async def completions(request: Request, req: CompletionRequest):
        if req.best_of not in (None, 1):
            raise OpenAIError("`best_of` != 1 is not supported by this server", param="best_of")
        if req.suffix:
            raise OpenAIError("`suffix` is not supported by this server (a causal model has no infilling)",
                              param="suffix")
        if req.logprobs is not None and req.logprobs < 0:
            raise OpenAIError(f"`logprobs` must be >= 0. Given: {req.logprobs}", param="logprobs")
        adapter = adapter_of(server, req.model)
        answered_as = adapter or server.served_model_name  # the `model` of the answers

        prompt_only = req.max_tokens == 0 and req.echo  # lm-eval's loglikelihood: the prompt and its logprobs
        arguments, greedy = generation_arguments(req, 1 if prompt_only else req.max_tokens, req.logprobs, adapter)
        prompts = prompts_of(req.prompt)
        prepared = [prepare(server, p, arguments, greedy, COMPLETION_NAMES) for p in prompts]
        choices = submit_choices(server, prepared, req.n, compute=not prompt_only)
        echo_text = [p if isinstance(p, str) else server.tokenizer.decode(ids) for p, (ids, _) in zip(prompts, prepared)]
        top_n = req.logprobs or 0

        async def echoed(p: int) -> list:  # the prompt's logprob entries: one forward pass, off the event loop
            return await server.on_model_thread(prompt_entries, server, prepared[p][0], top_n, adapter)

        echo_entries: dict[int, list] = {}
        if req.echo and req.logprobs is not None:
            try:
                for p in range(len(prompts)):
                    echo_entries[p] = await echoed(p)
            except BaseException:
                for choice in choices:
                    if choice.generation is not None:
                        choice.generation.cancel()
                raise
        completion_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def logprobs_of(choice: Choice, tokens: list) -> dict | None:
            if req.logprobs is None:
                return None
            entries = list(echo_entries.get(choice.prompt_index, [])) if req.echo else []
            entries += [token_entry(t) for t in tokens]
            return completion_logprobs(entries)

        if not req.stream:
            await finish_all(request, [c.generation for c in choices if c.generation is not None])
            out = []
            for choice in choices:
                text = ""
                for token in (choice.generation.tokens if choice.generation is not None else []):
                    text += choice.add(token)
                out.append({"index": choice.index,
                            "text": (echo_text[choice.prompt_index] if req.echo else "") + text,
                            "logprobs": logprobs_of(choice, choice.generation.tokens if choice.generation else []),
                            "finish_reason": choice.finish_reason})
            return {"id": completion_id, "object": "text_completion", "created": created, "model": answered_as,
                    "choices": out, "usage": usage(choices, [ids for ids, _ in prepared])}

        def chunk(index: int, text: str, logprobs: dict | None = None, finish_reason: str | None = None) -> dict:
            return {"id": completion_id, "object": "text_completion", "created": created, "model": answered_as,
                    "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}],
                    "usage": None}

        offsets = {c.index: len(echo_text[c.prompt_index]) if req.echo else 0 for c in choices}
        first = []
        if req.echo:
            for choice in choices:
                entries = echo_entries.get(choice.prompt_index)
                first.append(chunk(choice.index, echo_text[choice.prompt_index],
                                   completion_logprobs(entries) if entries is not None else None,
                                   "length" if choice.generation is None else None))

        def chunk_of(choice: Choice, token) -> dict | None:
            delta = choice.add(token)
            logprobs = None
            if req.logprobs is not None:
                logprobs = completion_logprobs([token_entry(token)], offsets[choice.index])
                offsets[choice.index] += len(token.text)
            if not delta and logprobs is None and not token.last:
                return None
            return chunk(choice.index, delta, logprobs, choice.finish_reason if token.last else None)

        def usage_chunk():
            if not (req.stream_options and req.stream_options.include_usage):
                return None
            return {"id": completion_id, "object": "text_completion", "created": created, "model": answered_as,
                    "choices": [], "usage": usage(choices, [ids for ids, _ in prepared])}

        return stream_choices(choices, first, chunk_of, usage_chunk)

    @router.post("/chat/completions")
    async def chat_completions(request: Request, req: ChatCompletionRequest):
        if req.tools:
            raise OpenAIError("`tools` are not supported by this server: the model has no tool calling",
                              param="tools")
        if req.response_format and req.response_format.get("type", "text") != "text":
            raise OpenAIError("only `response_format` {\"type\": \"text\"} is supported by this server",
                              param="response_format")
        if req.top_logprobs is not None and not req.logprobs:
            raise OpenAIError("`top_logprobs` needs `logprobs`: true", param="top_logprobs")
        adapter = adapter_of(server, req.model)
        answered_as = adapter or server.served_model_name

        prompt = chat_prompt(server, req.messages)
        top_n = (req.top_logprobs or 0) if req.logprobs else None
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        arguments, greedy = generation_arguments(req, max_tokens, top_n, adapter)
        prepared = [prepare(server, prompt, arguments, greedy, CHAT_NAMES)]
        choices = submit_choices(server, prepared, req.n)
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        top = req.top_logprobs or 0

        if not req.stream:
            await finish_all(request, [c.generation for c in choices])
            out = []
            for choice in choices:
                text = "".join(choice.add(t) for t in choice.generation.tokens)
                out.append({"index": choice.index, "message": {"role": "assistant", "content": text},
                            "logprobs": {"content": [chat_logprob(t, top) for t in choice.generation.tokens]}
                            if req.logprobs else None,
                            "finish_reason": choice.finish_reason})
            return {"id": completion_id, "object": "chat.completion", "created": created, "model": answered_as,
                    "choices": out, "usage": usage(choices, [ids for ids, _ in prepared])}

        def chunk(index: int, delta: dict, logprobs=None, finish_reason: str | None = None) -> dict:
            return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": answered_as,
                    "choices": [{"index": index, "delta": delta, "logprobs": logprobs,
                                 "finish_reason": finish_reason}], "usage": None}

        first = [chunk(c.index, {"role": "assistant", "content": ""}) for c in choices]  # the role first

        def chunk_of(choice: Choice, token) -> list[dict]:
            """The token's text (if any) as a `content` delta; after the last, an empty delta with the reason."""
            delta = choice.add(token)
            logprobs = {"content": [chat_logprob(token, top)]} if req.logprobs else None
            out = [chunk(choice.index, {"content": delta}, logprobs)] if delta or logprobs is not None else []
            if token.last:
                out.append(chunk(choice.index, {}, None, choice.finish_reason))
            return out

        def usage_chunk():
            if not (req.stream_options and req.stream_options.include_usage):
                return None
            return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": answered_as,
                    "choices": [], "usage": usage(choices, [ids for ids, _ in prepared])}

        return stream_choices(choices, first, chunk_of, usage_chunk)

    return router
