"""Image-text retrieval metrics, computed the standard way (docs/model.md, section 5: VSE++, SCAN, LAPS). NumPy only.

i2t: for each image, the rank of the best-ranked of its captions among all captions.
t2i: for each caption, the rank of its image among all images.
R@K in percent, medr/meanr 1-based, rSum the sum of the six recalls. Ties count against the query: a
candidate scoring exactly as much as the right answer ranks ahead of it, so a constant model gets no credit.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np

RECALL_KS = (1, 5, 10)
METRIC_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")


def _as_matrix(values: Any, name: str) -> np.ndarray:
    """`values` (a NumPy array, a torch tensor or nested lists) as a float64 array of finite numbers."""
    if hasattr(values, "detach"):  # a torch tensor, possibly on a GPU or holding a gradient
        values = values.detach().cpu()
    try:
        array = np.asarray(values)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{name} must be a matrix of numbers, got {type(values).__name__} ({error})") from error
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a matrix of numbers, got {type(values).__name__} of dtype {array.dtype}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        bad = np.argwhere(~np.isfinite(array))[:5].tolist()
        raise ValueError(f"{name} holds NaN or infinite values, e.g. at {bad}")
    return array


def _check_similarity_shape(shape: tuple[int, ...]) -> None:
    if 0 in shape:
        raise ValueError(f"similarity is empty (shape {shape}): the metrics need at least one image and one caption")
    if len(shape) != 2:
        raise ValueError(f"similarity must be a (N_img, N_txt) matrix, got shape {shape}")


def checked_similarity(similarity: Any, caption_to_image: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`similarity` as a float64 (N_img, N_txt) array and `caption_to_image` as int64 (N_txt,) indices, after
    checking that they fit together and every image has a caption (`ValueError` naming the problem otherwise)."""
    sims = _as_matrix(similarity, "similarity")
    _check_similarity_shape(sims.shape)
    targets = np.asarray(caption_to_image.detach().cpu() if hasattr(caption_to_image, "detach") else caption_to_image)
    if targets.size and not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"caption_to_image must hold integer image indices, got dtype {targets.dtype}")
    targets = targets.astype(np.int64)
    num_images, num_captions = sims.shape
    if targets.shape != (num_captions,):
        raise ValueError(
            f"caption_to_image must have {num_captions} entries (one per caption), got {tuple(targets.shape)}"
        )
    if num_captions and (targets.min() < 0 or targets.max() >= num_images):
        raise ValueError(
            f"caption_to_image must index the {num_images} images; got values in [{targets.min()}, {targets.max()}]"
        )
    counts = np.bincount(targets, minlength=num_images)
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0)[:5].tolist()
        raise ValueError(f"every image needs at least one caption; images {missing} have none")
    return sims, targets


def retrieval_ranks(similarity: Any, caption_to_image: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ranks (1-based) of the right answers: i2t per image (N_img,) and t2i per caption (N_txt,).

    A query's rank is 1 + the number of WRONG candidates scoring at least as much as its best right answer.

    Args:
        similarity: (N_img, N_txt) scores, higher is better (a NumPy array or a torch tensor).
        caption_to_image: (N_txt,) the row of each caption's image.
    """
    sims, targets = checked_similarity(similarity, caption_to_image)
    num_images, num_captions = sims.shape
    columns = np.arange(num_captions)
    right = np.zeros((num_images, num_captions), dtype=bool)
    right[targets, columns] = True
    # i2t: the image's best-scoring own caption against the other images' captions.
    best_own = np.where(right, sims, -np.inf).max(axis=1, keepdims=True)
    i2t = ((sims >= best_own) & ~right).sum(axis=1) + 1
    # t2i: the caption's image against the other images.
    own_score = sims[targets, columns]
    t2i = ((sims >= own_score[None]) & ~right).sum(axis=0) + 1
    return i2t, t2i


def recall_metrics(i2t_ranks: np.ndarray, t2i_ranks: np.ndarray) -> dict[str, float]:
    """R@1/5/10 (percent), medr and meanr both ways, and rSum from 1-based ranks."""
    metrics: dict[str, float] = {}
    for direction, ranks in (("i2t", np.asarray(i2t_ranks)), ("t2i", np.asarray(t2i_ranks))):
        if ranks.size == 0:
            raise ValueError(f"{direction}_ranks is empty: the metrics need at least one query")
        for k in RECALL_KS:
            metrics[f"{direction}_r{k}"] = 100.0 * float(np.mean(ranks <= k))
        metrics[f"{direction}_medr"] = float(np.floor(np.median(ranks)))
        metrics[f"{direction}_meanr"] = float(np.mean(ranks))
    metrics["rsum"] = sum(metrics[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in RECALL_KS)
    return metrics


def retrieval_metrics(similarity: Any, caption_to_image: Sequence[int] | np.ndarray) -> dict[str, float]:
    """All metrics of one similarity matrix (N_img, N_txt) with its caption -> image map (N_txt,)."""
    return recall_metrics(*retrieval_ranks(similarity, caption_to_image))


# ---------------------------------------------------------------------------------------------------------------
# Protocols (docs/model.md, section 5)
# ---------------------------------------------------------------------------------------------------------------

CAPTIONS_PER_IMAGE = 5
FOLD_SIZE = 1000


def check_five_captions_per_image(caption_to_image: Sequence[int] | np.ndarray, num_images: int) -> None:
    """The 1K/5K protocols assume 5 captions per image, stored image-major (captions 5j..5j+4 of image j)."""
    targets = np.asarray(caption_to_image)
    counts = np.bincount(targets, minlength=num_images)
    if len(targets) != CAPTIONS_PER_IMAGE * num_images or (counts != CAPTIONS_PER_IMAGE).any():
        bad = np.nonzero(counts != CAPTIONS_PER_IMAGE)[0][:5].tolist()
        raise ValueError(
            f"the 5-caption protocols need exactly {CAPTIONS_PER_IMAGE} captions per image; got {len(targets)} "
            f"captions for {num_images} images (images {bad} have {counts[bad].tolist()})"
        )
    if not np.array_equal(targets, np.repeat(np.arange(num_images), CAPTIONS_PER_IMAGE)):
        raise ValueError("the 5-caption protocols need captions in image-major order (5 per image, in image order)")


def fold_metrics(similarity: Any, caption_to_image: Sequence[int] | np.ndarray) -> list[dict]:
    """MS-COCO 1K: metrics of each fold of 1000 consecutive images and their 5000 captions."""
    sims = _as_matrix(similarity, "similarity")
    _check_similarity_shape(sims.shape)
    num_images = sims.shape[0]
    check_five_captions_per_image(caption_to_image, num_images)
    if num_images % FOLD_SIZE:
        raise ValueError(f"the 1K protocol splits the images into folds of {FOLD_SIZE}; got {num_images} images")
    folds = []
    for start in range(0, num_images, FOLD_SIZE):
        rows = slice(start, start + FOLD_SIZE)
        columns = slice(start * CAPTIONS_PER_IMAGE, (start + FOLD_SIZE) * CAPTIONS_PER_IMAGE)
        targets = np.repeat(np.arange(FOLD_SIZE), CAPTIONS_PER_IMAGE)
        folds.append(retrieval_metrics(sims[rows, columns], targets))
    return folds


def mean_metrics(metrics: Sequence[dict[str, float]]) -> dict[str, float]:
    if not metrics:
        raise ValueError("mean_metrics needs at least one metrics dict, got none")
    return {key: float(np.mean([m[key] for m in metrics])) for key in metrics[0]}


def markdown_table(metrics: dict[str, float], title: str = "") -> str:
    """A one-row markdown table of the standard metrics (and medr/meanr when present)."""
    keys = [key for key in (*METRIC_KEYS[:3], "i2t_medr", *METRIC_KEYS[3:6], "t2i_medr", "rsum") if key in metrics]
    header = "| " + " | ".join(([""] if title else []) + keys) + " |"
    rule = "|" + " --- |" * (len(keys) + bool(title))
    row = "| " + " | ".join(([title] if title else []) + [f"{metrics[key]:.1f}" for key in keys]) + " |"
    return "\n".join([header, rule, row])
