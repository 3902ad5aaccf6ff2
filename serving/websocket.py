"""`/generate_ws`: token streaming over a WebSocket, for browsers and other clients that keep one connection open.

Each text frame the client sends is one request, with `/generate_stream`'s JSON body (`{"inputs", "parameters"}`);
the server answers with the same token objects as text frames (`{"index", "token", "top_tokens",
"generated_text": null, "details": null}`), the last one carrying `generated_text` (and `details` when asked). Then
the socket is ready for the next request: several requests go in sequence on one connection (a frame sent while a
request streams waits its turn). `parameters.adapter_id` picks a LoRA adapter, as on `/generate_stream`.

- Bad input (not JSON, a wrong field, a value TGI's rules refuse, an unknown `adapter_id`): an error frame
  `{"error", "error_type": "validation"}`, then close code 1008 (policy violation).
- Too many requests in flight: `{"error", "error_type": "overloaded"}`, then 1013 (try again later).
- A failure while generating: `{"error", "error_type": "generation"}`, then 1011 (internal error).
- A client that closes the socket cancels its request at the next step.

With `--api-key`, the handshake needs `Authorization: Bearer KEY` or, from a browser, the subprotocol `bearer.KEY`
beside one the server picks (`new WebSocket(url, ["victorian-gpt", "bearer." + KEY])`), see auth.py.
"""

from __future__ import annotations

import asyncio
import json

import pydantic
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from . import textgen
from .auth import BEARER_SUBPROTOCOL, websocket_subprotocols

CLOSE_BAD_INPUT, CLOSE_FAILURE, CLOSE_TRY_AGAIN = 1008, 1011, 1013


def websocket_router(server, request_model) -> APIRouter:
    """`request_model`: the server's `GenerateRequest` (the body of `/generate_stream`)."""
    router = APIRouter()

    async def refuse(websocket: WebSocket, message: str, error_type: str, code: int):
        await websocket.send_text(json.dumps({"error": message, "error_type": error_type}))
        await websocket.close(code=code, reason=error_type)

    @router.websocket("/generate_ws")
    async def generate_ws(websocket: WebSocket):
        offered = websocket_subprotocols(websocket.headers.get("sec-websocket-protocol"))
        chosen = next((p for p in offered if not p.startswith(BEARER_SUBPROTOCOL)), None)
        await websocket.accept(subprotocol=chosen)
        incoming: asyncio.Queue = asyncio.Queue()

        async def receive():  # ends when the client goes away: that is how a stream learns it should stop
            try:
                while True:
                    message = await websocket.receive()
                    if message["type"] == "websocket.disconnect":
                        return
                    text = message.get("text")
                    incoming.put_nowait(text if text is not None else (message.get("bytes") or b"").decode("utf-8", "replace"))
            finally:
                incoming.put_nowait(None)

        receiver = asyncio.ensure_future(receive())
        try:
            while True:
                frame = await incoming.get()
                if frame is None:
                    return
                try:
                    req = request_model.model_validate_json(frame)
                    if req.parameters.decoder_input_details:
                        raise textgen.ValidationError(
                            "`decoder_input_details` == true is not supported when streaming tokens")
                    generation = server.start(req)
                except pydantic.ValidationError as error:
                    first = error.errors()[0] if error.errors() else {}
                    where = ".".join(str(x) for x in first.get("loc", ()))
                    server.metrics_registry.failure("validation")
                    await refuse(websocket, f"Failed to deserialize the JSON body: `{where}`: "
                                            f"{first.get('msg', error)}", "validation", CLOSE_BAD_INPUT)
                    return
                except textgen.ValidationError as error:
                    server.metrics_registry.failure("validation")
                    await refuse(websocket, str(error), "validation", CLOSE_BAD_INPUT)
                    return
                except textgen.Overloaded as error:
                    server.metrics_registry.failure("overloaded")
                    await refuse(websocket, str(error), "overloaded", CLOSE_TRY_AGAIN)
                    return
                streaming = asyncio.ensure_future(stream(websocket, req, generation))
                try:
                    await asyncio.wait({streaming, receiver}, return_when=asyncio.FIRST_COMPLETED)
                    if not streaming.done():  # the client went away mid-stream
                        generation.cancel()
                        streaming.cancel()
                        return
                    failure = streaming.result()
                finally:
                    generation.cancel()  # no-op once finished
                if failure is not None:
                    await refuse(websocket, failure, "generation", CLOSE_FAILURE)
                    return
        except (WebSocketDisconnect, RuntimeError):  # sending to a socket the client closed
            return
        finally:
            receiver.cancel()

    async def stream(websocket: WebSocket, req, generation) -> str | None:
        """Send the request's token frames; returns a failure message, or None once the last token was sent."""
        index = 0
        try:
            async for token in generation:
                index += 1
                event = {"index": index, "token": token.to_dict(),
                         "top_tokens": [t.to_dict() for t in token.top_tokens] if generation.params.top_n_tokens
                         else None,
                         "generated_text": None, "details": None}
                if token.last:
                    event["generated_text"] = server.output_text(req, generation)
                    if req.parameters.details:
                        event["details"] = server.details(generation, stream=True)
                    await websocket.send_text(json.dumps(event))
                    return None
                await websocket.send_text(json.dumps(event))
        except textgen.GenerationError as error:
            return str(error)
        return "Incomplete generation"

    return router
