"""demo/app.py, the demo page: launched on localhost with a tiny saved model and queried with gradio_client, it
returns SepsRetriever's ranking of the gallery, with one patch picture per ranked image."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_script, tiny_model_with_processor
from PIL import Image

from transformers_seps import SepsModel, SepsProcessor, SepsRetriever
from transformers_seps.train.cli import UsageError

APP = Path(__file__).resolve().parents[1] / "demo" / "app.py"
CAPTION = "a small red heart at the top left"
NUM_IMAGES = 6
TOP_K = 3
STARTUP_SECONDS = 300


def load_app():
    """demo/app.py as a module (it is a script, not part of the package)."""
    return load_script(APP, "seps_demo_app")


@pytest.fixture(scope="module")
def model_and_gallery(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny model saved with its processor, and a gallery of random PNG images (plus a file the app skips)."""
    root = tmp_path_factory.mktemp("demo")
    model, processor = tiny_model_with_processor("paper", seed=3)
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    gallery = root / "gallery"
    gallery.mkdir()
    generator = np.random.default_rng(0)
    for index in range(NUM_IMAGES):
        pixels = generator.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(gallery / f"image_{index}.png")
    (gallery / "notes.txt").write_text("not an image")
    return root / "model", gallery


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def connect(url: str, server: subprocess.Popen):
    """A gradio_client `Client` of the app at `url`, once it answers (the app dying first fails the test)."""
    from gradio_client import Client

    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        if server.poll() is not None:
            pytest.fail(f"the demo app exited with {server.returncode}: {server.stderr.read()[-3000:]}")
        try:
            return Client(url, verbose=False)
        except Exception:  # not listening yet
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


@pytest.mark.slow
def test_the_launched_app_returns_the_retrievers_ranking_and_the_patch_pictures(model_and_gallery):
    model_folder, gallery = model_and_gallery
    names = sorted(path.name for path in gallery.glob("*.png"))
    images = [Image.open(gallery / name).convert("RGB") for name in names]
    retriever = SepsRetriever(SepsModel.from_pretrained(model_folder), SepsProcessor.from_pretrained(model_folder))
    retriever.add_images(images)
    expected = retriever.search(CAPTION, top_k=TOP_K)

    port = free_port()
    command = [sys.executable, str(APP), "--model", str(model_folder), "--gallery", str(gallery)]  # every image
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [*command, "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        client = connect(f"http://127.0.0.1:{port}/", server)
        pictures, ranking = client.predict(CAPTION, TOP_K, api_name="/search")
    finally:
        server.terminate()
        server.wait(timeout=60)

    assert [entry["rank"] for entry in ranking] == list(range(1, TOP_K + 1))
    assert [entry["image"] for entry in ranking] == [names[index] for index in expected.indices[0].tolist()]
    torch.testing.assert_close(torch.tensor([entry["score"] for entry in ranking]), expected.scores[0])
    assert len(pictures) == TOP_K
    for picture, entry in zip(pictures, ranking, strict=True):
        assert picture["caption"].startswith(f"#{entry['rank']} {entry['image']}")
        with Image.open(picture["image"]) as image:  # the patch picture: wider than tall (image | kept patches)
            assert image.width > image.height


def test_a_gallery_without_matching_images_and_a_bad_size_are_refused(tmp_path):
    app = load_app()
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(UsageError, match=r"--gallery .* holds no image file matching --pattern '\*\.png'"):
        app.load_gallery(tmp_path, "*.png", 10)
    with pytest.raises(SystemExit):
        app.parse_args(["--max_images", "0"])


def test_the_gallery_is_every_image_file_of_the_folder_by_default(model_and_gallery, tmp_path, capsys):
    """Issue 24: the default --pattern was the synthetic benchmark's test_*.png; a folder of photos needs them all."""
    model_folder, _ = model_and_gallery
    photos = tmp_path / "photos"
    (photos / "2024").mkdir(parents=True)
    for name in ("beach.JPG", "dog.png", "2024/cat.webp"):
        Image.new("RGB", (40, 30)).save(photos / name)
    (photos / "notes.txt").write_text("not an image")
    args, names, images = load_app().parse_args(["--model", str(model_folder), "--gallery", str(photos)])
    assert names == ["2024/cat.webp", "beach.JPG", "dog.png"] and len(images) == 3
    assert (
        capsys.readouterr().err.strip()
        == f"skipped 1 file of {photos} that is not an image (by the extension): notes.txt"
    )
