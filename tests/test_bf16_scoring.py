"""The opt-in bfloat16 scoring path, `similarity(..., dtype=torch.bfloat16)`, and the unnormalised aggregation
weights of the float32 path (issue 16)."""

import numpy as np
import pytest
import torch
from conftest import tiny_model
from reference_seps import reference_similarity

from transformers_seps.modeling_seps import _shifted_exp, kept_softmax, masked_softmax

# bfloat16 keeps 8 significand bits: the patch-word products and the Gram term w G w^T round to ~2^-9 relative,
# so a cosine moves by a few 1e-3 and a score (sums of such cosines) by up to ~1e-2.
BF16_TOLERANCE = 1e-2


def embeddings(model, num_images: int = 3, num_captions: int = 5, scale: float = 1.0, seed: int = 0):
    """Image, caption and dense-caption embeddings of the model's shapes; captions of 2..7 real tokens."""
    config = model.config
    generator = torch.Generator().manual_seed(seed)
    tokens = config.num_patches + int(config.vision_cls_token)
    images = scale * torch.randn(num_images, tokens, config.embed_dim, generator=generator)
    texts = scale * torch.randn(num_captions, 7, config.embed_dim, generator=generator)
    lengths = torch.randint(2, 8, (num_captions,), generator=generator)
    text_mask = (torch.arange(7) < lengths[:, None]).long()
    dense = scale * torch.randn(num_images, 9, config.embed_dim, generator=generator)
    return images, texts, text_mask, dense, torch.ones(num_images, 9, dtype=torch.long)


def bf16_error(model, images, texts, text_mask, dense, dense_mask) -> float:
    with torch.no_grad():
        scores = model.similarity(images, texts, text_mask, dense, dense_mask, dtype=torch.bfloat16)
        expected = reference_similarity(model, images, texts, text_mask, dense, dense_mask)
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()
    return (scores - expected).abs().max().item()


@pytest.mark.parametrize("with_dense", [True, False], ids=["dense", "no_dense"])
def test_bfloat16_scores_follow_the_float32_reference(variant, with_dense):
    model = tiny_model(variant).eval()
    images, texts, text_mask, dense, dense_mask = embeddings(model)
    if not with_dense:
        dense = dense_mask = None
    error = bf16_error(model, images, texts, text_mask, dense, dense_mask)
    # Nonzero: the products did run in bfloat16 (the float32 path matches the reference within 1e-6).
    assert 0 < error < BF16_TOLERANCE
    with torch.no_grad():
        float32 = model.similarity(images, texts, text_mask, dense, dense_mask)
        expected = reference_similarity(model, images, texts, text_mask, dense, dense_mask)
    torch.testing.assert_close(float32, expected, atol=1e-5, rtol=0)


def test_bfloat16_scoring_of_large_embeddings_and_sharp_aggregation_logits(variant):
    """Issue 11's hard case: aggregation logits spread far beyond a 16-bit exponential's range, and embeddings of
    norm ~1e3 (Gram entries ~1e6). The softmaxes stay in float32; the bfloat16 products keep float32's range."""
    model = tiny_model(variant).eval()
    with torch.no_grad():
        for name in ("aggregator", "sparse_aggregator", "dense_aggregator"):
            if hasattr(model.head, name):
                getattr(model.head, name).scale.fill_(14.0)
    assert bf16_error(model, *embeddings(model, scale=200.0, seed=1)) < BF16_TOLERANCE


def test_similarity_names_an_unsupported_scoring_dtype():
    model = tiny_model("official").eval()
    images, texts, text_mask, _, _ = embeddings(model)
    with pytest.raises(ValueError, match=r"dtype must be one of .*got torch\.float16"):
        model.similarity(images, texts, text_mask, dtype=torch.float16)


def assert_proportional_rows(weights: torch.Tensor, expected: torch.Tensor) -> None:
    totals = weights.sum(dim=-1, keepdim=True)
    torch.testing.assert_close(weights / torch.where(totals > 0, totals, 1), expected)


def test_unnormalised_kept_softmax_is_proportional_to_the_softmax():
    """`normalize=False` (what the cosines use) gives each row the softmax times a positive factor, also for a
    row whose kept exponentials underflow and a row that keeps nothing (all zero)."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 10, generator=generator)
    keep_mask = (torch.rand(2, 3, 1, 10, generator=generator) > 0.4).float()
    weights = kept_softmax(logits, _shifted_exp(logits), keep_mask, normalize=False)
    expected = masked_softmax(logits, keep_mask)
    assert not torch.allclose(weights.sum(dim=-1), torch.ones(2, 3, 4))  # not normalised ...
    assert_proportional_rows(weights, expected)  # ... but proportional, row by row

    logits[1, 0, :, 0] = 200.0  # far above the rest: dropped below, the other kept exponentials underflow
    keep_mask[1, 0, :, 0], keep_mask[1, 0, :, 1] = 0, 1
    keep_mask[0, 2] = 0
    shifted = _shifted_exp(logits)
    assert (shifted * keep_mask)[1, 0].sum(dim=-1).eq(0).all()  # the underflow this part is about
    weights = kept_softmax(logits, shifted, keep_mask, normalize=False)
    assert_proportional_rows(weights, masked_softmax(logits, keep_mask))
    assert (weights[0, 2] == 0).all() and (weights[1, 0].sum(dim=-1) > 0).all()


def test_evaluation_scores_in_the_dtype_it_is_given(saved_models, tiny_synthetic, tmp_path):
    """`evaluate_retrieval.py --scoring_dtype bfloat16` reaches `similarity`: its matrix differs from float32's
    by bfloat16 rounding, no more."""
    from transformers_seps.train.arguments import EvaluationArguments
    from transformers_seps.train.evaluation import run_evaluation

    matrices = {}
    for dtype in ("float32", "bfloat16"):
        sims = tmp_path / f"{dtype}.npy"
        run_evaluation(
            EvaluationArguments(
                model=str(saved_models["paper"]), data_root=str(tiny_synthetic), dataset="synthetic",
                save_sims=str(sims), scoring_dtype=dtype,
            )
        )  # fmt: skip
        matrices[dtype] = torch.from_numpy(np.load(sims))
    difference = (matrices["bfloat16"] - matrices["float32"]).abs().max().item()
    assert 0 < difference < BF16_TOLERANCE
