"""The fused score S + w * G (`SepsConfig.first_stage_weight`): one formula wherever a model ranks, its weight fit on a
held-out split, 0 without a trained first stage."""

import numpy as np
import pytest
import torch
from conftest import random_captions, tiny_config, tiny_model

from transformers_seps import SepsModel
from transformers_seps.calibration import FIRST_STAGE_WEIGHTS, fit_first_stage_weight
from transformers_seps.global_embedding import first_stage_scores
from transformers_seps.metrics import retrieval_metrics
from transformers_seps.retrieval import shortlist_and_rerank

WEIGHT = 0.7


def encoded(model: SepsModel, num_images: int = 5, num_texts: int = 6):
    generator = torch.Generator().manual_seed(3)
    pixels = torch.randn(num_images, 3, 40, 40, generator=generator)
    ids, mask = random_captions(num_texts, 8, seed=4)
    dense_ids, dense_mask = random_captions(num_images, 12, seed=5)
    with torch.no_grad():
        return (
            model.encode_image(pixels),
            model.encode_text(ids, mask),
            mask,
            model.encode_text(dense_ids, dense_mask),
            dense_mask,
        )


def first_stage(model: SepsModel, images: torch.Tensor, texts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return first_stage_scores(model.global_text_embeds(texts, mask), model.global_image_embeds(images)).t()


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_similarity_adds_the_weighted_first_stage_score(variant):
    model = tiny_model(variant, first_stage_weight=WEIGHT)
    images, texts, mask, dense, dense_mask = encoded(model)
    with torch.no_grad():
        fused = model.similarity(images, texts, mask, dense, dense_mask)
        alone = model.similarity(images, texts, mask, dense, dense_mask, first_stage_weight=0)
        logits = model.score_embeddings(images, texts, mask, dense, dense_mask).logits_per_image
    expected = alone + WEIGHT * first_stage(model, images, texts, mask)
    torch.testing.assert_close(fused, expected)
    assert not torch.allclose(fused, alone)
    # The zero-shot pipeline's logits scale the same fused score.
    torch.testing.assert_close(logits, model.config.logit_scale * expected)


def test_re_ranking_a_shortlist_gives_the_fused_scores_of_exhaustive_search():
    model = tiny_model(first_stage_weight=WEIGHT)
    images, texts, mask, dense, dense_mask = encoded(model, num_images=7)
    with torch.no_grad():
        exhaustive = model.similarity(images, texts, mask, dense, dense_mask)
    result = shortlist_and_rerank(model, images, texts, mask, 4, dense, dense_mask)
    torch.testing.assert_close(result.scores, exhaustive.t().gather(1, result.indices))


def test_a_weight_needs_a_trained_first_stage():
    with pytest.raises(ValueError, match="first_stage_weight=0.5 fuses .* no trained first stage"):
        tiny_config(first_stage_weight=0.5, global_contrastive_weight=0.0)
    with pytest.raises(ValueError, match="first_stage_weight must be >= 0"):
        tiny_config(first_stage_weight=-1.0)
    model = tiny_model(global_contrastive_weight=0.0)
    with pytest.raises(ValueError, match="needs a trained first stage"):
        model.fuse_scores(torch.zeros(2, 2), torch.zeros(2, 2), 0.5)


def test_a_checkpoint_without_a_first_stage_loads_with_no_fusion(tmp_path):
    tiny_model(global_contrastive_weight=0.0).save_pretrained(tmp_path / "old")
    # A head trained without a first stage, as checkpoints from before it existed: the config asks for one.
    loaded = SepsModel.from_pretrained(tmp_path / "old", global_contrastive_weight=1.0, first_stage_weight=0.5)
    assert loaded.global_embedding is not None  # an explicit global_contrastive_weight keeps a fresh first stage
    loaded = SepsModel.from_pretrained(tmp_path / "old")
    assert loaded.global_embedding is None and loaded.config.first_stage_weight == 0


def test_the_fit_takes_the_weight_that_ranks_the_split_best():
    rng = np.random.default_rng(0)
    num_images, per_image = 40, 5
    targets = np.repeat(np.arange(num_images), per_image)
    truth = np.zeros((num_images, num_images * per_image))
    truth[targets, np.arange(len(targets))] = 1.0
    # Each scorer alone errs on its own captions; together they rank nearly every caption's image first.
    seps = truth * (rng.random(truth.shape) < 0.6) + 0.5 * rng.random(truth.shape)
    helpful = truth * (rng.random(truth.shape) < 0.6) + 0.5 * rng.random(truth.shape)
    weight = fit_first_stage_weight(seps, helpful, targets)
    assert weight in FIRST_STAGE_WEIGHTS
    rsum = {w: retrieval_metrics(seps + w * helpful, targets)["rsum"] for w in (0.0, *FIRST_STAGE_WEIGHTS)}
    assert rsum[weight] == max(rsum.values()) > rsum[0.0]
    # A first stage that changes no ranking, or only for the worse, does not enter the score.
    assert fit_first_stage_weight(seps, np.zeros_like(seps), targets) == 0.0
    assert fit_first_stage_weight(seps, -truth, targets) == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        fit_first_stage_weight(seps, helpful[:, :-5], targets)
