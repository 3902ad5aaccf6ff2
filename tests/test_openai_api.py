"""OpenAI's API, the tokenizer routes, the WebSocket stream, API keys and TGI's metric names on `victorian-gpt serve`,
checked with the real clients (`openai`, LangChain's `OpenAI`, `websockets`, lm-eval's `local-completions`) against
real servers on 127.0.0.1, and the mapping of OpenAI's parameters onto the one validation every route shares.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import requests
import torch
from helpers.servers import free_port, stop_process, wait_for_http

PROMPT = "It was a dark and stormy night; the rain fell in torrents"
MODEL_NAME = "victorian-gpt"
API_KEY = "sk-test-0123456789"
GEN_LINE = re.compile(r"(gen-\d+) (finished|cancelled|failed) after (\d+)/(\d+) tokens")


def start_server(export, log, *extra):
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "victorian_gpt.cli", "serve", str(export), "--port", str(port),
             "--dtype", "float32", *extra],
            stdout=out, stderr=subprocess.STDOUT,
        )
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def servers(small_export, tmp_path_factory):
    """Two server processes, started together: `open` (the shipped chat template, served as "victorian-gpt") and
    `keyed` (an API key, no chat template, one request in flight at most)."""
    folder = tmp_path_factory.mktemp("serve-openai")
    procs = {
        "open": start_server(small_export, folder / "open.log", "--chat-template", "victorian-opening",
                             "--served-model-name", MODEL_NAME),
        "keyed": start_server(small_export, folder / "keyed.log", "--api-key", API_KEY,
                              "--max-concurrent-requests", "1"),
    }
    try:
        for name, (proc, url) in procs.items():
            wait_for_http(url + "/health", proc, timeout=120, log=folder / f"{name}.log")
        yield {name: (url, folder / f"{name}.log") for name, (_, url) in procs.items()}
    finally:
        for proc, _ in procs.values():
            stop_process(proc)


@pytest.fixture(scope="module")
def server(servers):
    return servers["open"]


@pytest.fixture(scope="module")
def client(server):
    import openai

    return openai.OpenAI(base_url=server[0] + "/v1", api_key="-", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def reference(small_export):
    """The same export loaded as a stranger would, to compare against plain `generate()` and its logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(small_export, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(small_export, trust_remote_code=True).eval()
    return model, tokenizer


def greedy_ids(reference, prompt: str, max_new_tokens: int) -> list[int]:
    model, tokenizer = reference
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, top_k=None, top_p=None,
                         temperature=None, repetition_penalty=1.0)
    return out[0, ids.shape[1]:].tolist()


def reference_logprobs(reference, ids: list[int]) -> torch.Tensor:
    """log-softmax of the reference model's logits at every position of `ids` (row i predicts token i + 1)."""
    model, _ = reference
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)


def wait_for_log(log, predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for match in GEN_LINE.finditer(log.read_text()):
            if predicate(match):
                return match
        time.sleep(0.1)
    pytest.fail(f"no matching generation record in the server log:\n{log.read_text()[-2000:]}")


# ---- the mapping onto the shared validation (no server)


@pytest.fixture(scope="module")
def fake_server(tiny_tokenizer_dir):
    """What the OpenAI layer reads of the server: its tokenizer, limits and end-of-sequence ids."""
    from transformers import AutoTokenizer

    from serving import textgen

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    return SimpleNamespace(tokenizer=tokenizer, limits=textgen.Limits(max_input_tokens=127, max_total_tokens=128),
                           eos_token_ids=[tokenizer.eos_token_id], chat_template=None)


def openai_request(**fields):
    from serving.openai_api import CompletionRequest

    return CompletionRequest(prompt=PROMPT, **fields)


@pytest.mark.parametrize("fields, message, param", [
    ({"max_tokens": 500}, "`prompt` tokens + `max_tokens` must be <= 128", "prompt"),
    ({"max_tokens": -1}, "`max_tokens` must be strictly positive", "max_tokens"),
    ({"top_p": 1.5}, "`top_p` must be > 0.0 and < 1.0", "top_p"),
    ({"top_k": -5}, "`top_k` must be strictly positive", "top_k"),
    ({"logprobs": 6}, "`logprobs` must be >= 0 and <= 5. Given: 6", "logprobs"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "`stop` supports up to 4 stop sequences. Given: 5", "stop"),
    ({"stop": ""}, "`stop` sequences cannot be empty", "stop"),
    ({"frequency_penalty": 2.5}, "`frequency_penalty` must be >= -2.0 and <= 2.0", "frequency_penalty"),
    ({"presence_penalty": -3}, "`presence_penalty` must be >= -2.0 and <= 2.0", "presence_penalty"),
    ({"min_tokens": 20, "max_tokens": 10}, "`min_tokens` must be <= `max_tokens`", "min_tokens"),
    ({"repetition_penalty": 0}, "`repetition_penalty` must be strictly positive", "repetition_penalty"),
    ({"seed": -1}, "`seed` must be an integer in [0, 2^64)", "seed"),
    ({"temperature": -0.5}, "`temperature` must be >= 0", "temperature"),
    ({"n": 0}, "`n` must be at least 1", "n"),
])
def test_openai_values_are_refused_by_the_shared_rules_with_openai_names(fake_server, fields, message, param):
    from serving.openai_api import COMPLETION_NAMES, OpenAIError, generation_arguments, prepare

    request = openai_request(**fields)
    with pytest.raises(OpenAIError) as caught:
        arguments, greedy = generation_arguments(request, request.max_tokens, request.logprobs)
        prepare(fake_server, request.prompt, arguments, greedy, COMPLETION_NAMES)
    assert message in caught.value.message and caught.value.param == param and caught.value.status == 400


def test_temperature_zero_is_greedy_and_sampling_values_are_still_checked(fake_server):
    from serving.openai_api import COMPLETION_NAMES, generation_arguments, prepare

    request = openai_request(temperature=0, top_p=0.5, top_k=10, seed=3)
    arguments, greedy = generation_arguments(request, 16, None)
    ids, params = prepare(fake_server, request.prompt, arguments, greedy, COMPLETION_NAMES)
    assert greedy and not params.do_sample and params.seed is None and params.top_k is None
    # OpenAI's "off" values: top_p 1 and vLLM's top_k -1 mean no filter, not an error
    arguments, greedy = generation_arguments(openai_request(top_p=1.0, top_k=-1, seed=5), 16, 2)
    _, params = prepare(fake_server, PROMPT, arguments, greedy, COMPLETION_NAMES)
    assert params.do_sample and params.top_p is None and params.top_k is None and params.seed == 5
    assert params.top_n_tokens == 2 and ids == fake_server.tokenizer(PROMPT, add_special_tokens=False).input_ids


def test_prompt_forms_and_token_id_checks(fake_server):
    from serving.openai_api import COMPLETION_NAMES, OpenAIError, generation_arguments, prepare, prompts_of

    assert prompts_of("a") == ["a"] and prompts_of([1, 2]) == [[1, 2]]
    assert prompts_of([[1], [2, 3]]) == [[1], [2, 3]] and prompts_of(["a", "b"]) == ["a", "b"]
    with pytest.raises(OpenAIError, match="`prompt` cannot be empty"):
        prompts_of([])
    arguments, greedy = generation_arguments(openai_request(), 4, None)
    assert prepare(fake_server, [5, 6, 7], arguments, greedy, COMPLETION_NAMES)[0] == [5, 6, 7]
    with pytest.raises(OpenAIError, match=r"`prompt` token ids must be in \[0, 512\). Given: 9999"):
        prepare(fake_server, [5, 9999], arguments, greedy, COMPLETION_NAMES)


def test_choice_text_holds_back_what_could_start_a_stop_sequence():
    from serving import textgen
    from serving.openai_api import ChoiceText

    def tokens(*texts):
        return [textgen.Token(i, t, -1.0, False, last=(i == len(texts) - 1)) for i, t in enumerate(texts)]

    text = ChoiceText(("END",))
    sent = [text.add(t, "END" if t.last else None) for t in tokens("Once", " upon E", "N", "D")]
    assert sent == ["Once", " upon ", "", ""] and text.final == "Once upon "
    text = ChoiceText(("END",))
    sent = [text.add(t) for t in tokens("a E", "xit", " b")]  # "E" was not the start of "END" after all
    assert sent == ["a ", "Exit", " b"] and text.final == "a Exit b"
    text = ChoiceText(())
    eos = textgen.Token(0, "<|endoftext|>", -1.0, True, last=True)
    assert [text.add(t) for t in tokens("a", "b")[:1] + [eos]] == ["a", ""]  # special tokens print nothing


def test_penalties_and_min_new_tokens_processors():
    from serving import textgen

    scores = torch.zeros(1, 6)
    penalty = textgen.FrequencyPresencePenaltyLogitsProcessor(0.5, 0.25)
    assert torch.equal(penalty(torch.tensor([[1, 2]]), scores), scores)  # the prompt is not counted
    out = penalty(torch.tensor([[1, 2, 3, 3, 4]]), scores)
    assert out[0].tolist() == [0.0, 0.0, 0.0, -1.25, -0.75, 0.0]
    hold = textgen.MinNewTokensLogitsProcessor(2, (0, 5))
    assert hold(torch.tensor([[1, 2]]), scores)[0].tolist() == [-float("inf"), 0, 0, 0, 0, -float("inf")]
    assert hold(torch.tensor([[1, 2, 3]]), scores)[0, 0] == -float("inf")
    assert torch.equal(hold(torch.tensor([[1, 2, 3, 4]]), scores), scores)


def test_engine_min_tokens_ignore_eos_and_top_tokens(tiny_export):
    """With the end-of-sequence token set to what greedy decoding writes second: a plain request stops there,
    `min_new_tokens` holds it back, `ignore_eos` runs to the length; every step's chosen logprob is the best of its
    `top_n_tokens` (greedy), and the same holds on a `generate()` thread."""
    from serving import textgen

    model, tokenizer = textgen.load_model(str(tiny_export), dtype="float32")
    limits = textgen.Limits.for_model(model, tokenizer)
    ids, params = textgen.prepare_request(tokenizer, PROMPT[:20], limits, max_new_tokens=6)
    with textgen.Engine(model, tokenizer) as engine:
        first = list(engine.submit(ids, params))
    ids_written = [t.id for t in first]
    at = max(ids_written.index(i) for i in ids_written)  # the latest token written for the first time
    stop_id = ids_written[at]
    model.generation_config.eos_token_id = stop_id
    with textgen.Engine(model, tokenizer) as engine:
        def run(**parameters):
            ids, params = textgen.prepare_request(tokenizer, PROMPT[:20], limits, eos_token_id=stop_id, **parameters)
            generation = engine.submit(ids, params)
            return [t for t in generation], generation

        plain, generation = run(max_new_tokens=6)
        assert len(plain) == at + 1 and generation.finish_reason == "eos_token"
        held, generation = run(max_new_tokens=6, min_new_tokens=at + 2)
        assert stop_id not in [t.id for t in held[: at + 2]] and len(held) >= at + 2
        through, generation = run(max_new_tokens=6, ignore_eos=True, top_n_tokens=3)
        assert [t.id for t in through] == [t.id for t in first] and generation.finish_reason == "length"
        for token in through:
            assert len(token.top_tokens) == 3 and token.top_tokens[0].id == token.id
            assert token.top_tokens[0].logprob == token.logprob
    ids, params = textgen.prepare_request(tokenizer, PROMPT[:20], limits, max_new_tokens=6, ignore_eos=True,
                                          top_n_tokens=2)
    threaded = list(textgen.Generation(model, tokenizer, ids, params))
    assert [t.id for t in threaded] == [t.id for t in first]
    assert all(t.top_tokens[0].logprob == t.logprob for t in threaded)


def test_exposed_without_key_warns(caplog, monkeypatch):
    from serving.auth import resolve_api_key, warn_if_exposed

    monkeypatch.setenv("VICTORIAN_GPT_API_KEY", "from-env")
    assert resolve_api_key(None) == "from-env" and resolve_api_key("flag") == "flag"
    monkeypatch.delenv("VICTORIAN_GPT_API_KEY")
    assert resolve_api_key(None) is None

    with caplog.at_level(logging.WARNING, logger="victorian_gpt.serving"):
        warn_if_exposed("127.0.0.1", None)
        warn_if_exposed("0.0.0.0", "key")
        assert not caplog.records
        warn_if_exposed("0.0.0.0", None)
    assert "without an API key" in caplog.text and "VICTORIAN_GPT_API_KEY" in caplog.text
    assert resolve_api_key("k") == "k" and resolve_api_key("") is None


def test_a_stream_that_fails_midway_sends_an_error_event_then_done(tiny_export):
    """A real engine whose forward pass fails at every fourth call, behind the real app (in process): the OpenAI
    stream ends with an error event and `[DONE]`, the WebSocket with an error frame and close code 1011."""
    from fastapi.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    from serving import textgen
    from serving.server import create_app

    model, tokenizer = textgen.load_model(str(tiny_export), dtype="float32")
    model.generation_config.eos_token_id = None
    calls = {"n": 0}
    forward = model.forward

    def failing_forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] % 4 == 0:
            raise RuntimeError("boom at step 4")
        return forward(*args, **kwargs)

    model.forward = failing_forward
    with TestClient(create_app(model, tokenizer, model_id="tiny")) as http:
        with http.stream("POST", "/v1/completions", json={"prompt": PROMPT, "max_tokens": 20, "stream": True,
                                                          "temperature": 0}) as response:
            assert response.status_code == 200
            events = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert "boom at step 4" in error["message"] and error["type"] == "server_error"
        assert all("choices" in json.loads(e) for e in events[:-2])
        with http.websocket_connect("/generate_ws") as ws:
            ws.send_text(json.dumps({"inputs": PROMPT, "parameters": {"max_new_tokens": 20}}))
            frames = []
            with pytest.raises(WebSocketDisconnect) as closed:
                while True:
                    frames.append(json.loads(ws.receive_text()))
        assert closed.value.code == 1011 and frames[-1]["error_type"] == "generation"
        assert "boom at step 4" in frames[-1]["error"] and all("token" in f for f in frames[:-1])
        # a base model has no chat template: a 400 that says so
        answer = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hello"}]})
        assert answer.status_code == 400 and "no chat template" in answer.json()["error"]["message"]


# ---- the openai package against the server


@pytest.mark.slow  # the server processes
def test_models_lists_the_served_name(client):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL_NAME]


@pytest.mark.slow  # the server processes
def test_completion_greedy_matches_generate(client, reference):
    _model, tokenizer = reference
    answer = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=12, temperature=0)
    expected = tokenizer.decode(greedy_ids(reference, PROMPT, 12), skip_special_tokens=True)
    assert answer.choices[0].text == expected and answer.choices[0].finish_reason == "length"
    assert answer.model == MODEL_NAME and answer.object == "text_completion"
    prompt_tokens = len(tokenizer(PROMPT).input_ids)
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (prompt_tokens, 12)
    # the default length is OpenAI's 16
    assert client.completions.create(model=MODEL_NAME, prompt=PROMPT, temperature=0).usage.completion_tokens == 16


@pytest.mark.slow  # the server processes
def test_prompt_forms_are_grouped_per_prompt_in_order(client, reference):
    _, tokenizer = reference
    prompts = [PROMPT, "The fog lay thick upon the river"]
    by_text = client.completions.create(model=MODEL_NAME, prompt=prompts, max_tokens=5, temperature=0, n=2)
    assert [c.index for c in by_text.choices] == [0, 1, 2, 3]
    texts = [c.text for c in by_text.choices]
    assert texts[0] == texts[1] and texts[2] == texts[3] and texts[0] != texts[2]  # greedy: n copies
    for i, prompt in enumerate(prompts):
        single = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=5, temperature=0)
        assert single.choices[0].text == texts[2 * i]
    ids = [tokenizer(p).input_ids for p in prompts]
    by_ids = client.completions.create(model=MODEL_NAME, prompt=ids, max_tokens=5, temperature=0)
    assert [c.text for c in by_ids.choices] == [texts[0], texts[2]]
    one = client.completions.create(model=MODEL_NAME, prompt=ids[1], max_tokens=5, temperature=0)
    assert one.choices[0].text == texts[2]
    assert by_ids.usage.prompt_tokens == len(ids[0]) + len(ids[1])


@pytest.mark.slow  # the server processes
def test_seed_repeats_and_n_choices_differ(client):
    def ask(seed):
        return [c.text for c in client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=10, n=3,
                                                           seed=seed, temperature=1.0, top_p=0.95).choices]

    first, again, other = ask(11), ask(11), ask(12)
    assert first == again and len(set(first)) == 3 and first != other


@pytest.mark.slow  # the server processes
def test_stop_as_string_and_list(client):
    full = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=12, temperature=0).choices[0].text
    stop = full[5:9]  # a stop sequence the greedy text is bound to produce
    for given in (stop, ["@@@@", stop]):
        answer = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=12, temperature=0, stop=given)
        assert answer.choices[0].finish_reason == "stop"
        assert answer.choices[0].text == full[: full.index(stop)]  # the stop sequence is not part of the text
        streamed = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=12, temperature=0,
                                             stop=given, stream=True)
        assert "".join(c.choices[0].text for c in streamed) == full[: full.index(stop)]


@pytest.mark.slow  # the server processes
def test_streaming_equals_the_whole_answer(client):
    whole = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=10, n=2, seed=5, temperature=0.9)
    chunks = list(client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=10, n=2, seed=5,
                                            temperature=0.9, stream=True, stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    for choice in whole.choices:
        mine = [c.choices[0] for c in chunks[:-1] if c.choices[0].index == choice.index]
        assert "".join(c.text for c in mine) == choice.text
        assert [c.finish_reason for c in mine][-1] == "length" and not any(c.finish_reason for c in mine[:-1])
    assert all(c.usage is None for c in chunks[:-1])


@pytest.mark.slow  # the server processes
def test_logprobs_with_echo_are_the_models_own(client, reference):
    """`echo` + `logprobs`: the prompt's tokens first (the first logprob null), then the generated ones; every
    logprob equals the reference model's log-softmax, and each greedy token is the best of its top_logprobs."""
    _, tokenizer = reference
    answer = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3,
                                       echo=True).choices[0]
    prompt_ids = tokenizer(PROMPT).input_ids
    generated = greedy_ids(reference, PROMPT, 6)
    lp = answer.logprobs
    assert answer.text == PROMPT + tokenizer.decode(generated, skip_special_tokens=True)
    assert "".join(lp.tokens[: len(prompt_ids)]) == PROMPT and len(lp.tokens) == len(prompt_ids) + 6
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    ids = prompt_ids + generated
    expected = reference_logprobs(reference, ids)
    for i in range(1, len(ids)):
        assert lp.token_logprobs[i] == pytest.approx(float(expected[i - 1, ids[i]]), abs=1e-4), i
        assert 1 <= len(lp.top_logprobs[i]) <= 4  # 3 and the token itself, less tokens that print alike
    for i in range(len(prompt_ids), len(ids)):  # greedy: the chosen token is the best one
        assert lp.token_logprobs[i] == max(lp.top_logprobs[i].values())
    # max_tokens 0 with echo: the prompt alone and its logprobs (lm-eval's loglikelihood)
    alone = client.completions.create(model=MODEL_NAME, prompt=prompt_ids, max_tokens=0, echo=True, logprobs=1)
    assert alone.choices[0].text == PROMPT and alone.usage.completion_tokens == 0
    assert alone.choices[0].logprobs.token_logprobs == lp.token_logprobs[: len(prompt_ids)]


@pytest.mark.slow  # the server processes
def test_vllm_extras_through_extra_body(client):
    base = {"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 8, "seed": 3, "temperature": 1.0}
    plain = client.completions.create(**base).choices[0].text
    assert client.completions.create(**base, extra_body={"top_k": 1}).choices[0].text == \
        client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=8, temperature=0).choices[0].text
    penalised = client.completions.create(**base, extra_body={"repetition_penalty": 1.5, "min_tokens": 8,
                                                              "ignore_eos": True})
    assert penalised.usage.completion_tokens == 8 and isinstance(plain, str)
    changed = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=12, temperature=0,
                                        frequency_penalty=2.0).choices[0].text
    greedy = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=12, temperature=0).choices[0].text
    assert changed != greedy  # the random model repeats itself; a frequency penalty stops that


@pytest.mark.slow  # the server processes
def test_openai_errors(client, server):
    import openai

    url, _ = server
    cases = [
        ({"max_tokens": 5000}, "`prompt` tokens + `max_tokens` must be <= 1024"),
        ({"best_of": 2}, "`best_of` != 1 is not supported"),
        ({"suffix": "The end."}, "`suffix` is not supported"),
        ({"top_p": 1.5}, "`top_p` must be > 0.0 and < 1.0"),
        ({"logprobs": 9}, "`logprobs` must be >= 0 and <= 5. Given: 9"),
        ({"logit_bias": {"5": 10}}, "`logit_bias` is not supported"),
    ]
    for fields, message in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            client.completions.create(model=MODEL_NAME, prompt=PROMPT, **fields)
        error = caught.value.body
        assert message in error["message"] and error["type"] == "invalid_request_error", error
        assert set(error) == {"message", "type", "param", "code"}
    raw = requests.post(url + "/v1/completions", json={"prompt": {"not": "a prompt"}}, timeout=10)
    assert raw.status_code == 400 and raw.json()["error"]["param"].startswith("prompt")
    # the same value on TGI's route: the same rule, TGI's shape
    tgi = requests.post(url + "/generate", json={"inputs": PROMPT, "parameters": {"top_p": 1.5}}, timeout=10)
    assert tgi.status_code == 422 and tgi.json() == {"error": "`top_p` must be > 0.0 and < 1.0",
                                                     "error_type": "validation"}


@pytest.mark.slow  # the server processes
def test_chat_completions_with_the_shipped_template(client, reference):
    messages = [{"role": "system", "content": "A tale of two cities."},
                {"role": "user", "content": "It was the best of times,"}]
    answer = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=8, temperature=0)
    # the messages become an opening to continue: the same text as a completion of that opening
    opening = "A tale of two cities.\n\nIt was the best of times,"
    plain = client.completions.create(model=MODEL_NAME, prompt=opening, max_tokens=8, temperature=0).choices[0]
    choice = answer.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == plain.text
    assert choice.finish_reason == "length" and answer.object == "chat.completion"
    chunks = list(client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=8, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    deltas = [c.choices[0] for c in chunks if c.choices]
    assert deltas[0].delta.role == "assistant" and all(d.delta.role is None for d in deltas[1:])
    assert "".join(d.delta.content or "" for d in deltas) == plain.text
    assert deltas[-1].finish_reason == "length" and not any(d.finish_reason for d in deltas[:-1])
    assert chunks[-1].usage.completion_tokens == 8
    with_logprobs = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=4, temperature=0,
                                                   logprobs=True, top_logprobs=2)
    content = with_logprobs.choices[0].logprobs.content
    assert len(content) == 4 and all(c.logprob == c.top_logprobs[0].logprob for c in content)


@pytest.mark.slow  # the server processes
def test_langchain_openai_invoke_and_batch(server, client):
    from langchain_openai import OpenAI

    url, _ = server
    llm = OpenAI(base_url=url + "/v1", api_key="-", model=MODEL_NAME, temperature=0, max_tokens=8, max_retries=0)
    prompts = [PROMPT, "The fog lay thick upon the river"]
    expected = [client.completions.create(model=MODEL_NAME, prompt=p, max_tokens=8, temperature=0).choices[0].text
                for p in prompts]
    assert llm.invoke(prompts[0]) == expected[0]
    assert llm.batch(prompts) == expected


# ---- tokenizer routes, WebSocket, metrics


@pytest.mark.slow  # the server processes
def test_tokenizer_routes(server, reference):
    url, _ = server
    _, tokenizer = reference
    ids = tokenizer(PROMPT).input_ids
    tgi = requests.post(url + "/tokenize", json={"inputs": PROMPT}, timeout=10).json()
    assert [t["id"] for t in tgi] == ids and "".join(t["text"] for t in tgi) == PROMPT
    assert all(PROMPT[t["start"]:t["stop"]] == t["text"] for t in tgi)
    vllm = requests.post(url + "/tokenize", json={"prompt": PROMPT, "add_special_tokens": False}, timeout=10).json()
    assert vllm["tokens"] == ids and vllm["count"] == len(ids) and vllm["max_model_len"] == 1024
    assert requests.post(url + "/detokenize", json={"tokens": ids}, timeout=10).json() == {"prompt": PROMPT}
    bad = requests.post(url + "/detokenize", json={"tokens": [10**6]}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
    info = requests.get(url + "/tokenizer_info", timeout=10).json()
    assert info["eos_token"] == tokenizer.eos_token and "victorian-opening" in info["chat_template"]
    # lm-eval's own probe of a server's tokenizer
    from lm_eval.utils import RemoteTokenizer, check_remote_tokenizer_support

    assert check_remote_tokenizer_support(url + "/v1/completions")
    remote = RemoteTokenizer(url + "/v1/completions")
    assert remote.encode(PROMPT) == ids and remote.decode(ids) == PROMPT
    assert remote.eos_token_id == tokenizer.eos_token_id


@pytest.mark.slow  # the server processes
def test_websocket_streams_requests_in_sequence(server):
    import websockets

    url, log = server
    ws_url = url.replace("http://", "ws://") + "/generate_ws"
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 6, "details": True}}
    expected = requests.post(url + "/generate", json=body, timeout=60).json()

    async def run():
        async with websockets.connect(ws_url) as ws:
            answers = []
            for _ in range(2):  # two requests in sequence on one socket
                await ws.send(json.dumps(body))
                events = []
                while not events or events[-1]["generated_text"] is None:
                    events.append(json.loads(await ws.recv()))
                answers.append(events)
            await ws.send(json.dumps({"inputs": PROMPT, "parameters": {"top_p": 1.5}}))
            error = json.loads(await ws.recv())
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            return answers, error, closed.value.rcvd.code

    answers, error, code = asyncio.run(run())
    for events in answers:
        assert [e["index"] for e in events] == list(range(1, 7))
        assert [e["token"]["id"] for e in events] == [t["id"] for t in expected["details"]["tokens"]]
        assert events[-1]["generated_text"] == expected["generated_text"]
        assert events[-1]["details"]["finish_reason"] == "length"
    assert error == {"error": "`top_p` must be > 0.0 and < 1.0", "error_type": "validation"} and code == 1008

    async def hang_up():
        async with websockets.connect(ws_url) as ws:
            await ws.send(json.dumps({"inputs": PROMPT + " (socket)", "parameters": {"max_new_tokens": 900}}))
            for _ in range(3):
                await ws.recv()

    asyncio.run(hang_up())
    record = wait_for_log(log, lambda m: m.group(4) == "900")
    assert record.group(2) == "cancelled" and int(record.group(3)) < 900, record.group(0)


@pytest.mark.slow  # the server processes
def test_metrics_use_tgi_names(server, client):
    url, _ = server

    def values():
        text = requests.get(url + "/metrics", timeout=10).text
        return text, dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))

    _, before = values()
    client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=3, temperature=0)
    requests.post(url + "/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 3}}, timeout=60)
    requests.post(url + "/generate", json={"inputs": PROMPT, "parameters": {"top_p": 2}}, timeout=60)
    text, after = values()
    assert int(after["tgi_request_count"]) == int(before["tgi_request_count"]) + 3
    assert int(after["tgi_request_success"]) >= int(before["tgi_request_success"]) + 2
    assert int(after['tgi_request_failure{err="validation"}']) >= 1
    assert int(after["tgi_request_duration_count"]) >= int(before["tgi_request_duration_count"]) + 2
    assert int(after["tgi_request_first_token_duration_count"]) >= 2
    assert "# TYPE tgi_request_duration histogram" in text and 'tgi_request_duration_bucket{le="+Inf"}' in text
    for gauge in ("tgi_queue_size", "tgi_batch_current_size", "tgi_request_generated_tokens_sum",
                  "tgi_request_input_length_count", "tgi_prefix_cache_hits_total"):
        assert gauge in after, gauge


# ---- API key, overload


@pytest.mark.slow  # the server processes
def test_api_key_guards_every_route_but_health(servers):
    import openai
    import websockets

    url, _ = servers["keyed"]
    assert requests.get(url + "/health", timeout=10).status_code == 200
    wrong = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=2)
    assert caught.value.body["code"] == "invalid_api_key" and caught.value.body["type"] == "invalid_request_error"
    missing = requests.post(url + "/v1/completions", json={"prompt": PROMPT}, timeout=10)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    tgi = requests.post(url + "/generate", json={"inputs": PROMPT}, timeout=10)
    assert tgi.status_code == 401 and tgi.json()["error_type"] == "unauthorized"
    for path in ("/info", "/metrics", "/tokenizer_info", "/v1/models"):
        assert requests.get(url + path, timeout=10).status_code == 401, path
    keyed = openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0)
    assert keyed.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=2).usage.completion_tokens == 2
    headers = {"Authorization": f"Bearer {API_KEY}"}
    assert requests.get(url + "/info", headers=headers, timeout=10).status_code == 200
    # no chat template on this server: the route says so
    with pytest.raises(openai.BadRequestError, match="no chat template"):
        keyed.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "Hello"}])

    ws_url = url.replace("http://", "ws://") + "/generate_ws"
    body = json.dumps({"inputs": PROMPT, "parameters": {"max_new_tokens": 2}})

    async def stream(**options):
        async with websockets.connect(ws_url, **options) as ws:
            await ws.send(body)
            events = [json.loads(await ws.recv())]
            while events[-1]["generated_text"] is None:
                events.append(json.loads(await ws.recv()))
            return events

    with pytest.raises(websockets.InvalidStatus) as refused:
        asyncio.run(stream())
    assert refused.value.response.status_code == 401
    assert len(asyncio.run(stream(additional_headers=headers))) == 2
    # a browser cannot set headers: the key as a subprotocol
    assert len(asyncio.run(stream(subprotocols=["victorian-gpt", f"bearer.{API_KEY}"]))) == 2


@pytest.mark.slow  # the server processes
def test_overloaded_is_429_with_retry_after(servers):
    import httpx

    url, _ = servers["keyed"]  # --max-concurrent-requests 1
    headers = {"Authorization": f"Bearer {API_KEY}"}

    async def run():
        async with httpx.AsyncClient(timeout=60, headers=headers) as http:
            long = {"prompt": PROMPT, "max_tokens": 900, "stream": True, "ignore_eos": True}
            async with http.stream("POST", url + "/v1/completions", json=long) as first:
                lines = first.aiter_lines()
                await anext(lines)  # running
                refused = await http.post(url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 2})
                tgi = await http.post(url + "/generate", json={"inputs": PROMPT})
                return refused, tgi

    refused, tgi = asyncio.run(run())
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert refused.json()["error"]["message"] == "Model is overloaded"
    assert tgi.status_code == 429 and tgi.json()["error_type"] == "overloaded" and "retry-after" in tgi.headers


# ---- lm-eval


@pytest.mark.slow  # the server processes, lm-eval
def test_lm_eval_local_completions_matches_victorian_gpt_eval(server, small_export, pg19_tiny, tmp_path):
    """lm-eval's `local-completions` pointed at the server (the server's own tokenizer through /tokenize) gives the
    bits per byte of `victorian-gpt eval` on the same book, within 1 %: a perplexity task built from local files."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    url, _ = server
    task = tmp_path / "tasks"
    task.mkdir()
    (task / "victorian_ppl.yaml").write_text(f"""task: victorian_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {pg19_tiny / 'validation.jsonl'}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
""")
    results = lm_eval.simple_evaluate(
        model="local-completions",
        model_args=f"model={MODEL_NAME},base_url={url}/v1/completions,tokenizer_backend=remote,max_length=1024,"
                   "num_concurrent=1,max_retries=1",
        tasks=["victorian_ppl"], task_manager=TaskManager(include_path=str(task)), log_samples=False,
    )
    ours = results["results"]["victorian_ppl"]["bits_per_byte,none"]
    out = tmp_path / "eval.json"
    with open(out, "w") as handle:
        subprocess.run([sys.executable, "-m", "victorian_gpt.cli", "eval", str(small_export), "--dataset",
                        str(pg19_tiny), "--split", "validation", "--block_size", "1022"], stdout=handle, check=True)
    reference_bpb = json.loads(out.read_text())["bits_per_byte"]
    assert ours == pytest.approx(reference_bpb, rel=0.01), (ours, reference_bpb)


# ---- a browser


@pytest.mark.slow  # the server processes, Chromium
def test_the_documented_browser_page_streams_over_the_websocket(servers, tmp_path):
    """The HTML page of docs/serving.md, as written, in headless Chromium against the server; and the same page with
    the key as a subprotocol (what the docs say a browser does) against the server that needs one."""
    from helpers.isolation import REPO_ROOT
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    docs = (REPO_ROOT / "docs" / "serving.md").read_text()
    page = re.search(r"```html\n(.*?)```", docs, re.DOTALL).group(1)
    assert 'new WebSocket("ws://127.0.0.1:8080/generate_ws")' in page
    pages = {}
    for name, (url, _) in servers.items():
        ws_url = url.replace("http://", "ws://") + "/generate_ws"
        text = page.replace('"ws://127.0.0.1:8080/generate_ws"', json.dumps(ws_url))
        if name == "keyed":
            text = text.replace(f"new WebSocket({json.dumps(ws_url)})",
                                f'new WebSocket({json.dumps(ws_url)}, ["victorian-gpt", "bearer.{API_KEY}"])')
        pages[name] = tmp_path / f"{name}.html"
        pages[name].write_text(text)

    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        for name, path in pages.items():
            driver.get(path.as_uri())
            WebDriverWait(driver, 20).until(lambda d: d.execute_script("return ws.readyState") == 1)
            opening = driver.find_element(By.ID, "opening").get_attribute("value")
            shortest = len(opening) + 10
            driver.find_element(By.ID, "go").click()
            WebDriverWait(driver, 60).until(
                lambda d, shortest=shortest: len(d.find_element(By.ID, "out").text) > shortest)
            shown = driver.find_element(By.ID, "out").text
            assert shown.startswith(opening) and not re.search(r"\[\w+: ", shown), (name, shown)
    finally:
        driver.quit()
