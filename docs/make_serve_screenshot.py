"""Regenerate docs/serve.png, the README's picture of the ``nmt serve`` page.

Starts ``nmt serve -m MODEL`` on a free loopback port, drives the page in headless Chromium
(Debian's ``chromium`` and ``chromium-driver``, through selenium), translates a sentence and
saves the page with its cross-attention heatmap.

    python docs/make_serve_screenshot.py --model runs/demo/averaged
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from serve_client import ServerProcess  # noqa: E402
from test_serve_browser import headless_chromium  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="Model folder (de->en).")
    parser.add_argument("--sentence", default="Ein Mann mit einem roten Hut spielt Gitarre.")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "serve.png")
    args = parser.parse_args()
    log = args.out.with_suffix(".log")
    driver = headless_chromium()
    server = ServerProcess(["-m", f"de-en={args.model}", "--workers", "1"], log)
    try:
        server.wait_ready()
        driver.set_window_size(1200, 1300)
        driver.get(server.url + "/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
        source = driver.find_element(By.ID, "src")
        source.clear()
        source.send_keys(args.sentence)
        driver.find_element(By.ID, "translate").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#heatmap td"))
        driver.save_screenshot(str(args.out))
        print(f"wrote {args.out}")
    finally:
        driver.quit()
        server.stop()
        log.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
