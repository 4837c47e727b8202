"""The web page in a real browser: headless Chromium against the real server on a loopback port.

Chromium is Debian's (``apt-get install chromium``), driven by Playwright without its own browser
download. Every request the page makes is recorded: the page must work with no network but the server.
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from playwright.sync_api import Page, expect, sync_playwright

from sensorium import load
from sensorium.data import read_dataset
from sensorium.media import load_image
from sensorium.serve.app import create_app, load_registry, running_server

CHROMIUM = "/usr/bin/chromium"
# A dead proxy for anything but loopback, and none of Chromium's own background traffic.
OFFLINE = ["--proxy-server=127.0.0.1:9", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--no-first-run", "--dns-prefetch-disable"]


@pytest.fixture(scope="module")
def server(tiny_adapter_folders):
    with running_server(create_app(load_registry(list(tiny_adapter_folders.items()), weights="float32"))) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=OFFLINE)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    """The page, loaded, with its adapters listed; ``page.requested`` collects every URL it asked for."""
    page = browser.new_page(viewport={"width": 800, "height": 860})
    page.requested = []
    page.on("request", lambda request: page.requested.append(request.url))
    page.goto(server)
    expect(page.locator("#adapter option")).to_have_count(2)
    yield page
    page.close()


def shape_png(path: Path, colour: str) -> Path:
    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).ellipse((12, 12, 52, 52), fill=colour)
    image.save(path)
    return path


def shown(answer: str) -> str:
    return answer or "(empty answer)"


def assert_only_local(page: Page, server: str) -> None:
    assert page.requested and all(url.startswith((server, "blob:")) for url in page.requested), page.requested


def test_ask_about_an_uploaded_image(page, server, tiny_adapter_folders, tmp_path):
    example = read_dataset({"format": "easy-vqa", "split": "test", "limit": 1})[0]  # a real easy-vqa image
    picture, question = Path(example.media), example.question
    page.select_option("#adapter", "shapes")
    page.set_input_files("#media", picture)
    page.wait_for_function("document.querySelector('#preview img')?.naturalWidth === 64")
    page.fill("#question", question)
    page.click("#ask")
    expect(page.locator("#timing")).to_contain_text("ms")
    expected = load(tiny_adapter_folders["shapes"], weights="float32").ask([load_image(picture)], [question])[0]
    assert page.inner_text("#answer") == shown(expected)
    assert page.inner_text("#error") == ""
    screenshot = tmp_path / "serve-screenshot.png"
    page.screenshot(path=screenshot, full_page=True)
    if os.environ.get("SENSORIUM_SCREENSHOT_DIR"):
        folder = Path(os.environ["SENSORIUM_SCREENSHOT_DIR"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, folder / screenshot.name)
    assert_only_local(page, server)


def test_caption_a_dropped_image(page, server, tiny_adapter_folders, tmp_path):
    picture = shape_png(tmp_path / "square.png", "blue")
    page.select_option("#adapter", "captions")
    expect(page.locator("#question")).to_be_disabled()
    transfer = page.evaluate_handle(
        """([name, data]) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, {type: "image/png"}));
            return transfer;
        }""", [picture.name, base64.b64encode(picture.read_bytes()).decode()])
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    page.wait_for_function("document.querySelector('#preview img')?.naturalWidth === 64")
    page.click("#caption")
    expect(page.locator("#timing")).to_contain_text("batch of 1")
    expected = load(tiny_adapter_folders["captions"]).caption([load_image(picture)])[0]
    assert page.inner_text("#answer") == shown(expected)
    assert_only_local(page, server)


def test_errors_are_shown(page, tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_text("not an image at all")
    page.select_option("#adapter", "shapes")
    page.set_input_files("#media", fake)
    page.fill("#question", "color ?")
    page.click("#ask")
    expect(page.locator("#error")).to_contain_text("415: fake.png: unsupported media type")
    assert page.inner_text("#answer") == ""
