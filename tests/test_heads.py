"""The variant heads alone: each is built from a config without a model, prepares images and scores a block of
pairs exactly as the independent one-caption reference does; the model picks its head once from the config; the
shared-exponential aggregation softmax equals the per-pair one, also where the shared exponentials underflow."""

from types import SimpleNamespace

import pytest
import torch
from conftest import random_pair_embeddings, tiny_config, tiny_model
from reference_seps import reference_similarity

from transformers_seps.modeling_seps import (
    SEPS_HEADS,
    SepsOfficialHead,
    SepsPaperHead,
    _shifted_exp,
    _TextSide,
    kept_softmax,
    masked_softmax,
)

NUM_IMAGES, NUM_CAPTIONS = 3, 4


def embeddings(num_tokens: int) -> tuple[torch.Tensor, ...]:
    return random_pair_embeddings(NUM_IMAGES, NUM_CAPTIONS, num_tokens, caption_len=7, dense_len=11, seed=5)


@pytest.mark.parametrize("with_dense", [True, False])
def test_a_head_alone_scores_a_block_as_the_reference_does(variant, with_dense):
    config = tiny_config(variant)
    torch.manual_seed(0)
    head = SEPS_HEADS[variant](config).eval()
    images, texts, text_mask, dense, dense_mask = embeddings(config.num_patches + 1)
    dense_side = _TextSide.from_embeddings(dense, dense_mask, paired=True) if with_dense else None
    with torch.no_grad():
        image_side = head.prepare_images(images[:, 1:], images[:, 0], dense_side)
        scores, keep_mask = head.score_block(image_side, _TextSide.from_embeddings(texts, text_mask))
        dense_column = None if dense_side is None else head.dense_branch(image_side, dense_side, block_size=2)
        if dense_column is not None:
            scores = scores + dense_column
        expected = reference_similarity(
            SimpleNamespace(config=config, head=head),
            images,
            texts,
            text_mask,
            *((dense, dense_mask) if with_dense else ()),
        )
    assert (dense_column is not None) == (with_dense and variant == "official")  # only official adds f(I_j, D_j)
    assert scores.shape == (NUM_IMAGES, NUM_CAPTIONS)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)
    assert keep_mask.shape == (NUM_IMAGES, NUM_CAPTIONS, config.num_patches)
    assert (keep_mask.sum(dim=-1) == config.num_kept_patches).all()


def test_the_model_picks_its_head_once_from_the_config(variant):
    model = tiny_model(variant)
    assert type(model.head) is SEPS_HEADS[variant]
    assert model.head.config is model.config
    head_keys = {key for key in model.state_dict() if key.startswith("head.")}
    if variant == "official":
        assert {"head.aggregator.scale", "head.aggregator.mlp.3.weight"} <= head_keys
        assert not any(key.startswith("head.patch_scorer") for key in head_keys)
    else:
        for module in ("patch_scorer", "sparse_aggregator", "dense_aggregator", "word_relevance", "token_relevance"):
            assert any(key.startswith(f"head.{module}.") for key in head_keys), module
    # Nothing variant-specific outside the head (the first stage's global embedding is shared by both variants).
    outside = {key.split(".")[0] for key in model.state_dict() if not key.startswith("head.")}
    assert outside == {"vision_model", "text_model", "vision_projection", "text_projection", "global_embedding"}


def test_the_paper_head_samples_in_training_and_the_official_head_never_does():
    config = tiny_config("paper")
    images, texts, text_mask, dense, dense_mask = embeddings(config.num_patches + 1)
    text_side = _TextSide.from_embeddings(texts, text_mask)
    paper, official = SepsPaperHead(config), SepsOfficialHead(tiny_config("official"))
    for head in (paper, official):
        masks = [head.score_block(head.prepare_images(images[:, 1:], None, None), text_side)[1] for _ in range(3)]
        kept = torch.stack(masks).sum(dim=-1)
        if head is paper:  # Gumbel samples: the number kept varies
            assert not (kept == config.num_kept_patches).all()
        else:
            assert (kept == config.num_kept_patches).all() and all((mask == masks[0]).all() for mask in masks)
    paper.eval()
    mask = paper.score_block(paper.prepare_images(images[:, 1:], None, None), text_side)[1]
    assert (mask.sum(dim=-1) == config.num_kept_patches).all()


def test_kept_softmax_equals_the_per_pair_softmax_also_where_shared_exponentials_underflow():
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 1, 3, 10, generator=generator) * 4).requires_grad_()
    keep_mask = (torch.rand(2, 5, 1, 10, generator=generator) < 0.5).float()
    keep_mask[0, 0] = 0  # a pair that keeps nothing
    with torch.no_grad():
        logits[1, 0, :, 0] = 200.0  # the image's largest logit, far above everything else ...
    keep_mask[1, :2, :, 0] = 0  # ... dropped by two pairs: their kept exponentials underflow when shifted by it
    keep_mask[1, :2, :, 1] = 1
    shifted = _shifted_exp(logits)
    assert ((shifted * keep_mask).sum(dim=-1)[1, :2] == 0).all()  # the situation this test is about

    weights = kept_softmax(logits, shifted, keep_mask)
    expected = masked_softmax(logits, keep_mask)
    torch.testing.assert_close(weights, expected)
    assert (weights[0, 0] == 0).all()
    torch.testing.assert_close(weights[1, :2].sum(dim=-1), torch.ones(2, 3))
    (gradient,) = torch.autograd.grad((weights * torch.arange(10.0)).sum(), logits)
    (expected_gradient,) = torch.autograd.grad((expected * torch.arange(10.0)).sum(), logits)
    assert torch.isfinite(gradient).all()
    torch.testing.assert_close(gradient, expected_gradient)
