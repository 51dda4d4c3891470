"""The Gradio demo (``OUTPUT_DIR/model/app.py``) in a real browser: headless Debian Chromium via playwright.

A short recipe run writes a model folder with its demo; the app is started from that folder on
127.0.0.1 (a free port), a Fashion-MNIST test image is uploaded through the page's file input,
and the predicted target class read from the page must be ``model.predict``'s. The page is saved
as a screenshot in the test's temporary folder. The README's ``docs/demo.png`` is made by the same
function (:func:`run_demo_in_browser`), from the command line:

    python tests/test_demo_browser.py OUTPUT_DIR/model docs/demo.png [IMAGE]

Every wait is on a condition (the server answering, the prediction and the plan on the page),
with a timeout only as a bound; nothing asserts on timing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("JTLN_CHROMIUM", "/usr/bin/chromium")
SERVER_TIMEOUT_S = 120
PAGE_TIMEOUT_MS = 60_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(model_folder: Path, port: int, log: Path) -> subprocess.Popen:
    """``python MODEL_FOLDER/app.py`` on 127.0.0.1:port, offline; its output goes to ``log``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "NO_PROXY": "127.0.0.1"}
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, str(model_folder / "app.py"), "--host", "127.0.0.1", "--port",
                                 str(port)], cwd=model_folder, env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip


def wait_for_server(url: str, process: subprocess.Popen, log: Path) -> None:
    """Poll ``url`` until it answers 200; fail with the app's output if the process exits or time runs out."""
    deadline = time.monotonic() + SERVER_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the demo exited with status {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    raise RuntimeError(f"the demo did not answer at {url} within {SERVER_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def run_demo_in_browser(model_folder: str | os.PathLike, image: str | os.PathLike, screenshot: str | os.PathLike,
                        workdir: str | os.PathLike | None = None) -> str:  # fmt: skip
    """Serve the demo of ``model_folder``, upload ``image`` in headless Chromium, save ``screenshot``.

    Returns the predicted target class the page shows.
    """
    from playwright.sync_api import expect, sync_playwright

    model_folder, workdir = Path(model_folder).resolve(), Path(workdir or Path(screenshot).resolve().parent)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log = workdir / "demo.log"
    process = start_app(model_folder, port, log)
    try:
        wait_for_server(url, process, log)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(url, timeout=PAGE_TIMEOUT_MS)
                page.locator("#image input[type=file]").set_input_files(str(image), timeout=PAGE_TIMEOUT_MS)
                prediction = page.locator("#prediction textarea")
                expect(prediction).not_to_have_value("", timeout=PAGE_TIMEOUT_MS)
                expect(page.locator("#plan img")).to_be_visible(timeout=PAGE_TIMEOUT_MS)
                expect(page.locator("#source")).to_contain_text("%", timeout=PAGE_TIMEOUT_MS)
                label = prediction.input_value()
                page.screenshot(path=str(screenshot), full_page=True)
            finally:
                browser.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return label


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory):
    """A model folder with its demo, from a short JTLN run of the recipe on Fashion-MNIST."""
    from test_recipe_hub import _load_recipe

    out = tmp_path_factory.mktemp("demo") / "run"
    argv = ["--mode", "jtln", "--seeds", "0", "--shots", "5", "--max_steps", "30", "--per_device_train_batch_size",
            "32", "--max_eval_samples", "100", "--output_dir", str(out)]  # fmt: skip
    assert _load_recipe().main(argv) == 0
    return out / "model"


def test_demo_in_headless_chromium_shows_the_models_prediction(demo_model, fashion_mnist, tmp_path):
    # never skipped: a missing browser is a failed check, with the fix
    assert Path(CHROMIUM).is_file(), f"no Chromium at {CHROMIUM}: run `make test` (it installs Debian's chromium)"
    from PIL import Image

    from jtln_hf import JointImageClassifier, JointImageClassifierImageProcessor

    for name in ("app.py", "requirements.txt", "demo.json"):
        assert (demo_model / name).is_file(), name
    model = JointImageClassifier.from_pretrained(demo_model).eval()
    targets = [model.config.id2label[i] for i in range(model.config.num_labels)]
    test = fashion_mnist[1]
    names = test.features["label"].names
    row = [i for i, label in enumerate(test["label"]) if names[label] in targets][7]  # a target-class test image
    image_path = tmp_path / "upload.png"
    test[row]["image"].save(image_path)
    processor = JointImageClassifierImageProcessor.from_pretrained(demo_model)
    expected = model.predict(processor(Image.open(image_path))["pixel_values"]).labels[0]

    screenshot = tmp_path / "demo.png"
    shown = run_demo_in_browser(demo_model, image_path, screenshot, workdir=tmp_path)
    assert shown == expected
    assert screenshot.stat().st_size > 10_000 and screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


if __name__ == "__main__":  # the README's screenshot: python tests/test_demo_browser.py MODEL_FOLDER docs/demo.png
    folder, png = Path(sys.argv[1]), Path(sys.argv[2])
    picture = Path(sys.argv[3]) if len(sys.argv) > 3 else sorted((folder / "examples").glob("*.png"))[0]
    staged = png.with_suffix(".upload.png")
    shutil.copyfile(picture, staged)
    try:
        print(run_demo_in_browser(folder, staged, png))
    finally:
        staged.unlink()
        (png.parent / "demo.log").unlink(missing_ok=True)
