"""VictorianGPT — a Gradio Space that continues an opening in the manner of a Victorian novel.

    MODEL_ID=USER/victorian-gpt python spaces_app/app.py     # a Hub repo id or a local export folder
    TGI_URL=http://127.0.0.1:8080 python spaces_app/app.py   # stream from a TGI endpoint (e.g. `victorian-gpt serve`)

Locally the model is loaded through the Auto classes, and every visitor's request goes through one batching engine
(the package serving/textgen/, `textgen.Engine`): the running generations decode together, one token each per
step, so several visitors share the cores' reading of the weights instead of competing for them. Each streams token
by token. The Stop button, a closed tab or an error ends the Gradio generator, which takes its sequence out of the
batch at the next step. Environment: MODEL_ID, TGI_URL, CONCURRENCY_LIMIT (generations decoded together, default 8),
QUANTIZE (`int8`: int8 linear layers, the fast CPU path), DTYPE (`auto`, the default: bf16 where the hardware
computes it natively, else the model's own; `float32`: the exact path), TRUST_REMOTE_CODE (`1` lets a Hub model with
remote code run it; a local folder's code is trusted and a native model needs none), BATCH_INVARIANT (`1`, the
default: a seed gives the same text whatever else is being generated; `0` gives that up for speed in large batches),
PREFIX_CACHE_TOKENS (the KV of
recently seen openings, such as the examples, is kept for this many tokens, default 4096; 0 = off),
LORA_ADAPTERS (styles: LoRA adapters of the model, `dickens=USER/dickens-lora,hardy=USER/hardy-lora@REVISION` or
local folders, offered in the Style menu beside "none", the model itself; all decode together in one batch),
GRADIO_SERVER_NAME / GRADIO_SERVER_PORT.

Style: each generation uses the style chosen (an adapter's name, or "none"); the history records it. In TGI_URL mode
the styles are the endpoint's own adapters (its /info `lora_adapters`), passed as TGI's `adapter_id`.

Reflow (a checkbox, on by default): Project Gutenberg's text, and so the model's, is hard-wrapped at about 70
characters; the Continuation box joins the single line breaks inside a paragraph, keeps paragraph breaks (a blank
line) and drops leading line breaks, so prose reads as prose. Only the display changes: the API (`/generate`) returns
the raw text, and the history keeps and downloads it.

Seed: an empty box (or no seed / None through the API) draws a fresh random seed for each press; a number gives the
same text every time with the same settings. History: each finished or stopped generation of the visitor's session
(prompt, settings, the seed actually used, text) is kept in a `gr.State` and shown in a panel, with JSON Lines and
Markdown downloads built as `data:` URLs in the page. No file is written on the server: the history lives only in
the session's state, which Gradio drops after the visitor closes the page.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import os
import random
import re
import time
import urllib.request
from collections.abc import Iterator

import gradio as gr
from huggingface_hub import InferenceClient
from transformers import GenerationConfig

try:
    from serving import textgen
except ImportError:  # on the Space, push-space puts the textgen/ package beside app.py
    import textgen

logger = logging.getLogger("victorian_gpt.space")

CONCURRENCY_LIMIT = int(os.environ.get("CONCURRENCY_LIMIT", "8"))  # the engine decodes these together
QUANTIZE = os.environ.get("QUANTIZE") or None  # "int8": see textgen.quantize_int8
DTYPE = os.environ.get("DTYPE") or "auto"  # see textgen.load_model
TRUST_REMOTE_CODE = os.environ.get("TRUST_REMOTE_CODE", "").lower() in ("1", "true", "yes")
PREFIX_CACHE_TOKENS = int(os.environ.get("PREFIX_CACHE_TOKENS", "4096"))  # KV of repeated openings kept; 0 = off
# a seed gives the same text whatever else is being written (textgen.invariant); 0 trades that for speed in big batches
BATCH_INVARIANT = os.environ.get("BATCH_INVARIANT", "1").lower() not in ("0", "false", "no")
# how long one pass may write; past the model's context the context shifts (textgen.ContextShift), so a chapter fits
MAX_NEW_TOKENS = int(os.environ.get("MAX_NEW_TOKENS", "4096"))
# styles: LoRA adapters of the model, name=folder-or-Hub-id[@revision], comma-separated (textgen.parse_lora_adapters)
LORA_ADAPTERS = os.environ.get("LORA_ADAPTERS", "")
NO_STYLE = "none"  # the Style menu's name for the model itself, without an adapter

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
    "**Generate**; the continuation appears as it is written, as long as you like: **Continue** goes on from the "
    "text so far, so a chapter is written in passes. **Stop** halts it. Top-k 1 gives greedy decoding; "
    "an empty Seed draws a new one each time, and the same seed and settings give the same text. Your generations "
    "of this visit are listed under **History**, with the seed each one used, ready to download."
)

STYLE_DESCRIPTION = (
    " **Style** writes in an author's manner: a LoRA adapter, fine-tuned on that author's books, over the same model "
    "(none: the model itself)."
)

SEED_LIMIT = 2**64  # seeds are unsigned 64-bit integers, as in Text Generation Inference
_fresh_seeds = random.SystemRandom()  # OS entropy: no other code's random.seed() can make two presses repeat


def parse_styles(value: str | dict | None) -> dict[str, str]:
    """LORA_ADAPTERS as {style name: adapter folder or Hub id}; ValueError (one line) for a malformed list or a style
    named like the model itself ("none")."""
    if isinstance(value, dict):
        adapters = dict(value)
    elif not value or not value.strip():
        return {}
    else:
        adapters = textgen.parse_lora_adapters(value)
    if NO_STYLE in adapters:
        raise ValueError(f"LORA_ADAPTERS: {NO_STYLE!r} is the Style menu's name for the model without an adapter; "
                         "give that adapter another name")
    return adapters


class LocalBackend:
    """The model loaded in this process, with its LoRA adapters (`lora_adapters`: LORA_ADAPTERS' value)."""

    def __init__(self, model_id: str, quantize: str | None = QUANTIZE, dtype: str = DTYPE,
                 trust_remote_code: bool = TRUST_REMOTE_CODE, batch_invariant: bool = BATCH_INVARIANT,
                 lora_adapters: str | dict | None = LORA_ADAPTERS):
        adapters = parse_styles(lora_adapters)  # before anything loads: a bad list is one line, not a traceback
        self.model, self.tokenizer = textgen.load_model(model_id, quantize=quantize, dtype=dtype,
                                                        trust_remote_code=trust_remote_code,
                                                        batch_invariant=batch_invariant,
                                                        **({"lora_adapters": adapters} if adapters else {}))
        self.styles = (NO_STYLE, *getattr(self.model, "lora_adapters", ()))
        self.precision = self.model.serving_dtype  # e.g. "bfloat16 (auto: the CPU computes bf16 (amx_bf16))"
        window = textgen.context_length(self.model, self.tokenizer)
        self.limits = textgen.Limits.for_model(self.model, self.tokenizer, max_total_tokens=window + MAX_NEW_TOKENS)
        self.defaults = textgen.sampling_defaults(self.model.generation_config)
        self.max_new_tokens = MAX_NEW_TOKENS
        self.source = model_id + (f" ({quantize})" if quantize else "")
        # Gradio's queue admits CONCURRENCY_LIMIT requests at once; the engine batches exactly those
        self.engine = textgen.Engine(self.model, self.tokenizer, limits=self.limits,
                                     max_batch_size=CONCURRENCY_LIMIT, max_concurrent_requests=CONCURRENCY_LIMIT,
                                     prefix_cache_tokens=PREFIX_CACHE_TOKENS)

    def stream(self, prompt: str, controls: dict, adapter: str | None = None) -> Iterator[str]:
        """The growing continuation (with the LoRA adapter `adapter`; None: the model itself); closing this
        generator cancels the generation. A text longer than the model reads at once is continued from its end, with
        a notice."""
        length = len(self.tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"])
        parameters = textgen.control_parameters(**controls)
        if length > self.limits.max_input_tokens:
            parameters["truncate"] = self.limits.max_input_tokens
            gr.Info(f"The text is {length} tokens; the model reads its last {self.limits.max_input_tokens} and goes "
                    "on from there.")
        input_ids, params = textgen.prepare_request(self.tokenizer, prompt, self.limits, adapter_id=adapter,
                                                    **parameters)
        text = ""
        with self.engine.submit(input_ids, params) as generation:
            for token in generation:
                if not token.special and token.text:
                    text += token.text
                    yield text
        if generation.generated_text != text:  # bytes held back mid-character, or special tokens
            yield generation.generated_text


class TGIBackend:
    """A Text Generation Inference endpoint, through `huggingface_hub.InferenceClient`."""

    def __init__(self, url: str, model_id: str | None = None):
        self.url, self.client_class = url, InferenceClient
        try:  # the model's own defaults, if we know which model the endpoint serves
            config = GenerationConfig.from_pretrained(model_id) if model_id else GenerationConfig()
        except OSError:
            config = GenerationConfig()
        self.defaults = textgen.sampling_defaults(config)
        try:  # TGI's /info (InferenceClient.get_endpoint_info only knows the hf-inference provider)
            with urllib.request.urlopen(url.rstrip("/") + "/info", timeout=10) as response:
                info = json.load(response)
            self.max_new_tokens = int(info["max_total_tokens"]) - 1
            self.max_input_tokens = int(info["max_input_tokens"])
            self.precision = info.get("dtype") or info.get("model_dtype")  # ours says why; TGI's the dtype alone
            adapters = info.get("lora_adapters") or []  # the endpoint's LoRA adapters, picked by `adapter_id`
        except Exception as error:  # the endpoint may still be starting: keep a sensible slider
            logger.warning("could not read %s/info (%s)", url, error)
            self.max_new_tokens, self.max_input_tokens, self.precision, adapters = 1024, None, None, []
        self.styles = (NO_STYLE, *(name for name in adapters if name != NO_STYLE))
        self.source = url

    def stream(self, prompt: str, controls: dict, adapter: str | None = None) -> Iterator[str]:
        client = self.client_class(self.url)
        text = ""
        try:
            outputs = client.text_generation(  # a longer text is read from its end (TGI's `truncate`)
                prompt, stream=True, details=True, return_full_text=False, truncate=self.max_input_tokens,
                adapter_id=adapter, **textgen.control_parameters(**controls)
            )
            for output in outputs:
                if not output.token.special and output.token.text:
                    text += output.token.text
                    yield text
                if output.generated_text is not None and output.generated_text != text:
                    yield output.generated_text
        finally:
            client.close()  # drops the HTTP stream: the endpoint stops generating


def parse_seed(seed) -> int | None:
    """The Seed box (a string) or the API's value: empty or None means "draw a fresh one"; else a whole number."""
    if seed is None or (isinstance(seed, str) and not seed.strip()):
        return None
    value = None
    if isinstance(seed, int) and not isinstance(seed, bool):
        value = seed
    elif isinstance(seed, float) and seed.is_integer():
        value = int(seed)
    elif isinstance(seed, str):
        try:
            value = int(seed.strip())
        except ValueError:
            pass
    if value is None or not 0 <= value < SEED_LIMIT:
        raise gr.Error(f"Seed must be a whole number from 0 to {SEED_LIMIT - 1}, or empty for a new random seed.")
    return value


def parse_style(style, styles: tuple[str, ...]) -> str:
    """The Style menu's value (or the API's): empty or None is "none", the model without an adapter."""
    style = (style or "").strip() or NO_STYLE
    if style not in styles:
        raise gr.Error(f"Unknown style {style!r}; this Space has: {', '.join(styles)}.")
    return style


def make_generate(backend):
    def generate(prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed=None, style=None, *,
                 written=""):
        """Continue `prompt` (and `written`, the text a previous pass wrote after it: Continue) in `style` (a LoRA
        adapter's name, or "none"), yielding (the text so far after the prompt, this generation's record for the
        history)."""
        if not prompt or not prompt.strip():
            raise gr.Error("Write an opening first (or pick an example).")
        written = written or ""
        style = parse_style(style, backend.styles)
        do_sample = backend.defaults["do_sample"]
        seed = parse_seed(seed)
        if do_sample and seed is None:
            seed = _fresh_seeds.randrange(2**32)  # short enough to type back into the box
        try:
            controls = dict(
                max_new_tokens=int(max_new_tokens),
                do_sample=do_sample,
                temperature=float(temperature),
                top_k=int(top_k),
                top_p=float(top_p),
                repetition_penalty=float(repetition_penalty),
                seed=seed if do_sample else None,  # greedy decoding draws nothing
            )
        except (TypeError, ValueError) as error:
            raise gr.Error(f"Every setting needs a number: {error}") from error
        record = dict(time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), model=backend.source, style=style,
                      prompt=prompt + written, **controls, generated_text="", stopped=True)
        # Each update carries this generation's record; the event that follows the end or a Stop adds the last one
        # to the history. The first update clears the box and replaces the record a failed generation may have left;
        # the text is then held back by one update so that the last one can say `stopped=False`.
        yield written, record
        text = None
        try:
            for text_so_far in backend.stream(prompt + written, controls, None if style == NO_STYLE else style):
                if text is not None:
                    yield written + text, dict(record, generated_text=text)
                text = text_so_far
        except textgen.ValidationError as error:
            raise gr.Error(str(error)) from error
        except textgen.Overloaded as error:
            raise gr.Error("The model is busy with other visitors; please try again in a moment.") from error
        except Exception as error:  # anything inside generate(), or the endpoint's own validation errors
            logger.exception("generation failed")
            raise gr.Error(f"Generation failed: {error}") from error
        yield written + (text or ""), dict(record, generated_text=text or "", stopped=False)

    return generate


def make_continue(backend):
    generate = make_generate(backend)

    def continue_text(prompt, written, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed=None,
                      style=None):
        """Continue what is shown (the opening and what the passes so far wrote) with the same settings (a style
        may change between passes): a chapter is written in passes. Yields the whole text after the opening, and this
        pass's record."""
        if not (written or "").strip():
            raise gr.Error("Generate first: Continue goes on from the text written so far.")
        yield from generate(prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, style,
                            written=written)

    return continue_text


def reflow(text: str) -> str:
    """Prose as prose: single line breaks inside a paragraph become spaces, paragraph breaks (a blank line, with any
    whitespace on it) stay one blank line, and no leading whitespace (the stray line break after an opening)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").lstrip()
    paragraphs = re.split(r"\n[ \t]*\n\s*", text)
    return "\n\n".join(re.sub(r"[ \t]*\n[ \t]*", " ", paragraph) for paragraph in paragraphs)


def show_text(raw: str | None, reflowed: bool) -> str:
    """What the Continuation box shows of the raw text."""
    return reflow(raw or "") if reflowed else (raw or "")


# ---- history: the visitor's generations during this visit, kept in gr.State and downloadable without server files


def add_to_history(run, history):
    """After a generation ends or is stopped: its record joins the history (once)."""
    history = list(history or [])
    if run is not None:
        history.append(run)
    return None, history, history_html(history), downloads_html(history)


def clear_history():
    return [], history_html([]), downloads_html([])


def settings_line(entry: dict) -> str:
    if not entry["do_sample"]:
        sampling = "greedy"
    else:
        sampling = " · ".join([f"seed {entry['seed']}", f"temperature {entry['temperature']:g}",
                               f"top-k {entry['top_k']}", f"top-p {entry['top_p']:g}"])
    line = f"{sampling} · repetition penalty {entry['repetition_penalty']:g} · max new tokens {entry['max_new_tokens']}"
    style = entry.get("style") or NO_STYLE
    if style != NO_STYLE:
        line = f"style {style} · {line}"
    return line + (" · stopped" if entry["stopped"] else "")


def history_html(history: list[dict]) -> str:
    if not history:
        return "<p class='vg-empty'>No generations yet. Each one appears here, newest first, with its settings and " \
               "seed; the list lasts as long as this page is open.</p>"
    items = []
    for number, entry in reversed(list(enumerate(history, 1))):
        items.append(
            f"<div class='vg-entry' data-seed='{entry['seed'] if entry['seed'] is not None else ''}' "
            f"data-style='{html.escape(entry.get('style') or NO_STYLE, quote=True)}'>"
            f"<div class='vg-meta'><b>#{number}</b> · {html.escape(settings_line(entry))}</div>"
            f"<div class='vg-text' style='white-space: pre-wrap'><b>{html.escape(entry['prompt'])}</b>"
            f"{html.escape(entry['generated_text'])}</div></div>"
        )
    return "<div class='vg-history'>" + "".join(items) + "</div>"


def history_jsonl(history: list[dict]) -> str:
    return "".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in history)


def history_markdown(history: list[dict]) -> str:
    lines = ["# VictorianGPT: generations", ""]
    for number, entry in enumerate(history, 1):
        quoted = "\n".join("> " + line if line else ">" for line in entry["prompt"].splitlines())
        lines += [f"## {number}", "", f"*{settings_line(entry)} · model `{entry['model']}` · {entry['time']}*", "",
                  quoted, "", entry["generated_text"], ""]
    return "\n".join(lines)


def _data_url(text: str, mime: str) -> str:
    return f"data:{mime};charset=utf-8;base64," + base64.b64encode(text.encode("utf-8")).decode("ascii")


def downloads_html(history: list[dict]) -> str:
    """Download links whose content is in the link itself (data: URLs): the browser saves it, the server keeps none."""
    if not history:
        return "<p class='vg-empty'>Downloads appear after the first generation.</p>"
    links = [("history-jsonl", "victorian-gpt-history.jsonl", history_jsonl(history), "application/x-ndjson",
              "JSON Lines"),
             ("history-md", "victorian-gpt-history.md", history_markdown(history), "text/markdown", "Markdown")]
    return "<div class='vg-downloads'>Download this history: " + " · ".join(
        f"<a id='{elem}' download='{name}' href='{_data_url(text, mime)}'>{label}</a>"
        for elem, name, text, mime, label in links) + "</div>"


def build_demo(model_id: str | None = None, tgi_url: str | None = None,
               lora_adapters: str | dict | None = LORA_ADAPTERS) -> gr.Blocks:
    if tgi_url:
        backend = TGIBackend(tgi_url, model_id)
    elif model_id:
        backend = LocalBackend(model_id, lora_adapters=lora_adapters)
    else:
        raise SystemExit("Set MODEL_ID (a Hub repo id or a local export folder) or TGI_URL.")
    d = backend.defaults

    with gr.Blocks(title="VictorianGPT") as demo:
        styled = len(backend.styles) > 1
        gr.Markdown("# VictorianGPT\n" + DESCRIPTION + (STYLE_DESCRIPTION if styled else ""))
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(label="Opening", lines=4, placeholder=EXAMPLES[0], elem_id="prompt")
                with gr.Row():
                    generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
                    continue_button = gr.Button("Continue", elem_id="continue")
                    stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
                output = gr.Textbox(label="Continuation", lines=14, interactive=False, elem_id="output",
                                    buttons=["copy"])
                reflow_box = gr.Checkbox(value=True, label="Reflow", elem_id="reflow",
                                         info="join the hard-wrapped lines of a paragraph; the raw text stays in the "
                                              "API and the history download")
                # the raw text, as the API returns it: rendered (so that its changes trigger events) but not shown
                raw_output = gr.Textbox(visible="hidden", elem_id="raw-output", interactive=False)
            with gr.Column(scale=2):
                max_new_tokens = gr.Slider(1, backend.max_new_tokens, step=1, label="Max new tokens",
                                           value=min(d["max_new_tokens"], backend.max_new_tokens),
                                           elem_id="max_new_tokens")
                temperature = gr.Slider(0.1, 2.0, value=d["temperature"], step=0.05, label="Temperature")
                top_k = gr.Slider(0, 100, value=d["top_k"], step=1, label="Top-k", info="0 = off, 1 = greedy")
                top_p = gr.Slider(0.0, 1.0, value=d["top_p"], step=0.01, label="Top-p", info="1 = off")
                repetition_penalty = gr.Slider(1.0, 2.0, value=d["repetition_penalty"], step=0.05,
                                               label="Repetition penalty")
                # a Textbox, not a Number: gr.Number shows and sends 0 when empty, which would fix every seed
                seed = gr.Textbox(value="", label="Seed", placeholder="random", max_lines=1, elem_id="seed",
                                  info="empty = a new random seed each time; a number gives the same text every time")
                # the model's LoRA adapters (LORA_ADAPTERS); hidden, and "none" only, when it was given none
                style = gr.Dropdown(list(backend.styles), value=NO_STYLE, label="Style", elem_id="style",
                                    info="an author's manner (a LoRA adapter of the model); none = the model itself",
                                    visible=True if styled else "hidden")
                precision = f" · precision: {backend.precision}" if backend.precision else ""
                gr.Markdown(f"<small>Model: `{backend.source}`{html.escape(precision)}</small>", elem_id="model-info")
        gr.Examples(EXAMPLES, inputs=prompt)
        with gr.Accordion("History", open=True):
            history_panel = gr.HTML(history_html([]), elem_id="history", max_height=480)
            with gr.Row():
                downloads = gr.HTML(downloads_html([]), elem_id="history-downloads")
                clear_button = gr.Button("Clear history", size="sm", elem_id="clear-history", scale=0)
        history = gr.State([])  # this visit's records; Gradio deletes it some time after the page is closed
        run = gr.State(None)  # the record of the generation in progress

        inputs = [prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, style]
        event = generate_button.click(make_generate(backend), inputs, [raw_output, run], api_name="generate",
                                      concurrency_limit=CONCURRENCY_LIMIT)
        continued = continue_button.click(make_continue(backend), [prompt, raw_output, *inputs[1:]], [raw_output, run],
                                          api_name="continue", concurrency_limit=CONCURRENCY_LIMIT)
        for trigger in (raw_output, reflow_box):  # the display follows the raw text and the checkbox
            trigger.change(show_text, [raw_output, reflow_box], output, queue=False, show_progress="hidden",
                           trigger_mode="always_last", api_visibility="private")
        # runs after the generation finishes or is stopped (not after an error)
        for each in (event, continued):
            each.then(add_to_history, [run, history], [run, history, history_panel, downloads], queue=False,
                      api_visibility="private")
        # Cancelling the event closes the generator, whose cleanup cancels the generation thread.
        stop_button.click(None, cancels=[event, continued], api_visibility="private")
        clear_button.click(clear_history, None, [history, history_panel, downloads], queue=False,
                           api_visibility="private")

    demo.queue(default_concurrency_limit=CONCURRENCY_LIMIT, max_size=64)
    return demo


def main():
    """The Space: its settings from the environment; a model, adapter or setting it cannot start with is one line
    (SystemExit), before it serves."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        demo = build_demo(os.environ.get("MODEL_ID"), os.environ.get("TGI_URL"), os.environ.get("LORA_ADAPTERS", ""))
    except (OSError, ValueError) as error:
        raise SystemExit(f"app.py: cannot start: {error}") from None
    demo.launch()


if __name__ == "__main__":
    main()
