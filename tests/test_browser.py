"""The web page in a real browser: headless Chromium (Debian package) driven by Playwright.

Starts `sentune serve`'s app with uvicorn on a free loopback port, types a text, clicks Predict and
checks that the label and one bar per class appear, and with "Highlight words" on, the shaded words.
Set SENTUNE_SCREENSHOT=path.png (SENTUNE_SCREENSHOT_EXPLAIN for the highlights) to keep a screenshot.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import skip_or_fail_in_ci
from tiny_trained import train_tiny

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]



@pytest.fixture(scope="module", autouse=True)
def chromium() -> str:
    """Skipped locally without Chromium; under CI (.ci/run installs it) its absence is a failure."""
    if not Path(CHROMIUM).exists():
        skip_or_fail_in_ci(f"{CHROMIUM} not found: apt-get install chromium chromium-driver to run the browser test")
    return CHROMIUM


@contextlib.contextmanager
def running_server(app):
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # a free port, held until uvicorn takes the socket over
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def server_url(model_dir):
    from sentune.inference.classifier import Classifier
    from sentune.serve import Limits, create_app

    with running_server(create_app(Classifier.load(model_dir), limits=Limits(max_chars=500))) as url:
        yield url


@pytest.fixture(scope="module")
def page(server_url):
    try:
        from playwright import sync_api
    except ImportError:
        skip_or_fail_in_ci("pip install playwright (in the test extra) to run the browser test")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 900, "height": 640})
        page.goto(server_url + "/")
        yield page
        browser.close()


def api_prediction(url: str, text: str) -> dict:
    import json

    request = urllib.request.Request(url + "/predict", data=json.dumps({"text": text}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.load(r)["predictions"][0]


def test_page_shows_label_and_a_bar_per_class(page, server_url):
    text = "a great film, I loved the acting and the story was brilliant"
    page.wait_for_function("document.getElementById('model').textContent.includes('labels')")
    assert "neg, pos" in page.text_content("#model")
    assert page.is_hidden("#keybox")  # this server needs no key
    page.fill("#text", text)
    page.click("#predict")
    page.wait_for_selector("#result:not([hidden])", timeout=10_000)
    want = api_prediction(server_url, text)
    assert page.text_content("#label") == want["label"]
    bars = page.query_selector_all("#bars .bar")
    assert [b.get_attribute("data-label") for b in bars] == ["neg", "pos"]
    for bar in bars:
        share = 100 * want["probs"][bar.get_attribute("data-label")]
        assert bar.query_selector(".value").text_content() == f"{share:.1f}%"
        # The drawn bar, not just its style: its share of the track is the class probability.
        drawn = bar.query_selector(".fill").evaluate(
            "e => e.getBoundingClientRect().width / e.parentElement.getBoundingClientRect().width")
        assert 100 * drawn == pytest.approx(share, abs=0.5)
    best = page.query_selector("#bars .bar.best")
    assert best.get_attribute("data-label") == want["label"]
    if os.environ.get("SENTUNE_SCREENSHOT"):
        page.screenshot(path=os.environ["SENTUNE_SCREENSHOT"], full_page=True)


def test_page_shows_api_errors(page):
    page.fill("#text", "x" * 600)  # over the server's 500-character limit
    page.click("#predict")
    page.wait_for_selector("#error:not([hidden])", timeout=10_000)
    assert "limit is 500" in page.text_content("#error")


def api_explanation(url: str, text: str) -> dict:
    import json

    request = urllib.request.Request(url + "/explain", data=json.dumps({"text": text}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.load(r)["explanations"][0]


def test_highlight_toggle_shades_each_word_by_its_attribution(page, server_url):
    text = "awful boring plot, the acting was bad"
    page.fill("#text", text)
    page.check("#highlight")
    page.click("#predict")
    page.wait_for_selector("#explanation:not([hidden])", timeout=60_000)
    want = api_explanation(server_url, text)
    assert page.text_content("#explained-label") == want["label"]
    spans = page.query_selector_all("#words .word")
    assert [s.text_content() for s in spans] == want["words"] == text.split()
    scale = max(abs(s) for s in want["scores"])
    for span, score in zip(spans, want["scores"], strict=True):
        classes = span.get_attribute("class").split()
        if abs(score) >= 0.1 * scale:  # marked: the sign picks the colour
            assert ("for" if score > 0 else "against") in classes
        # readable without colour: the tooltip gives the signed number and what it means
        title = span.get_attribute("title")
        assert f"{score:+.3f}" in title and ("supports" if score >= 0 else "opposes") in title
    backgrounds = [s.evaluate("e => getComputedStyle(e).backgroundColor") for s in spans]
    marked = [abs(score) >= 0.1 * scale for score in want["scores"]]
    assert any(marked)
    for bg, is_marked in zip(backgrounds, marked, strict=True):  # drawn: shaded exactly when marked
        assert (bg != "rgba(0, 0, 0, 0)") == is_marked
    if os.environ.get("SENTUNE_SCREENSHOT_EXPLAIN"):
        page.screenshot(path=os.environ["SENTUNE_SCREENSHOT_EXPLAIN"], full_page=True)
    page.uncheck("#highlight")
    assert page.is_hidden("#explanation")


def test_page_asks_for_the_key_once_when_the_server_needs_one(page, model_dir):
    from sentune.inference.classifier import Classifier
    from sentune.serve import create_app

    app = create_app(Classifier.load(model_dir), api_keys=["page-key-123456"])
    with running_server(app) as url:
        page.goto(url + "/")
        page.wait_for_selector("#keybox:not([hidden])", timeout=10_000)
        page.fill("#text", "a great film")
        page.fill("#key", "wrong-key")
        page.click("#predict")
        page.wait_for_selector("#error:not([hidden])", timeout=10_000)
        assert "invalid API key" in page.text_content("#error")
        page.fill("#key", "page-key-123456")
        page.click("#predict")
        page.wait_for_selector("#result:not([hidden])", timeout=10_000)
        assert page.is_hidden("#error")
        page.reload()  # asked once: the tab remembers the key
        page.wait_for_selector("#keybox:not([hidden])", timeout=10_000)
        assert page.input_value("#key") == "page-key-123456"
        page.fill("#text", "a great film")
        page.check("#highlight")  # /explain carries the same key
        page.click("#predict")
        page.wait_for_selector("#explanation:not([hidden]), #error:not([hidden])", timeout=60_000)
        assert page.is_hidden("#error"), page.text_content("#error")
        assert page.is_hidden("#error") and page.query_selector_all("#words .word")


# ---- the multi-label page: several highlighted bars, each label's threshold marked ----------------------------
MULTI_TEXT = "great film, loved it, but the ending made me sad"


@pytest.fixture(scope="module")
def multi_label_url(tmp_path_factory):
    """A tiny multi-label model whose thresholds sit just below two labels' probabilities for MULTI_TEXT and
    just above the third's, so the page must highlight exactly two bars."""
    import json

    from conftest import save_tiny

    from sentune.evaluation.calibrate import store_setting
    from sentune.inference.classifier import Classifier
    from sentune.serve import create_app

    folder = save_tiny(tmp_path_factory.mktemp("multi"), "bert", num_labels=3)
    config = json.loads((folder / "config.json").read_text())
    names = ["joy", "love", "sadness"]
    config.update(problem_type="multi_label_classification", id2label=dict(enumerate(names)),
                  label2id={n: i for i, n in enumerate(names)})
    (folder / "config.json").write_text(json.dumps(config))
    probs = Classifier.load(folder).predict_proba([MULTI_TEXT])[0]
    cut = {"joy": float(probs[0]) - 0.01, "love": float(probs[1]) + 0.01, "sadness": float(probs[2]) - 0.01}
    store_setting(folder, "thresholds",
                  {"global": 0.5, "per_label": cut, "fallback": [], "min_positives": 1, "n": 1})
    with running_server(create_app(Classifier.load(folder))) as url:
        yield url, cut


def test_multi_label_page_highlights_every_label_above_its_threshold(page, multi_label_url):
    url, cut = multi_label_url
    want = api_prediction(url, MULTI_TEXT)
    page.goto(url + "/")  # the same browser, now on the multi-label model's server
    page.wait_for_function("document.getElementById('model').textContent.includes('multi-label')")
    page.fill("#text", MULTI_TEXT)
    page.click("#predict")
    page.wait_for_selector("#result:not([hidden])", timeout=10_000)
    chosen = [x["label"] for x in want["labels"]]
    assert sorted(chosen) == ["joy", "sadness"]
    assert page.text_content("#label") == ", ".join(chosen)
    assert page.text_content("#caption") == "Predicted labels:"
    bars = page.query_selector_all("#bars .bar")
    assert sorted(b.get_attribute("data-label") for b in bars) == ["joy", "love", "sadness"]
    highlighted = sorted(b.get_attribute("data-label") for b in page.query_selector_all("#bars .bar.best"))
    assert highlighted == ["joy", "sadness"]
    for bar in bars:
        name = bar.get_attribute("data-label")
        assert float(bar.get_attribute("data-threshold")) == pytest.approx(cut[name])
        # the threshold mark is drawn where the threshold is on the track
        at = bar.query_selector(".threshold").evaluate(
            "e => (e.getBoundingClientRect().left + e.getBoundingClientRect().width / 2"
            " - e.parentElement.getBoundingClientRect().left) / e.parentElement.getBoundingClientRect().width")
        assert at == pytest.approx(cut[name], abs=0.01)
        drawn = bar.query_selector(".fill").evaluate(
            "e => e.getBoundingClientRect().width / e.parentElement.getBoundingClientRect().width")
        assert drawn == pytest.approx(want["probs"][name], abs=0.005)
    if os.environ.get("SENTUNE_SCREENSHOT_MULTI"):
        page.screenshot(path=os.environ["SENTUNE_SCREENSHOT_MULTI"], full_page=True)
