"""Fitting the two numbers a trained model's scores need, on a held-out split: `SepsConfig.first_stage_weight`, the
weight of the first stage's score in the fused score (`fit_first_stage_weight`), and `SepsConfig.logit_scale`, the
temperature that turns scores into CLIP-like logits (`fit_logit_scale`).

SEPS is trained with a triplet loss (Eq. 6), which only asks a right pair to beat the wrong ones by a margin: its
scores S lie within a few units, and a softmax over them is nearly flat. `fit_logit_scale` picks the scale t
whose softmax over t * S best predicts the right pairs of a held-out split (the dev split), by minimising the
cross-entropy of both retrieval directions, a one-dimensional search. NumPy only.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np

from .metrics import checked_similarity, recall_metrics, retrieval_ranks

# The range searched. CLIP clamps its learned logit scale at 100, where a score gap of 0.05 is already a factor
# e^5. On a split the model separates perfectly the cross-entropy falls towards 0 as the scale grows: the search
# returns the first scale where it reaches float64's resolution (or the cap).
MIN_LOGIT_SCALE = 0.01
MAX_LOGIT_SCALE = 100.0
_GRID_POINTS = 101  # log-spaced scales tried before the golden-section refinement
_GOLDEN_STEPS = 40  # shrinks the bracket around the best grid point by 0.618^40 ~ 4e-9
_INVERSE_GOLDEN_RATIO = (np.sqrt(5.0) - 1.0) / 2.0


def _log_sum_exp(values: np.ndarray, axis: int) -> np.ndarray:
    """log(sum(exp(values))) along `axis`, shifted by the maximum (entries of -inf add nothing)."""
    peak = values.max(axis=axis, keepdims=True)
    return (peak + np.log(np.exp(values - peak).sum(axis=axis, keepdims=True))).squeeze(axis)


def _cross_entropy(sims: np.ndarray, right: np.ndarray, targets: np.ndarray, logit_scale: float) -> float:
    logits = logit_scale * sims
    columns = np.arange(sims.shape[1])
    # Caption -> image: a softmax over the images, whose target is the caption's image.
    text_to_image = _log_sum_exp(logits, axis=0) - logits[targets, columns]
    # Image -> caption: a softmax over the captions; the image's own captions share the target (their total
    # probability), as each image has several.
    image_to_text = _log_sum_exp(logits, axis=1) - _log_sum_exp(np.where(right, logits, -np.inf), axis=1)
    return float((text_to_image.mean() + image_to_text.mean()) / 2)


def _checked_pairs(similarity: Any, caption_to_image: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sims, targets = checked_similarity(similarity, caption_to_image)
    right = np.zeros(sims.shape, dtype=bool)
    right[targets, np.arange(sims.shape[1])] = True
    return sims, right, targets


def calibration_loss(similarity: Any, caption_to_image: Sequence[int] | np.ndarray, logit_scale: float) -> float:
    """The mean cross-entropy of the logits `logit_scale * similarity` over both directions: each caption's
    softmax over the images (target: its image) and each image's softmax over the captions (target: its captions).

    Args:
        similarity: (N_img, N_txt) scores S of a split (a NumPy array or a torch tensor).
        caption_to_image: (N_txt,) the row of each caption's image.
        logit_scale: the temperature t > 0.
    """
    if isinstance(logit_scale, bool) or not isinstance(logit_scale, (int, float)) or not logit_scale > 0:
        raise ValueError(f"logit_scale must be a number > 0, got {logit_scale!r}")
    return _cross_entropy(*_checked_pairs(similarity, caption_to_image), float(logit_scale))


def fit_logit_scale(similarity: Any, caption_to_image: Sequence[int] | np.ndarray) -> float:
    """The `logit_scale` in [MIN_LOGIT_SCALE, MAX_LOGIT_SCALE] minimising [`calibration_loss`] on a split: a
    log-spaced grid, then a golden-section search between the best point's neighbours.

    Args:
        similarity: (N_img, N_txt) raw scores S of a held-out split (`SepsModel.similarity`, not the logits).
        caption_to_image: (N_txt,) the row of each caption's image.
    """
    pairs = _checked_pairs(similarity, caption_to_image)

    def loss(log_scale: float) -> float:
        return _cross_entropy(*pairs, float(np.exp(log_scale)))

    grid = np.linspace(np.log(MIN_LOGIT_SCALE), np.log(MAX_LOGIT_SCALE), _GRID_POINTS)
    best = int(np.argmin([loss(point) for point in grid]))
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, _GRID_POINTS - 1)]
    for _ in range(_GOLDEN_STEPS):
        left, right = high - _INVERSE_GOLDEN_RATIO * (high - low), low + _INVERSE_GOLDEN_RATIO * (high - low)
        if loss(left) <= loss(right):
            high = right
        else:
            low = left
    return float(np.exp((low + high) / 2))


# The fusion weights `fit_first_stage_weight` tries besides 0: S spans a few units and the first stage's cosine G at
# most 2, so 100 * G decides nearly every ranking (the first stage alone) and 0.01 * G breaks near ties only.
FIRST_STAGE_WEIGHTS = tuple(float(w) for w in np.logspace(-2, 2, 41))


def _rsum_and_mrr(similarity: np.ndarray, caption_to_image: np.ndarray) -> tuple[float, float]:
    image_ranks, caption_ranks = retrieval_ranks(similarity, caption_to_image)
    mrr = (np.mean(1 / image_ranks) + np.mean(1 / caption_ranks)) / 2
    return recall_metrics(image_ranks, caption_ranks)["rsum"], float(mrr)


def fit_first_stage_weight(
    seps_similarity: Any, first_stage_similarity: Any, caption_to_image: Sequence[int] | np.ndarray
) -> float:
    """The weight w of the fused score S + w * G (`SepsConfig.first_stage_weight`) that ranks a held-out split
    (the dev split) best: the largest rSum over `FIRST_STAGE_WEIGHTS`, ties broken by the mean reciprocal rank of
    both directions; 0 (S alone) unless a weight raises the rSum above S's own.

    Args:
        seps_similarity: (N_img, N_txt) scores S of the split (`SepsModel.similarity(..., first_stage_weight=0)`).
        first_stage_similarity: (N_img, N_txt) the first stage's scores G of the same pairs.
        caption_to_image: (N_txt,) the row of each caption's image.
    """
    seps, targets = checked_similarity(seps_similarity, caption_to_image)
    if tuple(first_stage_similarity.shape) != seps.shape:
        raise ValueError(
            f"the two similarity matrices differ in shape: {seps.shape} and {tuple(first_stage_similarity.shape)}"
        )
    first_stage, _ = checked_similarity(first_stage_similarity, caption_to_image)
    alone = _rsum_and_mrr(seps, targets)
    fused = {weight: _rsum_and_mrr(seps + weight * first_stage, targets) for weight in FIRST_STAGE_WEIGHTS}
    best = max(fused, key=lambda weight: fused[weight])
    return best if fused[best][0] > alone[0] else 0.0


__all__ = [
    "FIRST_STAGE_WEIGHTS",
    "MAX_LOGIT_SCALE",
    "MIN_LOGIT_SCALE",
    "calibration_loss",
    "fit_first_stage_weight",
    "fit_logit_scale",
]
