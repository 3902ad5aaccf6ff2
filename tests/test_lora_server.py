"""`victorian-gpt serve BASE --lora-adapters dickens=DIR,hardy=DIR`: one base model, each request choosing its adapter
(TGI's `adapter_id`, OpenAI's `model` as vLLM reads it, the WebSocket's `adapter_id`), checked against peft's merged
model on 127.0.0.1.

One server process serves the tiny export with two adapters of random weights for the whole module; each request's
greedy tokens must be those of `generate()` on that adapter merged into the base (`merge_and_unload`), whatever other
adapters decode beside it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest
import requests
from helpers.lora import make_lora_adapter, merged_model
from helpers.servers import free_port, stop_process, wait_for_http

PROMPT = "It was a dark and stormy night; the rain fell in torrents"
NEW_TOKENS = 12
BASE_NAME = "victorian-gpt"  # --served-model-name
STYLES = ("dickens", "hardy")


@pytest.fixture(scope="module")
def adapters(tiny_export, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("lora")
    return {name: make_lora_adapter(tiny_export, folder / name, seed=seed) for seed, name in enumerate(STYLES, 1)}


@pytest.fixture(scope="module")
def server(tiny_export, adapters, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("serve-lora") / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "victorian_gpt.cli", "serve", str(tiny_export), "--port", str(port),
             "--dtype", "float32", "--served-model-name", BASE_NAME,
             "--lora-adapters", ",".join(f"{name}={path}" for name, path in adapters.items())],
            stdout=out, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + "/health", proc, timeout=120, log=log)
        yield url
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def expected(tiny_export, adapters) -> dict:
    """Greedy token ids of `generate()` for PROMPT: the base (None) and each adapter merged into it (peft)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_export)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    models = {None: AutoModelForCausalLM.from_pretrained(tiny_export, trust_remote_code=True,
                                                         dtype=torch.float32).eval()}
    models.update({name: merged_model(tiny_export, path) for name, path in adapters.items()})
    out = {}
    with torch.no_grad():
        for name, model in models.items():
            generated = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, top_k=None, top_p=None,
                                       temperature=None, repetition_penalty=1.0)
            logprobs = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
            out[name] = {"ids": generated[0, ids.shape[1]:].tolist(),
                         "prompt_logprobs": logprobs.gather(-1, ids[0, 1:, None])[:, 0].tolist()}
    out["tokenizer"] = tokenizer
    # the adapters change the model: otherwise nothing below could fail
    assert out["dickens"]["ids"] != out[None]["ids"] and out["hardy"]["ids"] != out["dickens"]["ids"]
    return out


def _generate(url: str, adapter: str | None, **parameters) -> dict:
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": NEW_TOKENS, "details": True, "adapter_id": adapter,
                                             **parameters}}
    answer = requests.post(url + "/generate", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _stream_ids(url: str, adapter: str | None) -> list[int]:
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": NEW_TOKENS, "adapter_id": adapter}}
    with requests.post(url + "/generate_stream", json=body, stream=True, timeout=60) as answer:
        assert answer.status_code == 200, answer.text
        events = [json.loads(line[len("data:"):]) for line in answer.iter_lines(decode_unicode=True)
                  if line.startswith("data:")]
    return [event["token"]["id"] for event in events]


@pytest.mark.slow  # the server process
def test_each_request_decodes_with_its_own_adapter_in_one_batch(server, expected):
    """/generate and /generate_stream with `adapter_id` give the merged model's greedy tokens; sent together, the
    base's and both adapters' requests share the batch and each keeps its own tokens."""
    names = [None, *STYLES]
    answers: dict = {}

    def ask(name, route):
        answers[(name, route)] = (_generate(server, name)["details"]["tokens"] if route == "generate"
                                  else _stream_ids(server, name))

    threads = [threading.Thread(target=ask, args=(name, route)) for name in names for route in ("generate", "stream")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for name in names:
        assert [t["id"] for t in answers[(name, "generate")]] == expected[name]["ids"], name
        assert answers[(name, "stream")] == expected[name]["ids"], name
    # `adapter_id` "" is the base, as null is; decoder_input_details are the adapter's own prompt log-probabilities
    assert [t["id"] for t in _generate(server, "")["details"]["tokens"]] == expected[None]["ids"]
    prefill = _generate(server, "hardy", decoder_input_details=True)["details"]["prefill"]
    assert [t["logprob"] for t in prefill[1:]] == pytest.approx(expected["hardy"]["prompt_logprobs"], abs=1e-4)


@pytest.mark.slow  # the server process
def test_clients_choose_the_adapter(server, expected, monkeypatch):
    """huggingface_hub's InferenceClient (`adapter_id`), the `openai` client (`model`) and a WebSocket (`adapter_id`
    in its parameters) reach the same adapters."""
    import asyncio

    import huggingface_hub.constants
    import websockets
    from huggingface_hub import InferenceClient
    from openai import OpenAI

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the server is on 127.0.0.1
    tokenizer = expected["tokenizer"]
    text = {name: tokenizer.decode(expected[name]["ids"], skip_special_tokens=True) for name in (None, *STYLES)}

    answer = InferenceClient(server).text_generation(PROMPT, max_new_tokens=NEW_TOKENS, adapter_id="dickens",
                                                     details=True)
    assert [t.id for t in answer.details.tokens] == expected["dickens"]["ids"]

    client = OpenAI(base_url=server + "/v1", api_key="-", max_retries=0)
    for model, name in ((BASE_NAME, None), ("dickens", "dickens"), ("hardy", "hardy")):
        completion = client.completions.create(model=model, prompt=PROMPT, max_tokens=NEW_TOKENS, temperature=0)
        assert completion.model == model and completion.choices[0].text == text[name], model
    echoed = client.completions.create(model="hardy", prompt=PROMPT, max_tokens=0, echo=True, logprobs=0)
    assert echoed.choices[0].logprobs.token_logprobs[1:] == pytest.approx(expected["hardy"]["prompt_logprobs"],
                                                                           abs=1e-4)

    async def over_websocket(adapter):
        async with websockets.connect(server.replace("http", "ws") + "/generate_ws") as socket:
            await socket.send(json.dumps({"inputs": PROMPT, "parameters": {"max_new_tokens": NEW_TOKENS,
                                                                           "adapter_id": adapter}}))
            ids = []
            while True:
                event = json.loads(await socket.recv())
                if "error" in event:
                    return event, socket.close_code if socket.close_code else (await _closed(socket))
                ids.append(event["token"]["id"])
                if event["generated_text"] is not None:
                    return ids, None

    assert asyncio.run(over_websocket("hardy")) == (expected["hardy"]["ids"], None)
    refused, code = asyncio.run(over_websocket("austen"))
    assert refused == {"error": "unknown adapter 'austen'; this server has: dickens, hardy",
                       "error_type": "validation"} and code == 1008


async def _closed(socket) -> int:
    try:
        await socket.recv()
    except Exception:  # noqa: BLE001 - the server closed the socket
        pass
    return socket.close_code


@pytest.mark.slow  # the server process
def test_info_and_models_list_the_adapters_and_unknown_ones_are_refused(server, adapters):
    info = requests.get(server + "/info", timeout=10).json()
    assert info["lora_adapters"] == list(STYLES)

    models = requests.get(server + "/v1/models", timeout=10).json()["data"]
    assert [(m["id"], m["parent"]) for m in models] == [(BASE_NAME, None), ("dickens", BASE_NAME),
                                                        ("hardy", BASE_NAME)]
    assert [m["root"] for m in models[1:]] == [str(adapters["dickens"]), str(adapters["hardy"])]

    refusal = {"error": "unknown adapter 'austen'; this server has: dickens, hardy", "error_type": "validation"}
    for route in ("/generate", "/generate_stream", "/"):
        answer = requests.post(server + route, timeout=30, json={
            "inputs": PROMPT, "parameters": {"max_new_tokens": 2, "adapter_id": "austen"}})
        assert (answer.status_code, answer.json()) == (422, refusal), route

    from openai import NotFoundError, OpenAI

    client = OpenAI(base_url=server + "/v1", api_key="-", max_retries=0)
    with pytest.raises(NotFoundError) as refused:
        client.completions.create(model="austen", prompt=PROMPT, max_tokens=2)
    error = refused.value.body
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert error["message"] == "The model `austen` does not exist; this server has: victorian-gpt, dickens, hardy"


def test_serve_refuses_bad_adapters_in_one_line(tiny_export, tmp_path, capsys):
    """A malformed list is argparse's error (as any malformed flag); a folder that is no adapter, or none at all, is
    the server's one-line start-up error: exit 2 before anything is served."""
    from serving.server import main

    with pytest.raises(SystemExit) as stopped:
        main([str(tiny_export), "--lora-adapters", f"dickens={tmp_path},dickens={tiny_export}"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "victorian-gpt serve: error: argument --lora-adapters: LoRA adapter name 'dickens' is given twice")

    for source, message in ((tmp_path / "no-such-adapter", "no such folder"), (tiny_export, "no adapter_config.json")):
        assert main([str(tiny_export), "--port", str(free_port()), "--lora-adapters", f"dickens={source}"]) == 2
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("victorian-gpt serve")]
        assert len(errors) == 1 and errors[0].startswith("victorian-gpt serve: --lora-adapters: LoRA adapter "
                                                         "'dickens'") and message in errors[0], err
        assert "Traceback" not in err
