"""The server's two error shapes: Text Generation Inference's `{"error", "error_type"}` on TGI's routes, and OpenAI's
`{"error": {"message", "type", "param", "code"}}` on OpenAI's (`/v1/...`) and vLLM's (`/detokenize`,
`/tokenizer_info`) routes, as the clients of each expect."""

from __future__ import annotations

from fastapi.responses import JSONResponse

OPENAI_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
                429: "rate_limit_error", 500: "server_error"}
VLLM_PATHS = ("/detokenize", "/tokenizer_info")


def openai_shaped(path: str) -> bool:
    """Whether errors on `path` take OpenAI's shape (OpenAI's and vLLM's routes) rather than TGI's."""
    return path.startswith("/v1/") or path in VLLM_PATHS


def tgi_error(status: int, message: str, error_type: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "error_type": error_type}, status_code=status, headers=headers)


def openai_error_body(message: str, status: int = 400, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": OPENAI_TYPES.get(status, "server_error"), "param": param,
                      "code": code}}


def openai_error(status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None) -> JSONResponse:
    return JSONResponse(openai_error_body(message, status, param, code), status_code=status, headers=headers)
