"""The Gradio Space: launched as `MODEL_ID=<export> python spaces_app/app.py`, driven with gradio_client and headless
Chromium; plus the Space in TGI_URL mode against our TGI-protocol server, and an error inside generate().

The app's log records how each generation ended ("gen-N cancelled after k/n tokens"), which is how these tests see
that Stop, a cancelled job or a closed tab really stopped the computation.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers.isolation import REPO_ROOT, run_isolated
from helpers.servers import free_port, stop_process, wait_for_http
from victorian_gpt.modeling_victorian_gpt import GENERATION_DEFAULTS

PROMPT = "It was a dark and stormy night; the rain fell in torrents"
GEN_LINE = re.compile(r"(gen-\d+) (finished|cancelled|failed) after (\d+)/(\d+) tokens")


def run_space(model: Path, tmp_path_factory):
    """The Space over `model` in a server process of its own: yields (url, log) once it answers, stops it after."""
    port = free_port()
    log = tmp_path_factory.mktemp("space") / "app.log"
    env = {**os.environ, "MODEL_ID": str(model), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False",
           "DTYPE": "float32"}  # the exact path: these tests compare with fp32 generate()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(REPO_ROOT / "spaces_app" / "app.py")], env=env,
                                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path_factory.mktemp("cwd"))
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_http(url, proc, timeout=180, log=log)
        yield url, log
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def space(small_export, tmp_path_factory):
    yield from run_space(small_export, tmp_path_factory)


def records(log: Path) -> list[re.Match]:
    return list(GEN_LINE.finditer(log.read_text()))


def wait_for_new_record(log: Path, seen: int, timeout: float = 30.0) -> re.Match:
    """The first generation record after the first `seen` ones, waiting up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = records(log)
        if len(found) > seen:
            return found[seen]
        time.sleep(0.1)
    pytest.fail(f"no new generation record in the app log:\n{log.read_text()[-2000:]}")


def greedy_reference(export: Path, prompt: str, max_new_tokens: int, repetition_penalty: float) -> str:
    """Non-streamed `generate()` on the same export, loaded as a stranger would."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(export, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(export, trust_remote_code=True).eval()
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, top_k=None, top_p=None,
                         temperature=None, repetition_penalty=repetition_penalty)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@pytest.mark.slow  # the Space in a server process
def test_gradio_client_streams_what_generate_gives(space, small_export):
    from gradio_client import Client

    url, _ = space
    client = Client(url, verbose=False)
    # greedy settings: top-k 1 keeps only the most likely token, whatever the temperature and seed
    job = client.submit(PROMPT, 60, 1.3, 1, 0.95, 1.2, 0, api_name="/generate")
    updates, done_at_first_update = [], None
    for update in job:
        if done_at_first_update is None:
            done_at_first_update = job.done()
        updates.append(update)
    assert done_at_first_update is False  # the first text arrived while the job was still generating
    assert len(updates) >= 5
    assert all(len(a) < len(b) and b.startswith(a) for a, b in zip(updates, updates[1:]))  # it grows
    assert updates[-1] == greedy_reference(small_export, PROMPT, 60, 1.2)

    # the same seed and settings give the same text when sampling, too (a number, or a number in a string)
    sampled = [client.predict(PROMPT, 30, 1.3, 50, 0.95, 1.2, seed, api_name="/generate") for seed in (1234, "1234")]
    assert sampled[0] == sampled[1]
    # no seed, None or "" draws a fresh one each time
    fresh = [client.predict(PROMPT, 30, 1.3, 50, 0.95, 1.2, api_name="/generate"),
             client.predict(PROMPT, 30, 1.3, 50, 0.95, 1.2, None, api_name="/generate"),
             client.predict(PROMPT, 30, 1.3, 50, 0.95, 1.2, "", api_name="/generate")]
    assert len({*fresh, sampled[0]}) == 4, fresh


@pytest.mark.slow  # the Space in a server process
def test_gradio_client_shows_validation_errors(space):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    url, _ = space
    with pytest.raises(AppError, match="`top_p` must be > 0.0 and < 1.0"):
        Client(url, verbose=False).predict(PROMPT, 20, 1.0, 0, 0.0, 1.2, 0, api_name="/generate")
    with pytest.raises(AppError, match="Write an opening first"):
        Client(url, verbose=False).predict("   ", 20, 1.0, 0, 0.5, 1.2, 0, api_name="/generate")
    with pytest.raises(AppError, match="Seed must be a whole number from 0 to 18446744073709551615, or empty"):
        Client(url, verbose=False).predict(PROMPT, 20, 1.0, 0, 0.5, 1.2, "forty-two", api_name="/generate")


@pytest.mark.slow  # the Space in a server process
def test_cancelled_job_stops_generation(space):
    from gradio_client import Client

    url, log = space
    seen = len(records(log))
    job = Client(url, verbose=False).submit(PROMPT, 900, 1.0, 1, 0.95, 1.0, 0, api_name="/generate")
    for n, _ in enumerate(job, 1):
        if n == 3:
            job.cancel()
            break
    record = wait_for_new_record(log, seen)
    assert record.group(2) == "cancelled" and int(record.group(3)) < 900, record.group(0)


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,1600"):
        options.add_argument(argument)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(60)
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


def downloaded(folder: Path, name: str, timeout: float = 30.0) -> str:
    """The text of a file the browser saved into `folder`, once its download has finished: no partial download left
    and its size the same over half a second (Chromium may write a page-built file in place, in pieces)."""
    deadline = time.monotonic() + timeout
    path, size = folder / name, None
    while time.monotonic() < deadline:
        if path.is_file() and not list(folder.glob("*.crdownload")):
            if path.stat().st_size == size:
                return path.read_text(encoding="utf-8")
            size = path.stat().st_size
        time.sleep(0.5)
    pytest.fail(f"{name} was not downloaded; {folder} holds {sorted(p.name for p in folder.iterdir())}")


def as_shown(text: str) -> str:
    """A textarea reports line breaks as \\n whatever the text had (the random model writes any byte)."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


@pytest.mark.slow  # Chromium, and the Space in a server process
def test_browser_seed_history_stop_and_close_tab(space, browser):
    from selenium.webdriver.common.by import By

    from spaces_app.app import reflow
    from selenium.webdriver.support.ui import WebDriverWait

    url, log = space
    wait = WebDriverWait(browser, 60)
    browser.get(url)
    prompt = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#prompt textarea"))
    prompt.send_keys(PROMPT)
    output = browser.find_element(By.CSS_SELECTOR, "#output textarea")  # what the visitor reads (reflowed)
    raw = browser.find_element(By.CSS_SELECTOR, "#raw-output textarea")  # what the API returns (hidden)
    assert not raw.is_displayed()

    # a fresh page's Seed box is empty (the Number component it replaced showed 0 and sent 0)
    seed_box = browser.find_element(By.CSS_SELECTOR, "#seed input")
    assert seed_box.get_attribute("value") == "" and seed_box.get_attribute("placeholder") == "random"

    def history_entries():
        return browser.find_elements(By.CSS_SELECTOR, "#history .vg-entry")  # newest first

    def generate_and_wait() -> str:
        """Press Generate with what the page holds; the raw text once the generation has joined the history (and
        the Continuation box shows it reflowed)."""
        count = len(history_entries())
        browser.find_element(By.CSS_SELECTOR, "#generate").click()
        wait.until(lambda d: len(history_entries()) == count + 1)
        text = raw.get_attribute("value")
        wait.until(lambda d: output.get_attribute("value") == reflow(text))
        return text

    # defaults (sampling on, 100 new tokens): an empty seed is a fresh random seed per press
    first, second = generate_and_wait(), generate_and_wait()
    assert first and second and first != second
    # a typed seed gives the same text every time
    seed_box.send_keys("1234")
    third, fourth = generate_and_wait(), generate_and_wait()
    assert third == fourth and third not in (first, second)

    # Reflow off shows the raw text itself; on again, the reflowed one
    reflow_box = browser.find_element(By.CSS_SELECTOR, "#reflow input")
    assert reflow_box.is_selected()  # on by default
    reflow_box.click()
    wait.until(lambda d: output.get_attribute("value") == fourth)
    reflow_box.click()
    wait.until(lambda d: output.get_attribute("value") == reflow(fourth))

    # the History panel lists them, newest first, with the seed each one used
    entries = history_entries()[::-1]
    seeds = [entry.get_attribute("data-seed") for entry in entries]
    assert seeds[0] != seeds[1] and all(s.isdigit() for s in seeds) and seeds[2:] == ["1234", "1234"]
    defaults = GENERATION_DEFAULTS  # the sliders start at the export's generation_config.json
    shown = f"temperature {defaults['temperature']} · top-k {defaults['top_k']} · top-p {defaults['top_p']}"
    assert all(PROMPT in entry.text and shown in entry.text for entry in entries)

    # ... and offers them as downloads, built in the page: what the browser saves is what was shown
    browser.find_element(By.CSS_SELECTOR, "#history-jsonl").click()
    browser.find_element(By.CSS_SELECTOR, "#history-md").click()
    # split at "\n" alone: str.splitlines() would also split at U+2028, U+0085 and others, which JSON leaves as they
    # are inside strings (and the random model writes any character)
    jsonl = downloaded(browser.downloads, "victorian-gpt-history.jsonl")
    rows = [json.loads(line) for line in jsonl.removesuffix("\n").split("\n")]
    assert [as_shown(row["generated_text"]) for row in rows] == [first, second, third, fourth]
    assert [str(row["seed"]) for row in rows] == seeds
    assert all(row["prompt"] == PROMPT and row["stopped"] is False and row["do_sample"] is True for row in rows)
    assert {(row["max_new_tokens"], row["temperature"], row["top_k"], row["top_p"], row["repetition_penalty"])
            for row in rows} == {(100, *(defaults[name] for name in ("temperature", "top_k", "top_p", "repetition_penalty")))}
    markdown = downloaded(browser.downloads, "victorian-gpt-history.md")
    assert markdown.startswith("# VictorianGPT: generations") and "## 4" in markdown
    assert markdown.count(f"> {PROMPT}") == 4 and markdown.count(f"seed 1234 · temperature {defaults['temperature']}") == 2

    # Stop: a long generation ends part-way, and what was written joins the history marked "stopped"
    length = browser.find_element(By.CSS_SELECTOR, "#max_new_tokens input[type=number]")
    length.clear()
    length.send_keys("900\n")  # long enough that only Stop can end it
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#max_new_tokens input[type=range]")
               .get_attribute("value") == "900")
    seen = len(records(log))
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    wait.until(lambda d: output.get_attribute("value") not in ("", reflow(fourth)))  # text appears as it is written
    browser.find_element(By.CSS_SELECTOR, "#stop").click()
    record = wait_for_new_record(log, seen)
    assert record.group(2) == "cancelled" and int(record.group(3)) < 900, record.group(0)
    wait.until(lambda d: len(history_entries()) == 5)
    stopped = raw.get_attribute("value")
    time.sleep(1.0)
    assert raw.get_attribute("value") == stopped  # nothing more arrives
    newest = history_entries()[0]
    assert "max new tokens 900 · stopped" in newest.text and newest.get_attribute("data-seed") == "1234"

    # a closed tab stops its generation too
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    wait.until(lambda d: raw.get_attribute("value") not in ("", stopped))
    browser.quit()
    record = wait_for_new_record(log, seen + 1)
    assert record.group(2) == "cancelled" and int(record.group(3)) < 900, record.group(0)


def test_error_inside_generate_reaches_the_user(tiny_export):
    import gradio as gr

    from spaces_app.app import LocalBackend, make_generate

    backend = LocalBackend(str(tiny_export))
    forward, calls = backend.model.forward, []

    def failing_forward(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("the tensor cores caught fire")
        return forward(*args, **kwargs)

    backend.model.forward = failing_forward
    generate = make_generate(backend)
    start = time.monotonic()
    with pytest.raises(gr.Error, match="Generation failed: .*the tensor cores caught fire"):
        for _ in generate(PROMPT, 50, 1.0, 1, 0.95, 1.2, 0):
            pass
    assert time.monotonic() - start < 10  # an error, not a hang until the stream times out


@pytest.fixture
def tgi_server(small_export, monkeypatch):
    """Our TGI-protocol server in a thread of this process (its generations are visible to textgen here)."""
    import huggingface_hub.constants
    import uvicorn

    from serving import textgen
    from serving.server import create_app

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the endpoint is on 127.0.0.1
    model, tokenizer = textgen.load_model(str(small_export))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(model, tokenizer, model_id="small"), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + "/health", timeout=60)
        yield url
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.mark.slow  # an HTTP server (the TGI-protocol server in a thread)
def test_space_streams_from_a_tgi_endpoint(tgi_server, small_export, caplog):
    import logging

    import requests
    from gradio_client import Client

    from serving import textgen
    from spaces_app.app import build_demo

    demo = build_demo(model_id=str(small_export), tgi_url=tgi_server)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        updates = list(client.submit(PROMPT, 20, 1.3, 1, 0.95, 1.2, 0, api_name="/generate"))
        direct = requests.post(tgi_server + "/generate", timeout=60, json={
            "inputs": PROMPT, "parameters": {"max_new_tokens": 20, "repetition_penalty": 1.2}}).json()
        assert len(updates) > 1 and updates[-1] == direct["generated_text"]

        # cancelling the Space's job closes its HTTP stream, which stops the endpoint's generation
        caplog.set_level(logging.INFO, logger="victorian_gpt.serving")
        job = client.submit(PROMPT, 900, 1.0, 1, 0.95, 1.0, 0, api_name="/generate")
        for n, _ in enumerate(job, 1):
            if n == 3:
                job.cancel()
                break
        deadline = time.monotonic() + 30
        while textgen.active_generations() and time.monotonic() < deadline:
            time.sleep(0.1)
        ends = [r.getMessage() for r in caplog.records if "/900 tokens" in r.getMessage()]
        assert ends and " cancelled after " in ends[-1], ends
        assert int(re.search(r"after (\d+)/", ends[-1]).group(1)) < 900
    finally:
        demo.close()


@pytest.mark.slow  # a stranger's process loading the bundle (~7 s)
def test_space_folder_runs_without_the_package(tiny_export, tmp_path):
    """What push-space uploads must run on a Space, where neither victorian_gpt nor spaces_app is installed."""
    import shutil

    from huggingface_hub import SpaceCard

    card = SpaceCard.load(REPO_ROOT / "spaces_app" / "README.md").data
    assert (card.sdk, card.app_file, card.license) == ("gradio", "app.py", "apache-2.0")
    assert card.sdk_version and card.title and card.models and card.datasets == ["emozilla/pg19"]
    lines = (REPO_ROOT / "spaces_app" / "requirements.txt").read_text().splitlines()
    requirements = {re.split(r"[<>=!~ ]", line)[0] for line in lines if line.strip() and not line.startswith("#")}
    assert {"torch", "transformers"} <= requirements and "victorian-gpt" not in requirements

    space = tmp_path / "space"
    space.mkdir()
    # exactly the files push-space would upload (app.py beside copies of the textgen/ package and of
    # victorian_gpt/utils/), nothing else of this checkout
    from hub.publish import plan_space_upload

    files, _ = plan_space_upload()
    assert {"app.py", "requirements.txt", "textgen/__init__.py", "textgen/engine.py", "textgen/decode_kernels.cpp",
            "victorian_gpt/utils/hub.py"} <= {name for name, _ in files}
    assert not any(name.startswith("victorian_gpt/") and not name.startswith("victorian_gpt/utils/")
                   for name, _ in files), "only the shared rules, not the package"
    for name, path in files:
        (space / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, space / name)
    code = (
        f"import sys; sys.path.insert(0, {str(space)!r})\n"
        "import app\n"
        f"demo = app.build_demo({str(tiny_export)!r})\n"
        "backend = app.LocalBackend.__module__, app.textgen.__name__\n"
        f"texts = list(app.make_generate(app.LocalBackend({str(tiny_export)!r}))('It was', 5, 1.0, 1, 0.95, 1.2, 0))\n"
        "print(backend, len(texts) > 0)\n"
    )
    # the decode kernels' build from a copied folder costs ~20 s here; test_engine builds and checks them
    result = run_isolated(code, cwd=tmp_path, env={"HF_HUB_OFFLINE": "1", "VICTORIAN_GPT_DECODE_KERNELS": "0"},
                          allow=(space,))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "('app', 'textgen') True" in result.stdout


def test_reflow_joins_wrapped_lines_and_keeps_paragraphs():
    from spaces_app.app import reflow, show_text

    wrapped = "\nIt was a dark and stormy night; the rain fell in\ntorrents, except at occasional\r\nintervals.\n\n" \
              "  \nCHAPTER II\n\nMr. Pickwick rose  \n  early"
    assert reflow(wrapped) == ("It was a dark and stormy night; the rain fell in torrents, except at occasional "
                               "intervals.\n\nCHAPTER II\n\nMr. Pickwick rose early")
    assert reflow("\n\n and then") == "and then"  # no stray leading line break
    assert reflow("one line") == "one line" and reflow("") == ""
    assert show_text(wrapped, False) == wrapped and show_text(None, True) == ""


def test_history_panel_and_downloads_keep_the_text_exactly():
    """The panel escapes what it shows; the JSON Lines download round-trips; the Markdown quotes the opening."""
    import base64

    from spaces_app.app import add_to_history, history_markdown

    entry = dict(time="2026-01-01T00:00:00Z", model="m", prompt="<script>alert(1)</script>\nLine two & 'quotes'",
                 max_new_tokens=5, do_sample=False, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.2,
                 seed=None, generated_text=" and\r\nthen <i>", stopped=True)
    run, history, panel, downloads = add_to_history(entry, [])
    assert run is None and history == [entry]
    assert "<script>" not in panel and "&lt;script&gt;alert(1)&lt;/script&gt;" in panel and "&lt;i&gt;" in panel
    assert "greedy · repetition penalty 1.2 · max new tokens 5 · stopped" in panel
    links = dict(re.findall(r"id='([^']+)' download='[^']+' href='data:[^;]+;charset=utf-8;base64,([^']+)'",
                            downloads))
    assert [json.loads(line) for line in base64.b64decode(links["history-jsonl"]).decode().splitlines()] == [entry]
    assert base64.b64decode(links["history-md"]).decode() == history_markdown([entry])
    assert "> <script>alert(1)</script>\n> Line two & 'quotes'\n\n and\r\nthen <i>" in history_markdown([entry])
    assert add_to_history(None, history)[1] == [entry]  # a second call for the same run adds nothing


def test_local_backend_batches_through_the_engine_and_quantizes_on_request(tiny_export):
    """The Space's local backend: requests go through one `textgen.Engine`; QUANTIZE=int8 gives int8 layers."""
    from serving import textgen
    from spaces_app.app import LocalBackend, make_generate

    plain = LocalBackend(str(tiny_export), quantize=None)
    int8 = LocalBackend(str(tiny_export), quantize="int8")
    try:
        assert isinstance(plain.engine, textgen.Engine) and plain.engine.max_batch_size >= 1
        assert any(isinstance(m, textgen.Int8Linear) for m in int8.model.modules())
        assert not any(isinstance(m, textgen.Int8Linear) for m in plain.model.modules())
        assert int8.source.endswith("(int8)")
        for backend in (plain, int8):
            updates = list(make_generate(backend)(PROMPT, 12, 1.0, 1, 0.95, 1.0, 7))
            text, record = updates[-1]
            assert isinstance(text, str) and text.strip() and record["generated_text"] == text
        assert plain.engine.steps > 0 and int8.engine.steps > 0 and plain.engine.in_flight() == 0
    finally:
        plain.engine.close()
        int8.engine.close()
    with pytest.raises(ValueError, match="quantization"):
        LocalBackend(str(tiny_export), quantize="int4")


@pytest.fixture(scope="module")
def endless_space(modern_tiny_export, tmp_path_factory):
    """The Space over a 128-token model that writes until told to stop: a copy of the modern tiny export without an
    end-of-text token in its generation_config.json (a random model would otherwise stop wherever it drew one)."""
    import shutil

    folder = tmp_path_factory.mktemp("endless") / "model"
    shutil.copytree(modern_tiny_export, folder)
    generation_config = json.loads((folder / "generation_config.json").read_text())
    generation_config["eos_token_id"] = None
    (folder / "generation_config.json").write_text(json.dumps(generation_config))
    yield from run_space(folder, tmp_path_factory)


@pytest.mark.slow  # Chromium, and the Space in a server process
def test_a_chapter_in_passes_generate_then_continue_far_past_the_context(endless_space, browser):
    """2,000 tokens from a model that reads 128 at once: Generate writes 1,000 (its context shifts as it goes), Continue
    1,000 more from the whole text shown (read from its end, with a notice). Continue is Generate on the opening and
    what was written, as the API shows."""
    from gradio_client import Client
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, log = endless_space
    wait = WebDriverWait(browser, 180)
    browser.get(url)
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#prompt textarea")).send_keys(PROMPT)
    raw = browser.find_element(By.CSS_SELECTOR, "#raw-output textarea")
    browser.find_element(By.CSS_SELECTOR, "#seed input").send_keys("7")
    length = browser.find_element(By.CSS_SELECTOR, "#max_new_tokens input[type=number]")
    length.clear()
    length.send_keys("1000\n")
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#max_new_tokens input[type=range]")
               .get_attribute("value") == "1000")

    def press(button: str, entries: int) -> tuple[str, list[str]]:
        """Click, collect the notices shown while the pass runs (a toast lasts seconds), return the text and them."""
        browser.find_element(By.CSS_SELECTOR, f"#{button}").click()
        notices = set()

        def finished(driver) -> bool:
            for toast in driver.find_elements(By.CSS_SELECTOR, ".toast-body"):
                try:
                    notices.add(toast.text)
                except StaleElementReferenceException:  # it closed between finding and reading: read on the next poll
                    pass
            return len(driver.find_elements(By.CSS_SELECTOR, "#history .vg-entry")) == entries

        wait.until(finished)
        return raw.get_attribute("value"), sorted(notices)

    first, notices = press("generate", 1)
    assert notices == []  # the opening fits the window
    both, notices = press("continue", 2)
    assert as_shown(both).startswith(as_shown(first)) and len(both) > len(first)
    assert any(re.search(r"The text is \d+ tokens; the model reads its last 127 and goes on from there", notice)
               for notice in notices), notices
    passes = [m for m in records(log) if m.group(2) == "finished"]
    assert [(m.group(3), m.group(4)) for m in passes] == [("1000", "1000")] * 2  # 2,000 tokens written

    # through the API: Continue from the first pass is that pass followed by Generate on everything shown
    client = Client(url, verbose=False)
    controls = ("temperature", "top_k", "top_p", "repetition_penalty")
    settings = (300, *(GENERATION_DEFAULTS[name] for name in controls), 7)
    written = client.predict(PROMPT, first, *settings, api_name="/continue")
    assert written == first + client.predict(PROMPT + first, *settings, api_name="/generate")
    with pytest.raises(Exception, match="Generate first: Continue goes on from the text written so far"):
        client.predict(PROMPT, "", *settings, api_name="/continue")
