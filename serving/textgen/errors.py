"""The errors a request can end with, as Text Generation Inference names them (its `error_type`)."""

from __future__ import annotations


class ValidationError(ValueError):
    """A request parameter is out of range. The message follows TGI's wording (HTTP 422, error_type validation)."""


class GenerationError(RuntimeError):
    """The computation failed (in `generate()` or the engine's step): TGI's error_type `generation`."""


class Overloaded(RuntimeError):
    """More requests in flight than `max_concurrent_requests` (TGI answers 429, error_type `overloaded`)."""
