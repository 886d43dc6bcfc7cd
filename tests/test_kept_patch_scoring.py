"""The two paths of `SepsHead.score_block`: a top-K selection scores each pair on its K kept patches (gathered
weights, patch-word rows and Gram block), any other selection on all N patches. Both match the one-caption
reference, give the same scores and gradients on the same hard selection, and each block takes the right one."""

from contextlib import nullcontext
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from conftest import random_pair_embeddings, tiny_config
from reference_seps import reference_similarity

from transformers_seps import modeling_seps
from transformers_seps.modeling_seps import (
    SEPS_HEADS,
    _shifted_exp,
    _TextSide,
    kept_aggregation_weights,
    masked_softmax,
)

NUM_IMAGES, NUM_CAPTIONS = 3, 5


def embeddings(num_tokens: int) -> tuple[torch.Tensor, ...]:
    return random_pair_embeddings(NUM_IMAGES, NUM_CAPTIONS, num_tokens, caption_len=9, dense_len=12, seed=11)


def without_kept_indices(head):
    """`head.select_patches` returning the same masks without their indices: forces the all-patches path."""
    select = head.select_patches

    def select_all_width(image, text_similarity):
        scores, keep_mask, _ = select(image, text_similarity)
        return scores, keep_mask, None

    return mock.patch.object(head, "select_patches", side_effect=select_all_width)


def score(head, images, texts, text_mask, dense=None, dense_mask=None) -> torch.Tensor:
    dense_side = None if dense is None else _TextSide.from_embeddings(dense, dense_mask, paired=True)
    image_side = head.prepare_images(images[:, 1:], images[:, 0], dense_side)
    scores = head.score_block(image_side, _TextSide.from_embeddings(texts, text_mask))[0]
    dense_column = None if dense_side is None else head.dense_branch(image_side, dense_side, block_size=2)
    return scores if dense_column is None else scores + dense_column


@pytest.mark.parametrize("with_dense", [True, False])
def test_both_paths_match_the_reference_on_a_top_k_selection(variant, with_dense):
    config = tiny_config(variant)
    torch.manual_seed(0)
    head = SEPS_HEADS[variant](config).eval()
    images, texts, text_mask, dense, dense_mask = embeddings(config.num_patches + 1)
    dense_inputs = (dense, dense_mask) if with_dense else ()
    with torch.no_grad():
        expected = reference_similarity(
            SimpleNamespace(config=config, head=head), images, texts, text_mask, *dense_inputs
        )
        kept_path = score(head, images, texts, text_mask, *dense_inputs)
        with without_kept_indices(head):
            all_patches_path = score(head, images, texts, text_mask, *dense_inputs)
    torch.testing.assert_close(kept_path, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(all_patches_path, expected, atol=1e-5, rtol=1e-5)


def test_the_kept_patch_path_carries_the_same_gradients_in_training():
    # The official head selects by hard top-K also in training: its blocks take the kept-patch path with gradients.
    config = tiny_config("official", detach_selected_patches=False)
    torch.manual_seed(0)
    head = SEPS_HEADS["official"](config).train()
    images, texts, text_mask, _, _ = embeddings(config.num_patches + 1)
    gradients = []
    for force_all_patches in (False, True):
        inputs = images.clone().requires_grad_()
        head.zero_grad()
        with without_kept_indices(head) if force_all_patches else nullcontext():
            score(head, inputs, texts, text_mask).sum().backward()
        gradients.append([inputs.grad, *(p.grad.clone() for p in head.aggregator.parameters())])
    for kept_path, all_patches_path in zip(*gradients, strict=True):
        assert kept_path.abs().sum() > 0
        torch.testing.assert_close(kept_path, all_patches_path, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("variant", "training", "with_dense", "takes_kept_path"),
    [
        ("official", False, True, True),
        ("official", True, False, True),  # hard top-K in training too
        ("paper", False, False, True),
        ("paper", False, True, False),  # the dense view's weights lie outside the kept patches
        ("paper", True, False, False),  # a straight-through Gumbel mask carrying a gradient
    ],
)
def test_each_block_takes_the_kept_patch_path_only_for_a_top_k_selection_alone(
    variant, training, with_dense, takes_kept_path
):
    config = tiny_config(variant)
    torch.manual_seed(0)
    head = SEPS_HEADS[variant](config).train(training)
    images, texts, text_mask, dense, dense_mask = embeddings(config.num_patches + 1)
    with mock.patch.object(
        modeling_seps, "kept_aggregation_weights", wraps=modeling_seps.kept_aggregation_weights
    ) as gathered:
        scores = score(head, images, texts, text_mask, *((dense, dense_mask) if with_dense else ()))
    assert torch.isfinite(scores).all()
    # The official dense branch f(I_j, D_j) scores each image's dense caption as a caption, so it gathers too.
    assert gathered.called == takes_kept_path


def test_kept_aggregation_weights_are_the_kept_softmax_also_where_shared_exponentials_underflow():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 10, generator=generator) * 4
    logits[1, :, 0] = 200.0  # far above the rest: pairs that drop patch 0 underflow when shifted by it
    kept = torch.stack([torch.randperm(10, generator=generator)[:4] for _ in range(2 * 5)]).view(2, 5, 4)
    kept[1, 0] = torch.tensor([1, 2, 3, 4])  # drops patch 0
    kept[1, 1] = torch.tensor([0, 5, 6, 7])  # keeps it
    shifted = _shifted_exp(logits)
    weights = kept_aggregation_weights(logits, shifted, kept)  # (2, 5, 3, 4), each row up to a positive factor

    keep_mask = torch.zeros(2, 5, 10).scatter(-1, kept, 1.0)
    expected = masked_softmax(logits.unsqueeze(1), keep_mask.unsqueeze(2))
    expected_kept = expected.gather(-1, kept.unsqueeze(2).expand(-1, -1, 3, -1))
    assert (expected_kept.sum(dim=-1) > 0.999).all()  # the softmax lives on the kept patches alone
    torch.testing.assert_close(weights / weights.sum(dim=-1, keepdim=True), expected_kept)
    assert (shifted[1][:, kept[1, 0]] == 0).all()  # the situation this test is about
