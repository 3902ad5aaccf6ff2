"""VictorianGPT — a Gradio Space that continues an opening in the manner of a Victorian novel.

    MODEL_ID=USER/victorian-gpt python spaces_app/app.py     # a Hub repo id or a local export folder
    TGI_URL=http://127.0.0.1:8080 python spaces_app/app.py   # stream from a TGI endpoint (e.g. `victorian-gpt serve`)

Locally the model is loaded through the Auto classes with `trust_remote_code=True` and each request runs `generate()`
in a background thread, streamed token by token (spaces_app/textgen.py). The Stop button, a closed tab or an error
ends the Gradio generator, which cancels the generation at its next token. Environment: MODEL_ID, TGI_URL,
CONCURRENCY_LIMIT (requests computed at once, default 2), GRADIO_SERVER_NAME / GRADIO_SERVER_PORT.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from collections.abc import Iterator

import gradio as gr

try:
    from spaces_app import textgen
except ImportError:  # on the Space, textgen.py sits beside app.py
    import textgen

logger = logging.getLogger("victorian_gpt.space")

CONCURRENCY_LIMIT = int(os.environ.get("CONCURRENCY_LIMIT", "2"))

EXAMPLES = [
    "It was a dark and stormy night; the rain fell in torrents, except at occasional intervals,",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune,",
    "The fog lay thick upon the river, and the lamplighter had scarcely begun his round, when",
    "My dear Mrs. Fairfax, I write to you from the parsonage in some haste, for",
    "Upon the death of old Mr. Dombey the house in Bloomsbury Square was shut up, and",
]

DESCRIPTION = (
    "A small GPT trained from scratch on Victorian books from "
    "[PG19](https://huggingface.co/datasets/emozilla/pg19). Write an opening (or pick one below) and press "
    "**Generate**; the continuation appears as it is written. **Stop** halts it. Top-k 1 gives greedy decoding; "
    "the same seed and settings give the same text."
)


class LocalBackend:
    """The model loaded in this process."""

    def __init__(self, model_id: str):
        self.model, self.tokenizer = textgen.load_model(model_id)
        self.limits = textgen.Limits.for_model(self.model, self.tokenizer)
        self.defaults = textgen.sampling_defaults(self.model.generation_config)
        self.max_new_tokens = self.limits.max_total_tokens - 1
        self.source = model_id

    def stream(self, prompt: str, controls: dict) -> Iterator[str]:
        """The growing continuation; closing this generator cancels the generation."""
        input_ids, params = textgen.prepare_request(
            self.tokenizer, prompt, self.limits, **textgen.control_parameters(**controls)
        )
        text = ""
        with textgen.Generation(self.model, self.tokenizer, input_ids, params) as generation:
            for token in generation:
                if not token.special and token.text:
                    text += token.text
                    yield text
        if generation.generated_text != text:  # bytes held back mid-character, or special tokens
            yield generation.generated_text


class TGIBackend:
    """A Text Generation Inference endpoint, through `huggingface_hub.InferenceClient`."""

    def __init__(self, url: str, model_id: str | None = None):
        from huggingface_hub import InferenceClient
        from transformers import GenerationConfig

        self.url, self.client_class = url, InferenceClient
        try:  # the model's own defaults, if we know which model the endpoint serves
            config = GenerationConfig.from_pretrained(model_id) if model_id else GenerationConfig()
        except OSError:
            config = GenerationConfig()
        self.defaults = textgen.sampling_defaults(config)
        try:  # TGI's /info (InferenceClient.get_endpoint_info only knows the hf-inference provider)
            with urllib.request.urlopen(url.rstrip("/") + "/info", timeout=10) as response:
                self.max_new_tokens = int(json.load(response)["max_total_tokens"]) - 1
        except Exception as error:  # the endpoint may still be starting: keep a sensible slider
            logger.warning("could not read %s/info (%s)", url, error)
            self.max_new_tokens = 1024
        self.source = url

    def stream(self, prompt: str, controls: dict) -> Iterator[str]:
        client = self.client_class(self.url)
        text = ""
        try:
            outputs = client.text_generation(
                prompt, stream=True, details=True, return_full_text=False, **textgen.control_parameters(**controls)
            )
            for output in outputs:
                if not output.token.special and output.token.text:
                    text += output.token.text
                    yield text
                if output.generated_text is not None and output.generated_text != text:
                    yield output.generated_text
        finally:
            client.close()  # drops the HTTP stream: the endpoint stops generating


def make_generate(backend):
    def generate(prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed):
        """Continue `prompt`, yielding the text as it grows."""
        if not prompt or not prompt.strip():
            raise gr.Error("Write an opening first (or pick an example).")
        controls = dict(
            max_new_tokens=max_new_tokens,
            do_sample=backend.defaults["do_sample"],
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            seed=None if seed is None or seed == "" else int(seed),
        )
        try:
            yield from backend.stream(prompt, controls)
        except textgen.ValidationError as error:
            raise gr.Error(str(error)) from error
        except Exception as error:  # anything inside generate(), or the endpoint's own validation errors
            logger.exception("generation failed")
            raise gr.Error(f"Generation failed: {error}") from error

    return generate


def build_demo(model_id: str | None = None, tgi_url: str | None = None) -> gr.Blocks:
    if tgi_url:
        backend = TGIBackend(tgi_url, model_id)
    elif model_id:
        backend = LocalBackend(model_id)
    else:
        raise SystemExit("Set MODEL_ID (a Hub repo id or a local export folder) or TGI_URL.")
    d = backend.defaults

    with gr.Blocks(title="VictorianGPT") as demo:
        gr.Markdown("# VictorianGPT\n" + DESCRIPTION)
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(label="Opening", lines=4, placeholder=EXAMPLES[0], elem_id="prompt")
                with gr.Row():
                    generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
                output = gr.Textbox(label="Continuation", lines=14, interactive=False, elem_id="output",
                                    buttons=["copy"])
            with gr.Column(scale=2):
                max_new_tokens = gr.Slider(1, backend.max_new_tokens, step=1, label="Max new tokens",
                                           value=min(d["max_new_tokens"], backend.max_new_tokens),
                                           elem_id="max_new_tokens")
                temperature = gr.Slider(0.1, 2.0, value=d["temperature"], step=0.05, label="Temperature")
                top_k = gr.Slider(0, 100, value=d["top_k"], step=1, label="Top-k", info="0 = off, 1 = greedy")
                top_p = gr.Slider(0.0, 1.0, value=d["top_p"], step=0.01, label="Top-p", info="1 = off")
                repetition_penalty = gr.Slider(1.0, 2.0, value=d["repetition_penalty"], step=0.05,
                                               label="Repetition penalty")
                seed = gr.Number(value=None, precision=0, label="Seed", info="empty = a new random seed each time")
                gr.Markdown(f"<small>Model: `{backend.source}`</small>")
        gr.Examples(EXAMPLES, inputs=prompt)

        inputs = [prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed]
        event = generate_button.click(make_generate(backend), inputs, output, api_name="generate",
                                      concurrency_limit=CONCURRENCY_LIMIT)
        # Cancelling the event closes the generator, whose cleanup cancels the generation thread.
        stop_button.click(None, cancels=[event], api_visibility="private")

    demo.queue(default_concurrency_limit=CONCURRENCY_LIMIT, max_size=64)
    return demo


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    build_demo(os.environ.get("MODEL_ID"), os.environ.get("TGI_URL")).launch()
