"""The page at ``/`` in headless Chromium: type a German sentence, translate, read the output,
open the cross-attention heatmap and check its rows and columns against the API's.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and selenium;
selenium is pointed at those binaries, so nothing is downloaded at run time. Skipped, saying
why, where they are missing.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import urllib.request
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait
from serve_client import ServerProcess, request
from skips import skip

from nmt.serve.auth import presented_key

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def headless_chromium() -> Any:
    """A selenium driver for the installed Chromium (no download), headless."""
    if not (CHROMIUM and CHROMEDRIVER):
        skip(
            "chromium",
            f"chromium {CHROMIUM or 'not found'}, chromedriver {CHROMEDRIVER or 'not found'}",
        )
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1280,900")
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@contextlib.contextmanager
def page(model: str, tmp_path: Path, *args: str) -> Iterator[tuple[Any, ServerProcess, Any]]:
    """``nmt serve -m MODEL ARGS`` (one worker) and headless Chromium on its page: yields
    ``(driver, server, wait)``, a 60 s ``WebDriverWait``; both are stopped after."""
    driver = headless_chromium()
    server = ServerProcess(["-m", model, "--workers", "1", *args], tmp_path / "log")
    try:
        server.wait_ready()
        driver.get(server.url + "/")
        yield driver, server, WebDriverWait(driver, 60)
    finally:
        driver.quit()
        server.stop()


def test_page_translates_and_shows_the_heatmap(
    tiny_run: Path, multi30k: Callable[..., list[str]], tmp_path: Path
) -> None:
    line = multi30k("val", "de", 1)[0]
    with page(f"tiny={tiny_run}", tmp_path) as (driver, server, wait):
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
        assert not driver.find_element(By.ID, "tgt-box").is_displayed()  # one target language
        source = driver.find_element(By.ID, "src")
        source.clear()
        source.send_keys(line)
        driver.find_element(By.ID, "translate").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#output .translation"))
        shown = driver.find_element(By.CSS_SELECTOR, "#output .translation").text

        # What the page asked for (beam 5, 3-best, attention), through the API.
        status, body = request(
            server.url + "/v1/translate",
            {"src": [line], "beam_size": 5, "nbest": 3, "return_attention": True},
        )
        assert status == 200
        (t,) = body["translations"]
        assert shown == t["text"]
        hyps = driver.find_elements(By.CSS_SELECTOR, "#output .nbest .hyp")
        assert [h.text for h in hyps] == [h["text"] for h in t["nbest"]]

        # Open the heatmap of the second hypothesis, one layer and head.
        buttons = driver.find_elements(By.CSS_SELECTOR, "button.show-attention")
        assert len(buttons) == 1 + len(t["nbest"])
        buttons[2].click()
        Select(driver.find_element(By.ID, "layer")).select_by_value("1")
        Select(driver.find_element(By.ID, "head")).select_by_value("3")
        att = t["nbest"][1]["attention"]
        _, _, tgt_len, src_len = att["shape"]
        rows = driver.find_elements(By.CSS_SELECTOR, "#heatmap tbody tr")
        columns = driver.find_elements(By.CSS_SELECTOR, "#heatmap thead th[scope=col]")
        assert (len(rows), len(columns)) == (tgt_len, src_len)
        assert [c.text for c in columns] == [p for p in att["src_pieces"]]
        assert [r.find_element(By.TAG_NAME, "th").text for r in rows] == att["tgt_pieces"]
        assert len(driver.find_elements(By.CSS_SELECTOR, "#heatmap td")) == tgt_len * src_len
        # One alignment mark per target piece (EOS excluded).
        assert len(driver.find_elements(By.CSS_SELECTOR, "#heatmap td.aligned")) == tgt_len - 1


def test_page_lets_a_multilingual_model_translate_into_the_chosen_language(
    both_ways: Path, short_pairs: tuple[list[str], list[str]], tmp_path: Path
) -> None:
    """A model of de-en and en-de: the page offers both targets and sends the chosen one;
    greedy search reproduces the pairs the model learned by heart."""
    de, en = short_pairs
    with page(f"both={both_ways}", tmp_path) as (driver, _, wait):
        wait.until(lambda d: d.find_element(By.ID, "tgt-box").is_displayed())
        into = Select(driver.find_element(By.ID, "tgt"))
        assert [o.text for o in into.options] == ["en", "de"]  # in the order of the pairs
        beam = driver.find_element(By.ID, "beam")
        beam.clear()
        beam.send_keys("1")
        for lang, src, ref in (("de", en[0], de[0]), ("en", de[2], en[2])):
            into.select_by_value(lang)
            source = driver.find_element(By.ID, "src")
            source.clear()
            source.send_keys(src)
            driver.find_element(By.ID, "translate").click()
            wait.until(
                lambda d, ref=ref: any(
                    e.text == ref for e in d.find_elements(By.CSS_SELECTOR, "#output .translation")
                )
            )


def test_page_translates_with_a_ctranslate2_model(
    tiny_run: Path, multi30k: Callable[..., list[str]], tmp_path: Path
) -> None:
    """A CTranslate2 export gives no attention: the page does not ask for it (every click was
    answered 422), shows the translation, and leaves the attention buttons disabled."""
    from nmt.interop.export import export_ctranslate2

    export_ctranslate2(tiny_run, tmp_path / "ct2")
    line = multi30k("val", "de", 1)[0]
    with page(f"ct={tmp_path / 'ct2'}", tmp_path) as (driver, server, wait):
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
        source = driver.find_element(By.ID, "src")
        source.clear()
        source.send_keys(line)
        driver.find_element(By.ID, "translate").click()
        wait.until(
            lambda d: (
                d.find_elements(By.CSS_SELECTOR, "#output .translation")
                or "error" in d.find_element(By.ID, "status").get_attribute("class")
            )
        )
        status, body = request(server.url + "/v1/translate", {"src": [line], "nbest": 3})
        assert status == 200
        shown = driver.find_element(By.CSS_SELECTOR, "#output .translation").text
        assert shown == body["translations"][0]["text"]
        buttons = driver.find_elements(By.CSS_SELECTOR, "button.show-attention")
        assert buttons and not any(b.is_enabled() for b in buttons)


def test_the_openapi_page_renders_offline(tiny_run: Path, tmp_path: Path) -> None:
    """/docs draws Swagger UI from files nmt serves (FastAPI's default page loads them from a
    CDN, and stayed blank on an offline machine): the title and the translate route show."""
    with page(f"tiny={tiny_run}", tmp_path) as (driver, server, wait):
        driver.get(server.url + "/docs")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".swagger-ui .info .title"))
        assert "nmt serve" in driver.find_element(By.CSS_SELECTOR, ".info .title").text
        wait.until(lambda d: "/v1/translate" in d.find_element(By.TAG_NAME, "body").text)


def test_page_sends_the_api_key_it_is_given(
    tiny_run: Path, multi30k: Callable[..., list[str]], tmp_path: Path
) -> None:
    """With ``--api-key-file`` the page shows its API key field (the server refused to list
    the models) and says why; a wrong key is reported as one; with the right key it lists
    the models and translates, sending the key kept in sessionStorage. (It sent no key, so
    every call was a 401 and the page could not translate at all.)"""
    key = "page-key-0123456789"
    (tmp_path / "keys.txt").write_text(key + "\n")
    line = multi30k("val", "de", 1)[0]
    with page(f"tiny={tiny_run}", tmp_path, "--api-key-file", str(tmp_path / "keys.txt")) as (
        driver,
        server,
        wait,
    ):
        wait.until(lambda d: d.find_element(By.ID, "key-box").is_displayed())
        assert "needs an API key" in driver.find_element(By.ID, "status").text
        field = driver.find_element(By.ID, "api-key")
        field.send_keys("wrong-key-0123456", Keys.TAB)  # a change event
        wait.until(lambda d: "not valid" in d.find_element(By.ID, "status").text)
        field.clear()
        field.send_keys(key, Keys.TAB)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
        assert driver.execute_script("return sessionStorage.getItem('nmt-api-key')") == key
        source = driver.find_element(By.ID, "src")
        source.clear()
        source.send_keys(line)
        driver.find_element(By.ID, "translate").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#output .translation"))
        shown = driver.find_element(By.CSS_SELECTOR, "#output .translation").text
        assert request(server.url + "/v1/translate", {"src": [line]})[0] == 401
        # What the page asked for (beam 5), through the API with the key.
        body = json.dumps({"src": [line], "beam_size": 5}).encode()
        call = urllib.request.Request(server.url + "/v1/translate", body)
        call.add_header("Content-Type", "application/json")
        call.add_header("X-API-Key", key)
        with urllib.request.urlopen(call, timeout=60) as res:
            assert shown == json.loads(res.read())["translations"][0]["text"]


def test_every_call_of_the_page_sends_the_api_key() -> None:
    """Without a browser: every ``fetch`` of the page's script takes its headers from
    ``apiHeaders``, which adds the key kept in sessionStorage as ``X-API-Key``, a header the
    server reads (:func:`nmt.serve.auth.presented_key`)."""
    html = resources.files("nmt.serve").joinpath("static/index.html").read_text()
    script = html.split("<script>")[1].split("</script>")[0]
    calls = re.findall(r"fetch\((.*?)\);", script, re.S)
    assert len(calls) == 2 and all("headers: apiHeaders(" in c for c in calls), calls
    assert '"X-API-Key": key' in script and "sessionStorage.getItem(KEY_ITEM)" in script
    assert presented_key({"x-api-key": "some-key-0123"}) == "some-key-0123"
