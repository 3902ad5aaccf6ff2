"""`victorian-gpt serve`: Text Generation Inference's HTTP API, checked with TGI's own clients on 127.0.0.1.

One server process (the real console entry point, with its batching engine) serves a random small export for the
whole module; its log is read to see that a client which hangs up really stops its generation, and /proc to see that
nothing is left behind.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import torch
from helpers.servers import free_port, stop_process, wait_for_http

PROMPT = "It was a dark and stormy night; the rain fell in torrents"
GEN_LINE = re.compile(r"(gen-\d+) (finished|cancelled|failed) after (\d+)/(\d+) tokens")


@pytest.fixture(scope="module")
def server(small_export, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "victorian_gpt.cli", "serve", str(small_export), "--port", str(port),
             "--dtype", "float32"],  # the exact path: these tests compare with fp32 generate()
            stdout=out, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    server_pids[url] = proc.pid
    try:
        wait_for_http(url + "/health", proc, timeout=120, log=log)
        yield url, log
    finally:
        stop_process(proc)


server_pids: dict[str, int] = {}


def server_threads(url: str) -> int:
    status = Path(f"/proc/{server_pids[url]}/status").read_text()
    return int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))


@pytest.fixture(scope="module")
def reference(small_export):
    """The same export loaded here as a stranger would, to compare against plain `generate()`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(small_export, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(small_export, trust_remote_code=True).eval()
    return model, tokenizer


@pytest.fixture
def local_hub_client(monkeypatch):
    """conftest forces HF_HUB_OFFLINE, which also blocks InferenceClient; our server is on 127.0.0.1, so allow it."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def greedy_ids(reference, prompt: str, max_new_tokens: int, **kwargs) -> list[int]:
    model, tokenizer = reference
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    kwargs.setdefault("repetition_penalty", 1.0)  # TGI's neutral value, not the model's sampling default
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, top_k=None, top_p=None,
                         temperature=None, **kwargs)
    return out[0, ids.shape[1]:].tolist()


def wait_for_log(log, predicate, timeout=20.0):
    """The first generation record of the server log satisfying `predicate`, waiting up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for match in GEN_LINE.finditer(log.read_text()):
            if predicate(match):
                return match
        time.sleep(0.1)
    pytest.fail(f"no matching generation record in the server log:\n{log.read_text()[-2000:]}")


@pytest.mark.slow  # the server process
def test_info_and_health(server):
    url, _ = server
    assert requests.get(url + "/health", timeout=10).status_code == 200
    info = requests.get(url + "/info", timeout=10).json()
    assert info["max_total_tokens"] == 1024 and info["max_input_tokens"] == 1023
    assert info["model_pipeline_tag"] == "text-generation"
    # the batching limits, under the names of TGI's launcher flags
    assert info["max_concurrent_requests"] == 128 and info["max_batch_size"] == 32
    assert info["max_batch_total_tokens"] == 16384 and info["max_batch_prefill_tokens"] == 256
    assert info["waiting_served_ratio"] == 0.3 and info["max_waiting_tokens"] == 20
    assert info["model_dtype"] == "torch.float32" and info["dtype"] == "float32 (asked; batch-invariant decoding)"
    assert info["batch_invariant"] is True


@pytest.mark.slow  # the server process
def test_prefix_cache_serves_a_repeated_opening_and_metrics_report_it(server, reference):
    """The server's prefix cache is on by default: the same prompt twice gives the same tokens, the second time
    from cache; /info and /metrics (Prometheus text) say so."""
    url, _ = server
    before = requests.get(url + "/info", timeout=10).json()
    assert before["prefix_cache_max_tokens"] == 4096 and before["prefix_cache_block_size"] == 64
    body = {"inputs": PROMPT * 6, "parameters": {"max_new_tokens": 6, "details": True}}  # over one block of 64
    first, second = (requests.post(url + "/generate", json=body, timeout=60).json() for _ in range(2))
    ids = [[t["id"] for t in answer["details"]["tokens"]] for answer in (first, second)]
    assert ids[0] == ids[1] == greedy_ids(reference, PROMPT * 6, 6)
    logprobs = [[t["logprob"] for t in answer["details"]["tokens"]] for answer in (first, second)]
    assert logprobs[0] == logprobs[1]  # batch-invariant: the cached opening's KV has the bits it had computed
    after = requests.get(url + "/info", timeout=10).json()
    assert after["prefix_cache_hits"] >= before["prefix_cache_hits"] + 1
    assert after["prefix_cache_tokens_served"] >= before["prefix_cache_tokens_served"] + 64
    assert 0 < after["prefix_cache_size_tokens"] <= 4096
    metrics = requests.get(url + "/metrics", timeout=10)
    assert metrics.headers["content-type"].startswith("text/plain")
    values = dict(line.split() for line in metrics.text.splitlines() if not line.startswith("#"))
    assert int(values["tgi_prefix_cache_hits_total"]) == after["prefix_cache_hits"]
    assert int(values["tgi_prefix_cache_size_tokens"]) == after["prefix_cache_size_tokens"]
    assert "# TYPE tgi_prefix_cache_hits_total counter" in metrics.text and "tgi_batch_current_size" in values


@pytest.mark.slow  # the server process
def test_text_generation_client_matches_generate(server, reference):
    from text_generation import Client

    url, _ = server
    client = Client(url, timeout=60)
    expected = greedy_ids(reference, PROMPT, 16, repetition_penalty=1.3)

    response = client.generate(PROMPT, max_new_tokens=16, repetition_penalty=1.3)
    assert [t.id for t in response.details.tokens] == expected
    assert response.generated_text == reference[1].decode(expected, skip_special_tokens=True)
    assert response.details.generated_tokens == len(expected)
    assert response.details.finish_reason in ("length", "eos_token")
    assert all(t.logprob is not None and t.logprob <= 0 for t in response.details.tokens)

    # decoder_input_details: the prompt's tokens with the log-probability the model gives each
    model, tokenizer = reference
    prompt_ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    prefill = client.generate(PROMPT, max_new_tokens=1, decoder_input_details=True).details.prefill
    assert [t.id for t in prefill] == prompt_ids[0].tolist() and prefill[0].logprob is None
    with torch.no_grad():
        logprobs = torch.log_softmax(model(prompt_ids).logits[0, :-1], -1).gather(-1, prompt_ids[0, 1:, None])[:, 0]
    assert torch.allclose(torch.tensor([t.logprob for t in prefill[1:]]), logprobs, atol=1e-4)

    events = list(client.generate_stream(PROMPT, max_new_tokens=16, repetition_penalty=1.3))
    assert [e.token.id for e in events] == expected  # one event per token
    assert all(e.generated_text is None for e in events[:-1])
    assert events[-1].generated_text == response.generated_text
    assert events[-1].details.generated_tokens == len(expected)
    assert "".join(e.token.text for e in events if not e.token.special) in response.generated_text


@pytest.mark.slow  # the server process
def test_async_client_seeded_sampling(server):
    from text_generation import AsyncClient

    url, _ = server

    async def run():
        client = AsyncClient(url, timeout=60)
        kwargs = dict(max_new_tokens=12, do_sample=True, temperature=1.3, top_k=50, top_p=0.95, seed=7)
        first = await client.generate(PROMPT, **kwargs)
        again = await client.generate(PROMPT, **kwargs)
        other = await client.generate(PROMPT, **{**kwargs, "seed": 8})
        streamed = [r async for r in client.generate_stream(PROMPT, **kwargs)]
        return first, again, other, streamed

    first, again, other, streamed = asyncio.run(run())
    assert first.details.seed == 7 and first.generated_text == again.generated_text
    assert [t.id for t in first.details.tokens] != [t.id for t in other.details.tokens]
    assert [r.token.id for r in streamed] == [t.id for t in first.details.tokens]
    assert streamed[-1].generated_text == first.generated_text


@pytest.mark.slow  # the server process
def test_inference_client_stream_with_details(server, reference, local_hub_client):
    from huggingface_hub import InferenceClient

    url, _ = server
    client = InferenceClient(url)
    outputs = list(client.text_generation(PROMPT, max_new_tokens=10, stream=True, details=True))
    assert len(outputs) == 10 and [o.token.id for o in outputs] == greedy_ids(reference, PROMPT, 10)
    last = outputs[-1]
    assert last.details.finish_reason == "length" and last.details.generated_tokens == 10
    # `POST /` (where InferenceClient posts) returns the prompt too unless told otherwise, as TGI does
    generated = reference[1].decode([o.token.id for o in outputs], skip_special_tokens=True)
    assert last.generated_text == PROMPT + generated
    plain = client.text_generation(PROMPT, max_new_tokens=10, return_full_text=False)
    assert plain == generated
    detailed = client.text_generation(PROMPT, max_new_tokens=10, details=True, return_full_text=False)
    assert detailed.generated_text == generated and len(detailed.details.tokens) == 10


@pytest.mark.slow  # the server process
def test_stop_sequence(server):
    from text_generation import Client

    url, _ = server
    client = Client(url, timeout=60)
    full = client.generate(PROMPT, max_new_tokens=12).generated_text
    stop = full[5:9]  # a stop sequence the greedy text is bound to produce
    response = client.generate(PROMPT, max_new_tokens=12, stop_sequences=[stop])
    assert response.details.finish_reason == "stop_sequence"
    assert response.generated_text.endswith(stop) and full.startswith(response.generated_text)


BAD_PARAMETERS = [
    ({"temperature": 0}, "`temperature` must be strictly positive"),
    ({"top_p": 1.0}, "`top_p` must be > 0.0 and < 1.0"),
    ({"top_k": 0}, "`top_k` must be strictly positive"),
    ({"max_new_tokens": 0}, "`max_new_tokens` must be strictly positive"),
    ({"repetition_penalty": -1}, "`repetition_penalty` must be strictly positive"),
    ({"max_new_tokens": 5000}, "`inputs` tokens + `max_new_tokens` must be <= 1024"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "`stop` supports up to 4 stop sequences. Given: 5"),
    ({"truncate": 2000}, "`truncate` must be strictly positive and less than 1023"),
    ({"best_of": 2, "do_sample": True}, "`best_of` != 1 is not allowed"),
    ({"top_k": "many"}, "top_k"),
]


@pytest.mark.slow  # the server process
@pytest.mark.parametrize("route", ["/generate", "/generate_stream", "/"])
def test_bad_parameters_are_422(server, route):
    url, _ = server
    for parameters, message in BAD_PARAMETERS:
        response = requests.post(url + route, json={"inputs": PROMPT, "parameters": parameters}, timeout=30)
        assert response.status_code == 422, (parameters, response.text)
        body = response.json()
        assert body["error_type"] == "validation" and message in body["error"], (parameters, body)
    assert requests.post(url + route, json={"inputs": ""}, timeout=30).json()["error"] == "`inputs` cannot be empty"


@pytest.mark.slow  # the server process
def test_long_prompt_rejected_or_truncated(server, local_hub_client):
    import huggingface_hub
    import text_generation

    url, _ = server
    long_prompt = "the " * 1500  # > 1,023 tokens
    with pytest.raises(text_generation.errors.ValidationError, match="`inputs` tokens \\+ `max_new_tokens`"):
        text_generation.Client(url, timeout=60).generate(long_prompt, max_new_tokens=4)
    with pytest.raises(huggingface_hub.errors.ValidationError, match="must be <= 1024"):
        huggingface_hub.InferenceClient(url).text_generation(long_prompt, max_new_tokens=4)
    # with `truncate`, only the prompt's last tokens are kept, as TGI does
    events = list(text_generation.Client(url, timeout=60).generate_stream(long_prompt, max_new_tokens=4, truncate=50))
    assert len(events) == 4 and events[-1].generated_text is not None
    raw = requests.post(url + "/generate_stream", timeout=60, json={
        "inputs": long_prompt, "parameters": {"max_new_tokens": 2, "truncate": 50, "details": True}})
    last = json.loads(raw.text.strip().split("\n\n")[-1][len("data:"):])
    assert last["details"]["input_length"] == 50


@pytest.mark.slow  # the server process
def test_eight_concurrent_streams_get_their_own_tokens(server):
    """Eight seeded streams at once: each must equal the same request served alone, and they must overlap in time."""
    from text_generation import AsyncClient

    url, _ = server
    prompts = [f"{PROMPT}, said {name}," for name in ("Ann", "Bob", "Cy", "Di", "Ed", "Flo", "Gus", "Hal")]
    kwargs = dict(max_new_tokens=24, do_sample=True, temperature=1.0, top_k=50)

    async def one(client, i):
        start = time.monotonic()
        events = [e async for e in client.generate_stream(prompts[i], seed=100 + i, **kwargs)]
        return start, time.monotonic(), events

    async def run():
        client = AsyncClient(url, timeout=120)
        concurrent = await asyncio.gather(*(one(client, i) for i in range(8)))
        alone = [await client.generate(prompts[i], seed=100 + i, **kwargs) for i in range(8)]
        return concurrent, alone

    concurrent, alone = asyncio.run(run())
    for (_, _, events), single in zip(concurrent, alone):
        assert [e.token.id for e in events] == [t.id for t in single.details.tokens]
        assert events[-1].generated_text == single.generated_text
    assert len({single.generated_text for single in alone}) == 8  # distinct streams, so mixing would show
    assert max(start for start, _, _ in concurrent) < min(end for _, end, _ in concurrent)  # really concurrent


@pytest.mark.slow  # the server process
def test_disconnect_stops_generation(server):
    url, log = server
    # streaming: read a few events, then hang up
    with requests.post(url + "/generate_stream", stream=True, timeout=60,
                       json={"inputs": PROMPT + " (stream)", "parameters": {"max_new_tokens": 900}}) as response:
        lines = response.iter_lines()
        events = []
        for line in lines:
            if line.startswith(b"data:"):
                events.append(line)
                if len(events) == 3:
                    break
    record = wait_for_log(log, lambda m: m.group(4) == "900")
    assert record.group(2) == "cancelled" and int(record.group(3)) < 900, record.group(0)

    # non-streaming: give up waiting after a moment
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(url + "/generate", timeout=(5, 1.0),
                      json={"inputs": PROMPT + " (plain)", "parameters": {"max_new_tokens": 950}})
    record = wait_for_log(log, lambda m: m.group(4) == "950")
    assert record.group(2) == "cancelled" and int(record.group(3)) < 950, record.group(0)


def test_serve_rejects_a_missing_model(tmp_path):
    from serving.server import main

    assert main([str(tmp_path / "nothing-here"), "--port", str(free_port())]) == 2


def test_generation_error_reaches_the_consumer(tiny_export):
    """An exception inside generate() (here: the forward pass) is raised to whoever iterates, promptly."""
    from serving import textgen

    model, tokenizer = textgen.load_model(str(tiny_export))
    calls = {"n": 0}
    forward = model.forward

    def failing_forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("boom at step 4")
        return forward(*args, **kwargs)

    model.forward = failing_forward
    input_ids, params = textgen.prepare_request(tokenizer, PROMPT, textgen.Limits.for_model(model, tokenizer),
                                                max_new_tokens=20)
    generation = textgen.Generation(model, tokenizer, input_ids, params, timeout=30)
    start = time.monotonic()
    with pytest.raises(textgen.GenerationError, match="boom at step 4"):
        for _ in generation:
            pass
    assert time.monotonic() - start < 10 and len(generation.tokens) == 3
    assert textgen.active_generations() == 0


@pytest.mark.slow  # the server process
def test_streams_that_hang_up_at_random_leave_the_rest_intact(server):
    """Twelve concurrent streams, a third hanging up at random: the others equal their solo result, the server stays
    healthy and its threads go back to what they were (the engine has one thread, whatever the load)."""
    url, log = server
    rng = random.Random(3)
    # a first request makes the engine thread's OpenMP workers (a pool, not a leak); count after it
    requests.post(url + "/generate", timeout=60, json={"inputs": PROMPT, "parameters": {"max_new_tokens": 2}})
    threads_before = server_threads(url)
    bodies = [{"inputs": f"{PROMPT}, said number {i},", "parameters": {
        "max_new_tokens": 20, **({"do_sample": True, "top_k": 50, "seed": i} if i % 2 else {})}} for i in range(12)]
    hang_ups = {i: rng.randint(1, 10) for i in rng.sample(range(12), 4)}

    async def stream(client, i):
        ids = []
        async with client.stream("POST", url + "/generate_stream", json=bodies[i]) as response:
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    ids.append(json.loads(line[5:])["token"]["id"])
                    if len(ids) == hang_ups.get(i):
                        break
        return ids

    async def run():
        import httpx

        async with httpx.AsyncClient(timeout=120) as client:
            together = await asyncio.gather(*(stream(client, i) for i in range(12)))
            alone = [await stream(client, i) if i not in hang_ups else None for i in range(12)]
        return together, alone

    together, alone = asyncio.run(run())
    for i in range(12):
        if i in hang_ups:
            assert len(together[i]) == hang_ups[i]
        else:
            assert together[i] == alone[i] and len(alone[i]) == 20, i
    assert requests.get(url + "/health", timeout=10).status_code == 200
    deadline = time.monotonic() + 10
    while server_threads(url) != threads_before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server_threads(url) == threads_before


@pytest.mark.slow  # an HTTP server (uvicorn in a thread)
@pytest.mark.parametrize("engine", ["batch", "threads"])
def test_overload_is_429_not_a_hang(small_export, engine):
    """Past --max-concurrent-requests a request is refused at once with TGI's 429, by either engine."""
    import httpx
    import uvicorn

    from serving import textgen
    from serving.server import create_app

    model, tokenizer = textgen.load_model(str(small_export))
    model.generation_config.eos_token_id = None  # streams that only end when told to
    port = free_port()
    app = create_app(model, tokenizer, model_id="small", max_concurrent_requests=2, engine=engine)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + "/health", timeout=60)

        async def run():
            async with httpx.AsyncClient(timeout=60) as client:
                long = {"inputs": PROMPT, "parameters": {"max_new_tokens": 900}}
                async with client.stream("POST", url + "/generate_stream", json=long) as first, \
                        client.stream("POST", url + "/generate_stream", json=long) as second:
                    lines = first.aiter_lines(), second.aiter_lines()  # kept: a dropped iterator hangs up
                    await anext(lines[0]), await anext(lines[1])  # both are running
                    start = time.monotonic()
                    refused = await client.post(url + "/generate", json={"inputs": PROMPT})
                    return refused, time.monotonic() - start

        refused, seconds = asyncio.run(run())
        assert refused.status_code == 429 and seconds < 5
        assert refused.json() == {"error": "Model is overloaded", "error_type": "overloaded"}
        # the two hung-up streams leave; a slot is free again
        deadline = time.monotonic() + 20
        while textgen.active_generations() and time.monotonic() < deadline:
            time.sleep(0.1)
        answer = requests.post(url + "/generate", timeout=60, json={"inputs": PROMPT,
                                                                     "parameters": {"max_new_tokens": 3}})
        assert answer.status_code == 200 and answer.json()["generated_text"]
        info = requests.get(url + "/info", timeout=10).json()
        assert info["max_concurrent_requests"] == 2 and ("max_batch_size" in info) == (engine == "batch")
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.mark.slow  # a server process
def test_a_request_writes_past_the_models_context_when_max_total_tokens_allows(modern_tiny_export, tmp_path):
    """--max-total-tokens past the model's 128-token context: a request asks for 400 new tokens and gets the tokens
    a stranger's generate() (remote code, which shifts the context as the engine does) gives; a prompt longer than the
    context needs `truncate`, as in TGI."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from serving.server import main

    assert main([str(modern_tiny_export), "--max-total-tokens", "1024", "--engine", "threads"]) == 2
    assert main([str(modern_tiny_export), "--max-total-tokens", "1024", "--context-keep", "100"]) == 2
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "victorian_gpt.cli", "serve", str(modern_tiny_export), "--port", str(port),
             "--dtype", "float32", "--max-total-tokens", "1024"], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + "/health", proc, timeout=120, log=log)
        info = requests.get(url + "/info", timeout=10).json()
        assert (info["max_total_tokens"], info["max_input_tokens"], info["max_position_embeddings"]) == (1024, 127, 128)
        tokenizer = AutoTokenizer.from_pretrained(modern_tiny_export, trust_remote_code=True)
        model = AutoModelForCausalLM.from_pretrained(modern_tiny_export, trust_remote_code=True).eval()
        body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 400, "details": True}}
        answer = requests.post(url + "/generate", json=body, timeout=120).json()
        assert answer["details"]["generated_tokens"] == 400 and answer["details"]["finish_reason"] == "length"
        assert [t["id"] for t in answer["details"]["tokens"]] == greedy_ids((model, tokenizer), PROMPT, 400)

        long_prompt = {"inputs": PROMPT * 20, "parameters": {"max_new_tokens": 8}}
        refused = requests.post(url + "/generate", json=long_prompt, timeout=30)
        assert refused.status_code == 422 and "`inputs` must have less than 127 tokens" in refused.json()["error"]
        long_prompt["parameters"]["truncate"] = 100
        assert requests.post(url + "/generate", json=long_prompt, timeout=30).status_code == 200
    finally:
        stop_process(proc)
