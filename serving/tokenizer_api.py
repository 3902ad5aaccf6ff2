"""The server's tokenizer, for clients that count or build prompts in tokens:

- `POST /tokenize`, in both protocols that use the path: TGI's (`{"inputs", "parameters"}` → a list of
  `{"id", "text", "start", "stop"}`, the character span of each token) and vLLM's (`{"prompt", "add_special_tokens"}`
  or `{"messages"}` with the chat template → `{"count", "max_model_len", "tokens", "token_strs"}`): which one is read
  from the body's keys.
- `POST /detokenize` (vLLM's): `{"tokens": [...]}` → `{"prompt": text}`.
- `GET /tokenizer_info` (vLLM's): the tokenizer's class, special tokens, `model_max_length` and the chat template.

lm-eval's API models probe `/tokenizer_info` (for `eos_token`) and `/tokenize` (`{"prompt", "add_special_tokens":
false}`) to tokenize with the server's own tokenizer (`tokenizer_backend=remote`).
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request

from .errors import openai_error, tgi_error
from .openai_api import OpenAIError, chat_prompt


def tokenizer_router(server) -> APIRouter:
    router = APIRouter()
    tokenizer = server.tokenizer

    @router.post("/tokenize")
    async def tokenize(request: Request):
        try:
            body = json.loads(await request.body())
        except ValueError as error:
            return tgi_error(422, f"Failed to deserialize the JSON body: {error}", "validation")
        if not isinstance(body, dict):
            return tgi_error(422, "Failed to deserialize the JSON body: expected an object", "validation")
        if "inputs" in body:  # TGI's
            inputs = body["inputs"]
            if not isinstance(inputs, str) or not inputs:
                return tgi_error(422, "`inputs` must be a non-empty string", "validation")
            encoding = tokenizer(inputs, add_special_tokens=False, return_offsets_mapping=True)
            return [{"id": i, "text": inputs[a:b], "start": a, "stop": b}
                    for i, (a, b) in zip(encoding["input_ids"], encoding["offset_mapping"])]
        if "prompt" in body or "messages" in body:  # vLLM's
            add_special_tokens = bool(body.get("add_special_tokens", True))
            if "messages" in body:
                try:
                    prompt = chat_prompt(server, body["messages"])
                except OpenAIError as error:
                    return openai_error(error.status, error.message, param=error.param)
                add_special_tokens = bool(body.get("add_special_tokens", False))
            else:
                prompt = body["prompt"]
            if not isinstance(prompt, str):
                return openai_error(400, "`prompt` must be a string", param="prompt")
            ids = tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]
            strs = tokenizer.convert_ids_to_tokens(ids) if body.get("return_token_strs") else None
            return {"count": len(ids), "max_model_len": server.limits.max_total_tokens, "tokens": ids,
                    "token_strs": strs}
        return tgi_error(422, "Failed to deserialize the JSON body: give `inputs` (TGI) or `prompt` (vLLM)",
                         "validation")

    @router.post("/detokenize")
    async def detokenize(request: Request):
        try:
            body = json.loads(await request.body())
        except ValueError as error:
            return openai_error(400, f"the body is not JSON: {error}")
        tokens = body.get("tokens") if isinstance(body, dict) else None
        vocabulary = len(tokenizer)
        if not isinstance(tokens, list) or not all(isinstance(t, int) and 0 <= t < vocabulary for t in tokens):
            return openai_error(400, f"`tokens` must be a list of token ids in [0, {vocabulary})", param="tokens")
        return {"prompt": tokenizer.decode(tokens)}

    @router.get("/tokenizer_info")
    async def tokenizer_info():
        info = {
            "tokenizer_class": type(tokenizer).__name__,
            "eos_token": tokenizer.eos_token,
            "bos_token": tokenizer.bos_token,
            "pad_token": tokenizer.pad_token,
            "unk_token": tokenizer.unk_token,
            "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "vocab_size": len(tokenizer),
            "model_max_length": server.limits.max_total_tokens,
            "add_bos_token": False,  # prompts are tokenized without special tokens (TGI's and this server's rule)
            "chat_template": server.chat_template,
        }
        return info

    return router

