"""A Text Generation Inference-compatible HTTP server for a VictorianGPT export (or any causal LM on the Hub), with
OpenAI's API beside it.

`victorian-gpt serve MODEL [--host 127.0.0.1] [--port 8080]` speaks TGI's wire protocol, so `text_generation.Client`,
`huggingface_hub.InferenceClient(base_url)` and anything else written for TGI work unchanged, and OpenAI's
(`/v1/completions`, `/v1/chat/completions`, `/v1/models`: openai_api.py), so the `openai` package, LangChain and
lm-eval's `local-completions` do too; `/tokenize`, `/detokenize`, `/tokenizer_info` (tokenizer_api.py) and a
WebSocket stream, `/generate_ws` (websocket.py), complete it. All of them share one engine and one validation
(`textgen.prepare_request`), so a value is refused the same way by every route.

- `POST /generate` → `{"generated_text", "details"?}`; `POST /generate_stream` → server-sent events, one
  `{"index", "token", "top_tokens", "generated_text": null, "details": null}` per token, the last one carrying
  `generated_text` (and `details` when asked); `POST /` switches on `"stream"` and wraps a non-streamed answer in a
  list, defaulting `return_full_text` to true as TGI does for text-generation models; `GET /info`, `GET /health`.
- Parameters and their checks are TGI's; a bad one is HTTP 422 `{"error": ..., "error_type": "validation"}` (on
  OpenAI's routes, 400 in OpenAI's shape). A prompt longer than `--max-input-tokens` is rejected unless the request
  sets `truncate`, which keeps its last tokens. `top_n_tokens` (up to `--max-top-n-tokens`) streams each step's most
  likely tokens, as TGI does.
- Every request goes through one batching engine (`textgen.Engine`): the running sequences decode together, one
  token each per step, new requests join between steps and finished ones leave, so concurrent streams share each read
  of the weights instead of competing for the cores. Streams never share tokens or random state; a client that
  disconnects removes its sequence at the next step. Beyond `--max-concurrent-requests` in flight a request gets 429
  `overloaded`, like TGI; `/info` reports the batching limits under TGI's names. `--engine threads` serves each
  request with its own `generate()` thread instead (the server before the engine, kept for comparison).
- Prefix cache (`--prefix-cache-tokens`, 0 = off): the KV of recently prefilled prompt openings is kept, so a request
  that starts like an earlier one prefills only what it adds; `/info` and `/metrics` (Prometheus text) report its hits,
  the tokens it served and its size.
- `--dtype auto` (the default) serves bf16 where the CPU (AVX-512 BF16 / AMX) or GPU computes it natively, otherwise
  the model's own dtype, and `/info` says which (`model_dtype`, and why in `dtype`); `--dtype float32` is the exact
  path. `--quantize int8` serves int8 weights on CPU (textgen.Int8Linear).
- Remote code runs only when safe or asked: a native model (no `auto_map`) never runs any, a local export folder is
  trusted (its code is on your disk), a Hub repo with remote code needs `--trust-remote-code` (pin `--revision`).
- `--api-key KEY` (or `VICTORIAN_GPT_API_KEY`): every route but /health then needs `Authorization: Bearer KEY`
  (auth.py). `GET /metrics` uses TGI's metric names (metrics.py).
- LoRA adapters (`--lora-adapters dickens=DIR,hardy=USER/REPO@REV`, as TGI's launcher takes them): one base model,
  and each request picks its adapter: TGI's `adapter_id` parameter on TGI's routes and the WebSocket, the request's
  `model` on OpenAI's (as vLLM), none for the base. Rows of different adapters decode in one batch. `/info` lists them
  (`lora_adapters`), `/v1/models` too (each with `parent`: the base); an unknown one is a 422 on TGI's routes, a 404
  `model_not_found` on OpenAI's, naming those there are.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import sys
import time
from contextlib import asynccontextmanager

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from victorian_gpt import __version__

from . import textgen
from .auth import APIKeyMiddleware, resolve_api_key, warn_if_exposed
from .errors import openai_error, openai_shaped, tgi_error
from .metrics import ServerMetrics
from .openai_api import OpenAIError, openai_router, read_chat_template
from .tokenizer_api import tokenizer_router
from .websocket import websocket_router

logger = logging.getLogger("victorian_gpt.serving")


class Parameters(BaseModel):
    """TGI's `GenerateParameters`. Unknown fields are ignored, as serde does."""

    model_config = ConfigDict(extra="ignore")

    best_of: int | None = None
    decoder_input_details: bool = False
    details: bool = False
    do_sample: bool = False
    frequency_penalty: float | None = None
    grammar: dict | None = None
    max_new_tokens: int | None = None
    repetition_penalty: float | None = None
    return_full_text: bool | None = None
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    temperature: float | None = None
    top_k: int | None = None
    top_n_tokens: int | None = None
    top_p: float | None = None
    truncate: int | None = None
    typical_p: float | None = None
    watermark: bool = False
    adapter_id: str | None = None


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    inputs: str
    parameters: Parameters = Field(default_factory=Parameters)
    stream: bool = False  # only read by `POST /`


RETRY_AFTER_S = 1  # what a 429 tells the client to wait before trying again (`Retry-After`)

Overloaded = textgen.Overloaded

ENGINES = ("batch", "threads")


class TGIServer:
    """The model, its limits and the request bookkeeping behind the routes.

    `engine="batch"` (the default) runs every request through one `textgen.Engine`, configured by `engine_options`
    (`max_batch_size`, `max_batch_total_tokens`, `max_batch_prefill_tokens`, `waiting_served_ratio`,
    `max_waiting_tokens`); `engine="threads"` gives each request its own `generate()` thread.
    """

    def __init__(self, model, tokenizer, *, model_id: str, limits: textgen.Limits, max_concurrent_requests: int = 128,
                 engine: str = "batch", engine_options: dict | None = None, served_model_name: str | None = None,
                 chat_template: str | None = None, adapter_sources: dict[str, str] | None = None):
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
        self.model, self.tokenizer, self.model_id, self.limits = model, tokenizer, model_id, limits
        # the LoRA adapters loaded over the base (load_model(lora_adapters=...)), by name; a request picks one
        self.adapters: tuple[str, ...] = tuple(getattr(model, "lora_adapters", None) or ())
        self.adapter_sources = dict(adapter_sources or {})  # name -> folder or Hub id (`root` in /v1/models)
        if self.adapters and engine != "batch":
            raise ValueError("--lora-adapters needs the batching engine, which decodes each row with its own "
                             "adapter: drop --engine threads")
        self.served_model_name = served_model_name or model_id  # the name OpenAI's routes answer with (`model`)
        self.chat_template = chat_template  # Jinja, as transformers' `chat_template`; None: /v1/chat/completions is 400
        eos = model.generation_config.eos_token_id
        self.eos_token_ids = sorted(set(eos if isinstance(eos, list) else [eos]) - {None})
        self.max_concurrent_requests = max_concurrent_requests
        self.metrics_registry = ServerMetrics()
        self.created = int(time.time())
        self.live: set[textgen.Generation] = set()  # thread engine: generations started and not yet finished
        self.engine = None
        self.window = textgen.context_length(model, tokenizer)
        if engine == "batch":
            self.engine = textgen.Engine(model, tokenizer, limits=limits,
                                         max_concurrent_requests=max_concurrent_requests, **(engine_options or {}))
        elif limits.max_total_tokens > self.window:
            raise ValueError(f"--max-total-tokens {limits.max_total_tokens} goes past the model's context "
                             f"({self.window}): only the batching engine shifts the context; drop --engine threads")

    def close(self):
        if self.engine is not None:
            self.engine.close()

    def info(self) -> dict:
        batching = self.engine.info() if self.engine is not None else {}
        return {
            "model_id": self.model_id,
            "model_sha": None,
            "model_dtype": str(self.model.dtype),
            "dtype": getattr(self.model, "serving_dtype", None),  # what --dtype chose, and why
            "model_device_type": self.model.device.type,
            "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": self.max_concurrent_requests,
            "max_best_of": 1,
            "max_stop_sequences": self.limits.max_stop_sequences,
            "max_top_n_tokens": self.limits.max_top_n_tokens,
            "max_input_tokens": self.limits.max_input_tokens,
            "max_input_length": self.limits.max_input_tokens,  # the name before TGI 2.1
            "max_total_tokens": self.limits.max_total_tokens,
            "max_position_embeddings": self.window,  # the model's context; a longer sequence shifts it
            "max_client_batch_size": 1,
            "validation_workers": 1,
            **batching,
            "lora_adapters": list(self.adapters),  # TGI's launcher flag's name; a request's `adapter_id` picks one
            "quantize": getattr(self.model, "quantization", None),
            "router": "victorian-gpt",
            "version": __version__,
            "sha": None,
            "docker_label": None,
        }

    def metrics(self) -> str:
        """Prometheus text exposition: TGI's request metrics, then the engine's gauges and counters, prefixed `tgi_`
        as TGI's are."""
        values = self.engine.metrics() if self.engine is not None else {
            "requests_in_flight": sum(not g.done.is_set() for g in self.live)}
        return self.metrics_registry.render(values)

    def submit(self, input_ids: list[int], params: textgen.GenerationParameters, *, asynchronous: bool = True):
        """Start a validated request (`textgen.prepare_request`) on the engine (or its own thread): every front end's
        way in. Raises `Overloaded` beyond `max_concurrent_requests` in flight."""
        if self.engine is not None:
            generation = self.engine.submit(input_ids, params, asynchronous=asynchronous)  # Overloaded: 429
        else:
            # Counted by the threads themselves, so a response that never started streaming cannot leak a slot; one
            # whose last token was handed over is done for its client, who may send the next request at once.
            self.live = {g for g in self.live if not (g.done.is_set() or g.streamer.last_emitted)}
            if len(self.live) >= self.max_concurrent_requests:
                raise Overloaded("Model is overloaded")
            generation = textgen.Generation(self.model, self.tokenizer, input_ids, params, asynchronous=asynchronous)
            self.live.add(generation)
        generation.input_length = len(input_ids)
        self.metrics_registry.track(generation)
        return generation

    def start(self, req: GenerateRequest, *, asynchronous: bool = True) -> textgen.Generation:
        """Validate `req` (TGI's rules) and start its generation."""
        p = req.parameters
        if p.best_of is not None and p.best_of != 1:
            raise textgen.ValidationError("`best_of` != 1 is not allowed for this endpoint")
        if p.frequency_penalty is not None and not -2.0 <= p.frequency_penalty <= 2.0:
            raise textgen.ValidationError("`frequency_penalty` must be >= -2.0 and <= 2.0")
        if p.frequency_penalty:
            raise textgen.ValidationError("`frequency_penalty` is not supported by this server")
        if p.grammar is not None:
            raise textgen.ValidationError("grammar is not supported")
        if p.watermark:
            raise textgen.ValidationError("`watermark` is not supported by this server")
        input_ids, params = textgen.prepare_request(
            self.tokenizer,
            req.inputs,
            self.limits,
            max_new_tokens=p.max_new_tokens,
            do_sample=p.do_sample,
            temperature=p.temperature,
            top_k=p.top_k,
            top_p=p.top_p,
            typical_p=p.typical_p,
            repetition_penalty=p.repetition_penalty,
            seed=p.seed,
            stop=p.stop,
            truncate=p.truncate,
            top_n_tokens=p.top_n_tokens,
            adapter_id=p.adapter_id or None,  # an unknown one is refused here (422), naming the adapters there are
        )
        return self.submit(input_ids, params, asynchronous=asynchronous)

    @torch.inference_mode()
    def prompt_logprobs(self, input_ids: list[int], top_n: int = 0,
                        adapter_id: str | None = None) -> list[tuple[float | None, list]]:
        """Each prompt token's log-probability under the model (with the LoRA adapter `adapter_id`, None: the base)
        given the tokens before it (None for the first), and with `top_n` the `top_n` most likely tokens at its
        position as (id, logprob), best first: one forward pass. TGI's `decoder_input_details` and OpenAI's `echo`
        with `logprobs`."""
        ids = torch.tensor([input_ids], device=self.model.device)
        with textgen.use_adapter(self.model, adapter_id):
            logits = self.model(input_ids=ids, use_cache=False).logits[0, :-1]
        out: list[tuple[float | None, list]] = [(None, [])]
        for start in range(0, logits.shape[0], 256):  # float32 log-softmax a slice at a time (vocabularies are large)
            logprobs = torch.log_softmax(logits[start : start + 256].float(), dim=-1)
            picked = logprobs.gather(-1, ids[0, start + 1 : start + 1 + logprobs.shape[0], None])[:, 0].tolist()
            if top_n:
                values, top_ids = logprobs.topk(min(top_n, logprobs.shape[-1]), dim=-1)
                tops = [list(zip(i, v)) for i, v in zip(top_ids.tolist(), values.clamp(min=textgen.LOGPROB_FLOOR).tolist())]
            else:
                tops = [[] for _ in picked]
            out += list(zip(picked, tops))
        return out

    async def on_model_thread(self, function, *args):
        """`function(*args)` run where the model computes: on the engine's thread between two steps (one thread
        computes, see `textgen.Engine.call`), or with the threads engine on a worker thread; off the event loop."""
        if self.engine is not None:
            return await asyncio.wrap_future(self.engine.call(functools.partial(function, *args)))
        return await asyncio.to_thread(function, *args)

    def prefill(self, input_ids: list[int], adapter_id: str | None = None) -> list[dict]:
        """TGI's `decoder_input_details`: the prompt tokens with the log-probability the model gives each."""
        logprobs = [lp for lp, _ in self.prompt_logprobs(input_ids, 0, adapter_id)]
        texts = [self.tokenizer.decode([i]) for i in input_ids]
        return [{"id": i, "text": t, "logprob": lp} for i, t, lp in zip(input_ids, texts, logprobs)]

    def details(self, generation: textgen.Generation, stream: bool) -> dict:
        details = {
            "finish_reason": generation.finish_reason,
            "generated_tokens": generation.generated_tokens,
            "seed": generation.params.seed,
        }
        if stream:
            details["input_length"] = generation.input_length
        else:
            details["prefill"] = generation.prefill
            details["tokens"] = [t.to_dict() for t in generation.tokens]
            details["top_tokens"] = ([[top.to_dict() for top in t.top_tokens] for t in generation.tokens]
                                     if generation.params.top_n_tokens else None)
            details["best_of_sequences"] = None
        return details

    @staticmethod
    def output_text(req: GenerateRequest, generation: textgen.Generation) -> str:
        text = generation.generated_text
        return req.inputs + text if req.parameters.return_full_text else text

    async def generate(self, request: Request, req: GenerateRequest) -> dict:
        """Run to completion, cancelling if the client hangs up meanwhile."""
        generation = self.start(req)
        try:
            consume = asyncio.ensure_future(_drain(generation))
            # the prompt's own log-probabilities: one forward pass, off the event loop
            prefill = asyncio.ensure_future(self.on_model_thread(self.prefill, generation.input_ids,
                                                                 generation.params.adapter_id)
                                            if req.parameters.decoder_input_details else asyncio.sleep(0, []))
            while not consume.done():
                await asyncio.wait({consume}, timeout=0.25)
                if not consume.done() and await request.is_disconnected():
                    generation.cancel()
            consume.result()  # re-raises a GenerationError
            generation.prefill = await prefill
        finally:
            generation.cancel()  # no-op once finished; stops the thread if this request was abandoned
        response = {"generated_text": self.output_text(req, generation)}
        if req.parameters.details or req.parameters.decoder_input_details:
            response["details"] = self.details(generation, stream=False)
        return response

    def generate_stream(self, req: GenerateRequest) -> StreamingResponse:
        if req.parameters.decoder_input_details:
            raise textgen.ValidationError("`decoder_input_details` == true is not supported when streaming tokens")
        generation = self.start(req)

        async def events():
            # Closing this generator (Starlette does when the client disconnects) cancels the generation.
            try:
                index, ended = 0, False
                async for token in generation:
                    index += 1
                    event = {"index": index, "token": token.to_dict(),
                             "top_tokens": [t.to_dict() for t in token.top_tokens] if generation.params.top_n_tokens
                             else None,
                             "generated_text": None, "details": None}
                    if token.last:  # TGI's last event also carries the whole text (and details if asked)
                        ended = True
                        event["generated_text"] = self.output_text(req, generation)
                        if req.parameters.details:
                            event["details"] = self.details(generation, stream=True)
                    yield _sse(event)
                if not ended:
                    yield _sse({"error": "Incomplete generation", "error_type": "incomplete_generation"})
            except textgen.GenerationError as error:
                yield _sse({"error": str(error), "error_type": "generation"})
            finally:
                generation.cancel()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})


async def _drain(generation: textgen.Generation):
    async for _ in generation:
        pass


def _sse(payload: dict) -> str:
    return f"data:{json.dumps(payload)}\n\n"


def create_app(model, tokenizer, *, model_id: str, limits: textgen.Limits | None = None,
               max_concurrent_requests: int = 128, engine: str = "batch", engine_options: dict | None = None,
               api_key: str | None = None, chat_template: str | None = None,
               served_model_name: str | None = None, adapter_sources: dict[str, str] | None = None) -> FastAPI:
    """The FastAPI application serving `model` with TGI's routes, OpenAI's, the tokenizer's and the WebSocket stream
    (see `TGIServer` for `engine` and its options). `api_key`: every route but /health needs it (auth.py);
    `chat_template`: the Jinja text /v1/chat/completions renders messages with (none: that route is a 400);
    `adapter_sources`: where each of the model's LoRA adapters came from (`--lora-adapters`), for /v1/models."""
    server = TGIServer(model, tokenizer, model_id=model_id, limits=limits or textgen.Limits.for_model(model, tokenizer),
                       max_concurrent_requests=max_concurrent_requests, engine=engine, engine_options=engine_options,
                       served_model_name=served_model_name, chat_template=chat_template,
                       adapter_sources=adapter_sources)

    @asynccontextmanager
    async def lifespan(app):
        yield
        server.close()  # in flight requests end with an error event; the engine thread stops

    app = FastAPI(title="VictorianGPT — Text Generation Inference and OpenAI APIs", version=__version__,
                  lifespan=lifespan)
    app.state.server = server
    if api_key:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)

    # Each route answers in its own protocol's error shape: OpenAI's on /v1/... (400 for bad input), TGI's elsewhere.
    @app.exception_handler(RequestValidationError)
    async def _bad_json(request: Request, exc: RequestValidationError):
        server.metrics_registry.failure("validation")
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        if openai_shaped(request.url.path):
            return openai_error(400, f"`{where}`: {first.get('msg', exc)}", param=where or None)
        return tgi_error(422, f"Failed to deserialize the JSON body: `{where}`: {first.get('msg', exc)}",
                              "validation")

    @app.exception_handler(OpenAIError)
    async def _openai_invalid(request: Request, exc: OpenAIError):
        if exc.status in (400, 404):  # a bad value, an unknown model
            server.metrics_registry.failure("validation")
        return openai_error(exc.status, exc.message, param=exc.param, code=exc.code)

    @app.exception_handler(textgen.ValidationError)
    async def _invalid(request: Request, exc: textgen.ValidationError):
        server.metrics_registry.failure("validation")
        if openai_shaped(request.url.path):
            return openai_error(400, str(exc))
        return tgi_error(422, str(exc), "validation")

    @app.exception_handler(textgen.GenerationError)
    async def _failed(request: Request, exc: textgen.GenerationError):
        if openai_shaped(request.url.path):
            return openai_error(500, str(exc))
        return tgi_error(424, str(exc), "generation")

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded):
        server.metrics_registry.failure("overloaded")
        headers = {"Retry-After": str(RETRY_AFTER_S)}
        if openai_shaped(request.url.path):
            return openai_error(429, str(exc), code="rate_limit_exceeded", headers=headers)
        return tgi_error(429, str(exc), "overloaded", headers=headers)

    @app.post("/generate")
    async def generate(request: Request, req: GenerateRequest):
        return await server.generate(request, req)

    @app.post("/generate_stream")
    async def generate_stream(req: GenerateRequest):
        return server.generate_stream(req)

    @app.post("/")
    async def compat_generate(request: Request, req: GenerateRequest):
        if req.parameters.return_full_text is None:  # TGI: text-generation models return the prompt too on `/`
            req.parameters.return_full_text = True
        if req.stream:
            return server.generate_stream(req)
        return [await server.generate(request, req)]

    @app.get("/info")
    async def info():
        return server.info()

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(server.metrics(), media_type="text/plain; version=0.0.4")

    @app.get("/health")
    async def health():
        return Response(status_code=200)

    app.include_router(openai_router(server))
    app.include_router(tokenizer_router(server))
    app.include_router(websocket_router(server, GenerateRequest))
    return app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="victorian-gpt serve",
        description="Serve a model over Text Generation Inference's HTTP API (/generate, /generate_stream, /info) and "
                    "OpenAI's (/v1/completions, /v1/chat/completions, /v1/models), with a WebSocket stream "
                    "(/generate_ws) and tokenizer routes (/tokenize, /detokenize, /tokenizer_info).",
    )
    textgen.add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default: %(default)s)")
    parser.add_argument("--max-input-tokens", type=int, default=None,
                        help="longest prompt accepted, at most the model's context - 1 (default: that, or "
                             "--max-total-tokens - 1 if smaller); a longer one needs `truncate`")
    parser.add_argument("--max-total-tokens", type=int, default=None,
                        help="prompt + generated tokens per request; may exceed the model's context, which then "
                             "shifts (--context-keep, --context-discard) (default: the model's context length)")
    parser.add_argument("--max-concurrent-requests", type=int, default=128,
                        help="requests in flight (queued or running); more get HTTP 429 (default: %(default)s)")
    parser.add_argument("--max-top-n-tokens", type=int, default=textgen.MAX_TOP_N_TOKENS,
                        help="most `top_n_tokens` (TGI) or `logprobs` (OpenAI) a request may ask (default: %(default)s)")
    api = parser.add_argument_group("OpenAI's API and access")
    api.add_argument("--served-model-name", default=None,
                     help="the model's name on OpenAI's routes (/v1/models, `model` in answers) (default: MODEL)")
    api.add_argument("--chat-template", default=None, metavar="FILE",
                     help="a Jinja chat template (as transformers' `chat_template`) for /v1/chat/completions; a base "
                          "model has none, so that route is a 400 without it. Shipped: " + read_chat_template.SHIPPED)
    api.add_argument("--api-key", default=None,
                     help="require `Authorization: Bearer KEY` on every route but /health (default: the "
                          "VICTORIAN_GPT_API_KEY environment variable; none)")
    batching = parser.add_argument_group("batching (TGI's launcher flags)")
    batching.add_argument("--max-batch-size", type=int, default=32,
                          help="sequences decoded together at most (default: %(default)s)")
    batching.add_argument("--max-batch-total-tokens", type=int, default=None,
                          help="tokens of the running batch, each sequence counted at prompt + max_new_tokens "
                               "(default: 16384, or max-total-tokens if larger)")
    batching.add_argument("--max-batch-prefill-tokens", type=int, default=256,
                          help="prompt tokens prefilled per step, so running streams stall for one chunk at most "
                               "(default: %(default)s)")
    batching.add_argument("--waiting-served-ratio", type=float, default=0.3,
                          help="admit waiting requests once they are at least this fraction of the running ones "
                               "(default: %(default)s)")
    batching.add_argument("--max-waiting-tokens", type=int, default=20,
                          help="...or once this many decode steps went by without admitting (default: %(default)s)")
    batching.add_argument("--prefix-cache-tokens", type=int, default=4096,
                          help="tokens of prompt openings whose KV is kept for reuse (least recently used out first; "
                               "0 turns the prefix cache off) (default: %(default)s)")
    batching.add_argument("--engine", choices=ENGINES, default="batch",
                          help="batch: one batching engine for all requests; threads: a generate() thread per request "
                               "(the former server, for comparison) (default: %(default)s)")
    textgen.add_context_shift_arguments(parser)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def adapters_of(args: argparse.Namespace) -> dict[str, str]:
    """`--lora-adapters` as {name: folder or Hub id}; ValueError (one line) for a malformed list."""
    value = getattr(args, "lora_adapters", None)
    if not value:
        return {}
    return dict(value) if isinstance(value, dict) else textgen.parse_lora_adapters(value)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        chat_template = read_chat_template(args.chat_template) if args.chat_template else None
    except (OSError, ValueError) as error:
        print(f"victorian-gpt serve: --chat-template: {error}", file=sys.stderr)
        return 2
    api_key = resolve_api_key(args.api_key)
    try:  # the adapters' names and sources, checked before anything loads
        adapter_sources = adapters_of(args)
    except ValueError as error:
        print(f"victorian-gpt serve: --lora-adapters: {error}", file=sys.stderr)
        return 2
    try:
        model, tokenizer = textgen.load_model_from_args(args)
    except (OSError, ValueError) as error:
        # an adapter that does not load (or fits another model) names itself; anything else is the model's
        what = "--lora-adapters: " if str(error).startswith("LoRA adapter") else f"cannot load {args.model!r}: "
        print(f"victorian-gpt serve: {what}{error}", file=sys.stderr)
        return 2
    try:
        context_shift = textgen.context_shift_from_args(args, model).check(textgen.context_length(model, tokenizer))
        limits = textgen.Limits.for_model(model, tokenizer, args.max_input_tokens, args.max_total_tokens,
                                          args.max_top_n_tokens)
    except ValueError as error:
        print(f"victorian-gpt serve: {error}", file=sys.stderr)
        return 2
    engine_options = dict(max_batch_size=args.max_batch_size, max_batch_total_tokens=args.max_batch_total_tokens,
                          max_batch_prefill_tokens=args.max_batch_prefill_tokens,
                          waiting_served_ratio=args.waiting_served_ratio, max_waiting_tokens=args.max_waiting_tokens,
                          prefix_cache_tokens=args.prefix_cache_tokens, context_shift=context_shift)
    try:
        app = create_app(model, tokenizer, model_id=args.model, limits=limits, engine=args.engine,
                         max_concurrent_requests=args.max_concurrent_requests, engine_options=engine_options,
                         api_key=api_key, chat_template=chat_template, served_model_name=args.served_model_name,
                         adapter_sources=adapter_sources)
    except ValueError as error:
        print(f"victorian-gpt serve: {error}", file=sys.stderr)
        return 2
    logger.info("serving %s on http://%s:%d (%s)%s%s", args.model, args.host, args.port, limits,
                f"; LoRA adapters: {', '.join(adapter_sources)}" if adapter_sources else "",
                "; API key required" if api_key else "")
    warn_if_exposed(args.host, api_key)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
