"""A converted folder is a complete Hub repo: loading it by Hub id from the cache, offline; its model cards."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import place_in_hub_cache
from test_convert_checkpoint import CAPTIONS, authors_options, convert_tiny, random_images

from transformers_seps import SepsModel, SepsProcessor
from transformers_seps.tools.convert_official import OfficialCheckpoint, official_seps_config
from transformers_seps.tools.model_card import AUTHORS_REPORTED, planned_releases, release_name, render_model_card

REPO_ID = "org/seps-vit-f30k"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
MODEL_CARDS = Path(__file__).resolve().parents[1] / "model_cards"


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, dict]:
    return convert_tiny("vit", tmp_path_factory.mktemp("convert"))


def test_converted_folder_is_a_complete_hub_repo(converted):
    folder, _ = converted
    files = {path.name for path in folder.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "processor_config.json", "tokenizer_config.json"} <= files
    assert {"configuration_seps.py", "modeling_seps.py", "processing_seps.py"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in files)
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_seps.SepsConfig", "AutoModel": "modeling_seps.SepsModel"}
    processor_config = json.loads((folder / "processor_config.json").read_text())
    assert processor_config["auto_map"] == {"AutoProcessor": "processing_seps.SepsProcessor"}
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "\nlibrary_name: transformers\n" in card.split("\n---\n")[0]
    assert "saved after epoch 12, 4321 iterations" in card and "`best_rsum` = 512.3" in card
    assert "Weights not released yet" not in card


@pytest.mark.slow
def test_hub_id_resolves_from_the_cache_offline(converted, tmp_path):
    """`SepsModel.from_pretrained(hub id)` and `AutoModel.from_pretrained(hub id, trust_remote_code=True)` load the
    repo from a Hugging Face cache with the network switched off; the remote code needs no transformers_seps."""
    folder, _ = converted
    place_in_hub_cache(folder, tmp_path / "hf_home" / "hub", REPO_ID, COMMIT)
    images = random_images(2, seed=3)
    torch.save(torch.stack([torch.from_numpy(np.array(image)) for image in images]), tmp_path / "images.pt")
    model = SepsModel.from_pretrained(folder).eval()
    inputs = SepsProcessor.from_pretrained(folder)(images=images, text=CAPTIONS)
    with torch.no_grad():
        expected = model(**inputs).logits_per_image

    script = textwrap.dedent(
        f"""
        import sys
        import torch
        from PIL import Image

        pixels = torch.load({str(tmp_path / "images.pt")!r})
        images = [Image.fromarray(array.numpy()) for array in pixels]
        captions = {CAPTIONS!r}
        scores = {{}}

        sys.modules["transformers_seps"] = None  # the remote code must not need the package
        from transformers import AutoModel, AutoProcessor

        model = AutoModel.from_pretrained({REPO_ID!r}, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained({REPO_ID!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
        with torch.no_grad():
            scores["auto"] = model(**processor(images=images, text=captions)).logits_per_image

        del sys.modules["transformers_seps"]
        from transformers_seps import SepsModel, SepsProcessor

        model = SepsModel.from_pretrained({REPO_ID!r}).eval()
        processor = SepsProcessor.from_pretrained({REPO_ID!r})
        assert type(model).__module__ == "transformers_seps.modeling_seps"
        with torch.no_grad():
            scores["package"] = model(**processor(images=images, text=captions)).logits_per_image
        torch.save(scores, {str(tmp_path / "scores.pt")!r})
        """
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    scores = torch.load(tmp_path / "scores.pt")
    torch.testing.assert_close(scores["auto"], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(scores["package"], expected, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------------------------------
# Model cards
# --------------------------------------------------------------------------------------------------------------


def test_committed_cards_are_the_generated_ones():
    """`model_cards/` holds one card per planned release, as `python -m transformers_seps.tools.model_card` writes
    them."""
    expected = {
        f"{release_name(backbone, dataset)}.md": render_model_card(
            backbone, dataset, repo_id=f"<org>/{release_name(backbone, dataset)}"
        )
        for backbone, dataset in planned_releases()
    }
    assert len(expected) == 8
    committed = {path.name: path.read_text(encoding="utf-8") for path in MODEL_CARDS.glob("seps-*.md")}
    assert committed.keys() == expected.keys()
    for name, card in expected.items():
        assert committed[name] == card, f"{name} is stale: python -m transformers_seps.tools.model_card"


def _results_section(card: str) -> str:
    return card.split("## Results")[1].split("\n## ")[0]


@pytest.mark.parametrize("backbone, dataset", planned_releases())
def test_cards_quote_only_the_authors_numbers_as_theirs(backbone, dataset):
    card = render_model_card(backbone, dataset, repo_id="org/x")
    assert "**Weights not released yet.**" in card
    results = _results_section(card)
    assert "**Ours: not measured yet.**" in results
    quoted = {value for row in AUTHORS_REPORTED[(dataset, backbone)].values() for value in row}
    references = {86.9, 62.5, 68.5}  # the paper's leaky ViT-224 T2I R@1, and LAPS and D2S-VSE as their authors'
    numbers = {float(number) for number in re.findall(r"\d+\.\d", results)}
    assert numbers == quoted | references
    assert "leak" in results and "test-split rSum" in results
    assert "arXiv" in card and "eprint        = {2511.01390}" in card


def test_card_of_a_converted_checkpoint_states_its_provenance():
    options = vars(authors_options("vit", vit_type="swin_384", img_res=384, num_patches=144, embed_size=512))
    options.update(dataset="coco", sparse_ratio=0.8, aggr_ratio=0.6)
    config = official_seps_config(options)
    checkpoint = OfficialCheckpoint(state_dict={}, options=options, epoch=27, best_rsum=571.23, iterations=99)
    card = render_model_card("swin-384", "coco", repo_id="me/seps", config=config, checkpoint=checkpoint)
    assert "# SEPS (the authors' weights), Swin-384 backbone, MS-COCO" in card
    assert "- microsoft/swin-base-patch4-window12-384" in card
    assert "saved after epoch 27, 99 iterations" in card and "`best_rsum` = 571.2" in card
    assert "| patches N | 144 |" in card and "| 116 (sparse_ratio rho = 0.8) |" in card
    assert 'AutoModel.from_pretrained("me/seps", trust_remote_code=True)' in card
    assert "MS-COCO 5K | 74.7 | 88.4 | 70.3 | 93.8 | 519.1 |" in card


def test_card_of_laps_weights_quotes_no_seps_result():
    card = render_model_card("swin-224", "f30k", repo_id="org/laps", method="laps")
    assert "# LAPS (the authors' weights) as a SEPS model, Swin-224 backbone, Flickr30K" in card
    assert "## LAPS weights" in card and "Do not pass dense captions" in card
    numbers = {float(number) for number in re.findall(r"\d+\.\d", _results_section(card))}
    assert numbers == {86.9, 62.5, 68.5}  # the references only, no SEPS table
    with pytest.raises(ValueError, match="method must be one of"):
        render_model_card("swin-224", "f30k", repo_id="org/laps", method="vse")
