"""The Space's Style menu: `LORA_ADAPTERS=dickens=DIR,hardy=DIR MODEL_ID=<export> python spaces_app/app.py`, driven
with headless Chromium and gradio_client. A style is a LoRA adapter of the model; "none" is the model itself. The
history records the style of each generation; a bad LORA_ADAPTERS stops the app in one line before it serves.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.isolation import REPO_ROOT
from helpers.lora import make_lora_adapter, merged_model
from helpers.servers import free_port, stop_process, wait_for_http
from victorian_gpt.modeling_victorian_gpt import GENERATION_DEFAULTS

PROMPT = "It was a dark and stormy night; the rain fell in torrents"
STYLES = ("dickens", "hardy")


@pytest.fixture(scope="module")
def adapters(tiny_export, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("styles")
    return {name: make_lora_adapter(tiny_export, folder / name, seed=seed) for seed, name in enumerate(STYLES, 1)}


def space_env(model: Path, adapters: str, port: int) -> dict:
    return {**os.environ, "MODEL_ID": str(model), "LORA_ADAPTERS": adapters, "GRADIO_SERVER_NAME": "127.0.0.1",
            "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False", "DTYPE": "float32"}


@pytest.fixture(scope="module")
def styled_space(tiny_export, adapters, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("space-styles") / "app.log"
    value = ",".join(f"{name}={path}" for name, path in adapters.items())
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(REPO_ROOT / "spaces_app" / "app.py")],
                                env=space_env(tiny_export, value, port), stdout=out, stderr=subprocess.STDOUT,
                                cwd=tmp_path_factory.mktemp("cwd"))
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_http(url, proc, timeout=180, log=log)
        yield url
    finally:
        stop_process(proc)


def greedy_text(model, tokenizer, max_new_tokens: int) -> str:
    import torch

    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, top_k=None, top_p=None,
                             temperature=None, repetition_penalty=1.0)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,1600"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.mark.slow  # Chromium, and the Space in a server process
def test_the_style_menu_writes_in_the_chosen_style_and_the_history_records_it(styled_space, browser, tiny_export,
                                                                              adapters):
    from gradio_client import Client
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from transformers import AutoTokenizer

    url = styled_space
    wait = WebDriverWait(browser, 60)
    browser.get(url)
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#prompt textarea")).send_keys(PROMPT)
    browser.find_element(By.CSS_SELECTOR, "#seed input").send_keys("7")
    raw = browser.find_element(By.CSS_SELECTOR, "#raw-output textarea")
    style_box = browser.find_element(By.CSS_SELECTOR, "#style input")
    assert style_box.is_displayed() and style_box.get_attribute("value") == "none"  # the model itself by default

    def entries():
        return browser.find_elements(By.CSS_SELECTOR, "#history .vg-entry")  # newest first

    def generate(count: int) -> str:
        browser.find_element(By.CSS_SELECTOR, "#generate").click()
        wait.until(lambda d: len(entries()) == count)
        return raw.get_attribute("value")

    plain = generate(1)
    style_box.click()  # the menu opens; pick an author
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#style li[role=option][aria-label=hardy]")).click()
    wait.until(lambda d: style_box.get_attribute("value") == "hardy")
    styled = generate(2)
    assert styled and styled != plain
    newest, oldest = entries()
    assert (newest.get_attribute("data-style"), oldest.get_attribute("data-style")) == ("hardy", "none")
    assert "style hardy · seed 7" in newest.text and "style" not in oldest.text.split("·")[0]

    # the API takes the style after the seed: the same settings and style give the page's text; no style is "none"
    client = Client(url, verbose=False)
    defaults = [GENERATION_DEFAULTS[name] for name in ("temperature", "top_k", "top_p", "repetition_penalty")]
    length = int(browser.find_element(By.CSS_SELECTOR, "#max_new_tokens input[type=number]").get_attribute("value"))
    assert client.predict(PROMPT, length, *defaults, 7, "hardy", api_name="/generate") == styled
    assert client.predict(PROMPT, length, *defaults, 7, api_name="/generate") == plain

    # greedy decoding with a style is the adapter merged into the model (peft), as the server's is
    tokenizer = AutoTokenizer.from_pretrained(tiny_export)
    expected = greedy_text(merged_model(tiny_export, adapters["dickens"]), tokenizer, 16)
    assert client.predict(PROMPT, 16, 1.0, 1, 1.0, 1.0, 0, "dickens", api_name="/generate") == expected
    # Continue takes it too: the pass goes on from the text shown, in the style given
    greedy = (1.0, 1, 1.0, 1.0, 0, "dickens")
    first = client.predict(PROMPT, 8, *greedy, api_name="/generate")
    both = client.predict(PROMPT, first, 8, *greedy, api_name="/continue")
    assert both == first + client.predict(PROMPT + first, 8, *greedy, api_name="/generate")
    with pytest.raises(Exception, match="austen"):
        client.predict(PROMPT, 8, 1.0, 1, 1.0, 1.0, 0, "austen", api_name="/generate")


def test_a_bad_lora_adapters_setting_stops_the_space_in_one_line(tiny_export, tmp_path, monkeypatch):
    """A malformed LORA_ADAPTERS, or a folder that is no adapter: the app stops before it serves, in one line."""
    from spaces_app.app import main

    monkeypatch.setenv("MODEL_ID", str(tiny_export))
    monkeypatch.delenv("TGI_URL", raising=False)
    for value, message in (("dickens", "LoRA adapter 'dickens' is not NAME=SOURCE"),
                           (f"none={tmp_path}", "'none' is the Style menu's name for the model without an adapter"),
                           (f"dickens={tiny_export}", "LoRA adapter 'dickens'"),
                           (f"dickens={tmp_path / 'nowhere'}", "no such folder")):
        monkeypatch.setenv("LORA_ADAPTERS", value)
        with pytest.raises(SystemExit) as stopped:
            main()
        text = str(stopped.value.code)
        assert text.startswith("app.py: cannot start: ") and message in text and "\n" not in text, text


def test_styles_are_parsed_before_anything_loads_and_the_history_shows_them():
    from spaces_app.app import history_html, history_markdown, parse_styles

    assert parse_styles("") == {} and parse_styles(" ") == {}
    assert parse_styles("dickens=me/dickens-lora,hardy=/data/hardy") == {"dickens": "me/dickens-lora",
                                                                         "hardy": "/data/hardy"}
    with pytest.raises(ValueError, match="'none' is the Style menu's name for the model without an adapter"):
        parse_styles("none=me/plain-lora")
    entry = dict(time="2026-01-01T00:00:00Z", model="m", style="dickens", prompt="It was", max_new_tokens=5,
                 do_sample=False, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.2, seed=None,
                 generated_text=" a night", stopped=False)
    assert "data-style='dickens'" in history_html([entry])
    assert "style dickens · greedy · repetition penalty 1.2" in history_markdown([entry])
    plain = dict(entry, style="none")
    assert "data-style='none'" in history_html([plain]) and "style" not in history_markdown([plain]).split("##")[1]
