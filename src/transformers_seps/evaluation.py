"""Image-text retrieval metrics, computed the standard way (spec section 5: VSE++, SCAN, LAPS).

i2t: for each image, the rank of the best-ranked of its captions among all captions.
t2i: for each caption, the rank of its image among all images.
R@K in percent, medr/meanr 1-based, rSum the sum of the six recalls. Ties count against the query: a
candidate scoring exactly as much as the right answer ranks ahead of it, so a constant model gets no credit.
"""

from collections.abc import Sequence

import numpy as np
import torch

RECALL_KS = (1, 5, 10)
METRIC_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")


def _as_tensor(values: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(values)
    if not torch.is_floating_point(tensor):
        tensor = tensor.float()
    if not torch.isfinite(tensor).all():
        bad = (~torch.isfinite(tensor)).nonzero()[:5].tolist()
        raise ValueError(f"{name} holds NaN or infinite values, e.g. at {bad}")
    return tensor


def retrieval_ranks(
    similarity: np.ndarray | torch.Tensor, caption_to_image: Sequence[int] | np.ndarray | torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Ranks (1-based) of the right answers: i2t per image (N_img,) and t2i per caption (N_txt,).

    A query's rank is 1 + the number of WRONG candidates scoring at least as much as its best right answer.

    Args:
        similarity: (N_img, N_txt) scores, higher is better.
        caption_to_image: (N_txt,) the row of each caption's image.
    """
    sims = _as_tensor(similarity, "similarity").double()
    if sims.dim() != 2:
        raise ValueError(f"similarity must be a (N_img, N_txt) matrix, got shape {tuple(sims.shape)}")
    targets = torch.as_tensor(np.asarray(caption_to_image), dtype=torch.long)
    num_images, num_captions = sims.shape
    if targets.shape != (num_captions,):
        raise ValueError(
            f"caption_to_image must have {num_captions} entries (one per caption), got {tuple(targets.shape)}"
        )
    if num_captions and (targets.min() < 0 or targets.max() >= num_images):
        raise ValueError(
            f"caption_to_image must index the {num_images} images; got values in "
            f"[{targets.min().item()}, {targets.max().item()}]"
        )
    counts = torch.bincount(targets, minlength=num_images)
    if (counts == 0).any():
        missing = (counts == 0).nonzero().flatten()[:5].tolist()
        raise ValueError(f"every image needs at least one caption; images {missing} have none")

    right = torch.zeros(num_images, num_captions, dtype=torch.bool)
    right[targets, torch.arange(num_captions)] = True
    # i2t: the image's best-scoring own caption against the other images' captions.
    best_own = sims.masked_fill(~right, float("-inf")).amax(dim=1, keepdim=True)
    i2t = ((sims >= best_own) & ~right).sum(dim=1) + 1
    # t2i: the caption's image against the other images.
    own_score = sims.gather(0, targets[None]).squeeze(0)
    t2i = ((sims >= own_score[None]) & ~right).sum(dim=0) + 1
    return i2t.numpy(), t2i.numpy()


def recall_metrics(i2t_ranks: np.ndarray, t2i_ranks: np.ndarray) -> dict[str, float]:
    """R@1/5/10 (percent), medr and meanr both ways, and rSum from 1-based ranks."""
    metrics: dict[str, float] = {}
    for direction, ranks in (("i2t", np.asarray(i2t_ranks)), ("t2i", np.asarray(t2i_ranks))):
        for k in RECALL_KS:
            metrics[f"{direction}_r{k}"] = 100.0 * float(np.mean(ranks <= k))
        metrics[f"{direction}_medr"] = float(np.floor(np.median(ranks)))
        metrics[f"{direction}_meanr"] = float(np.mean(ranks))
    metrics["rsum"] = sum(metrics[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in RECALL_KS)
    return metrics


def retrieval_metrics(
    similarity: np.ndarray | torch.Tensor, caption_to_image: Sequence[int] | np.ndarray | torch.Tensor
) -> dict[str, float]:
    """All metrics of one similarity matrix (N_img, N_txt) with its caption -> image map (N_txt,)."""
    return recall_metrics(*retrieval_ranks(similarity, caption_to_image))
