"""The serving page's picture for the docs: a real easy-vqa test question asked through the web page of a running
``sensorium serve``, in headless Debian Chromium driven by Playwright (no browser download, no network but the server).

Usage (the server already running with a trained easy-vqa adapter hosted under NAME)::

    python scripts/serving_screenshot.py --url http://127.0.0.1:8000 --adapter NAME --example 1 --out PNG

It prints the question, the expected answer and the page's answer, so that the picture's caption can say both.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from sensorium.data import read_dataset

CHROMIUM = "/usr/bin/chromium"
# The same offline launch as tests/test_serve_browser.py: a dead proxy for anything but loopback.
OFFLINE = ["--proxy-server=127.0.0.1:9", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--no-first-run", "--dns-prefetch-disable"]


def ask_on_the_page(url: str, adapter: str, media: Path, question: str, screenshot: Path) -> str:
    """Uploads ``media``, asks ``question`` of ``adapter`` as a user would, saves the page and returns its answer."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=OFFLINE)
        page = browser.new_page(viewport={"width": 800, "height": 720})
        page.goto(url)
        page.select_option("#adapter", adapter)
        page.set_input_files("#media", media)
        page.wait_for_function("document.querySelector('#preview img')?.naturalWidth > 0")
        page.fill("#question", question)
        page.click("#ask")
        expect(page.locator("#timing")).to_contain_text("ms", timeout=120_000)
        page.screenshot(path=screenshot, full_page=True)
        answer = page.inner_text("#answer")
        browser.close()
    return answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the running server")
    parser.add_argument("--adapter", required=True, help="the name the server hosts the easy-vqa adapter under")
    parser.add_argument("--example", type=int, default=1, help="index of the question in easy-vqa's test split")
    parser.add_argument("--out", type=Path, required=True, help="where to write the PNG")
    args = parser.parse_args()
    example = read_dataset({"format": "easy-vqa", "split": "test"})[args.example]
    answer = ask_on_the_page(args.url, args.adapter, Path(example.media), example.question, args.out)
    print(f"image: {Path(example.media).name}\nquestion: {example.question}\nexpected: {example.answers[0]}\n"
          f"page's answer: {answer}")


if __name__ == "__main__":
    main()
