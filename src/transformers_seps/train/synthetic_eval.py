"""What a model has learned on the synthetic benchmark, beyond recall: its text-to-image recall by caption template,
how well its scores separate the images that have the colours (or shapes) a caption names, and whether its patch
selection keeps the objects a caption names (selection grounding, which the paper only shows in pictures: its
figures 4 and 5). The synthetic scenes record every object's shape, colour and place
(`transformers_seps.train.data.synthetic`), so each of these is measured exactly.

`benchmarks/compare_scorers.py` and `benchmarks/synthetic_ceiling.py` print them.
"""

from collections.abc import Sequence

import numpy as np
import torch

from ..metrics import retrieval_ranks
from ..modeling_seps import SepsModel
from .data.synthetic import (
    CAPTION_KINDS,
    COLORS,
    SHAPES,
    Scene,
    SceneObject,
    caption_holds,
    caption_kind,
    named_objects,
    render_object_mask,
)
from .evaluation import EncodedSplit

# Pixels per patch side at which the named objects are drawn to measure their share of each patch.
_PIXELS_PER_PATCH = 16


def recall_by_template(similarity: np.ndarray, captions: Sequence[str], caption_to_image: Sequence[int]) -> dict:
    """Text-to-image R@1 and R@10 (percent) of the captions of each template (`CAPTION_KINDS`), with their count."""
    t2i_ranks = retrieval_ranks(similarity, caption_to_image)[1]
    kinds = np.array([caption_kind(caption) for caption in captions])
    report = {}
    for kind in CAPTION_KINDS:
        ranks = t2i_ranks[kinds == kind]
        report[kind] = {"count": len(ranks), **{f"t2i_r{k}": float(100 * np.mean(ranks <= k)) for k in (1, 10)}}
    return report


def separation_auc(scores: np.ndarray, inside: np.ndarray) -> float:
    """P(an image inside the group outscores one outside; ties count half), for one caption's (N_img,) scores."""
    higher = scores[inside][:, None] - scores[~inside][None, :]
    return float((higher > 0).mean() + 0.5 * (higher == 0).mean())


def caption_truth(captions: Sequence[str], scenes: Sequence[Scene]) -> np.ndarray:
    """(N_txt, N_img) whether each caption is true of each scene (`caption_holds`)."""
    return np.array([[caption_holds(caption, scene) for scene in scenes] for caption in captions])


def attribute_aucs(similarity: np.ndarray, captions: Sequence[str], scenes: Sequence[Scene]) -> dict[str, float]:
    """The mean over captions of `separation_auc` of the (N_img, N_txt) scores for three groups of images: those the
    caption is true of ("caption_true"), those with every colour it names ("colours") and those with every shape it
    names ("shapes"). Captions whose group holds every image or none are left out. 0.5: blind to it; 1: separates."""
    has = {
        attribute: np.array([any(attribute in (obj.color, obj.shape) for obj in scene.objects) for scene in scenes])
        for attribute in (*COLORS, *SHAPES)
    }
    truth = caption_truth(captions, scenes)

    def named(caption: str, vocabulary) -> np.ndarray:
        return np.all([has[word] for word in caption.split() if word in vocabulary], axis=0)

    groups = {
        "caption_true": lambda row, caption: truth[row],
        "colours": lambda row, caption: named(caption, COLORS),
        "shapes": lambda row, caption: named(caption, SHAPES),
    }
    report = {}
    for name, group in groups.items():
        aucs = [
            separation_auc(similarity[:, row], inside)
            for row, caption in enumerate(captions)
            if 0 < (inside := group(row, caption)).sum() < len(scenes)
        ]
        report[name] = float(np.mean(aucs))
    return report


def patch_coverage(objects: Sequence[SceneObject], grid_side: int) -> np.ndarray:
    """(grid_side**2,) the share of each patch's area (row-major, the whole image resized onto the grid as the
    processor resizes it) that `objects` cover."""
    size = grid_side * _PIXELS_PER_PATCH
    covered = np.zeros((size, size), dtype=np.float32)
    for obj in objects:
        covered = np.maximum(covered, render_object_mask(obj, size))
    blocks = covered.reshape(grid_side, _PIXELS_PER_PATCH, grid_side, _PIXELS_PER_PATCH)
    return blocks.mean(axis=(1, 3)).reshape(-1)


def caption_coverage(caption: str, scene: Scene, grid_side: int) -> tuple[np.ndarray, np.ndarray]:
    """`patch_coverage` of the objects `caption` names in `scene`, and of its other objects."""
    named = named_objects(caption, scene)
    others = [obj for obj in scene.objects if obj not in named]
    return patch_coverage(named, grid_side), patch_coverage(others, grid_side)


@torch.no_grad()
def own_image_keep_masks(model: SepsModel, encoded: EncodedSplit, use_dense: bool) -> np.ndarray:
    """(N_txt, N) the patches each caption's selection keeps in its own image (top K, eval mode), with the image's
    own dense caption when `use_dense`."""
    model.eval()
    targets = torch.as_tensor(encoded.caption_to_image)
    masks = torch.zeros(len(targets), model.config.num_patches)
    device = model.device
    for image in targets.unique().tolist():
        rows, one = (targets == image).nonzero().flatten(), slice(image, image + 1)
        dense = (encoded.dense_embeds[one].to(device), encoded.dense_mask[one].to(device)) if use_dense else ()
        output = model.score_embeddings(
            encoded.image_embeds[one].to(device),
            encoded.text_embeds[rows].to(device),
            encoded.text_mask[rows].to(device),
            *dense,
        )
        masks[rows] = output.sparse_keep_mask[0].float().cpu()
    return masks.numpy()


def selection_grounding(
    keep: np.ndarray, named: np.ndarray, others: np.ndarray, captions: Sequence[str]
) -> dict[str, dict[str, float]]:
    """How well (N_txt, N) keep masks hold the objects each caption names, given the (N_txt, N) patch coverage of the
    named objects and of the scene's other objects (`caption_coverage`), averaged over captions, overall ("all") and
    by template:

    - recall: the share of the named objects' area inside kept patches; random_recall: that of a random selection of
      as many patches (K / N);
    - other_recall: the same share for the scene's other objects (a selection that keeps every object, named or
      not, has both recalls high: only recall above other_recall is specific to the caption);
    - precision: the share of the kept patches' area the named objects cover; best_precision: the most any selection
      of as many patches can reach (the named objects are small); random_precision: a random selection's.

    Templates without a caption here are left out."""
    kept = keep.sum(axis=1)
    best_cover = -np.sort(-named, axis=1)
    columns = np.arange(named.shape[1])[None]
    measures = {
        "recall": (keep * named).sum(axis=1) / named.sum(axis=1),
        "other_recall": (keep * others).sum(axis=1) / np.maximum(others.sum(axis=1), 1e-12),
        "random_recall": kept / keep.shape[1],
        "precision": (keep * named).sum(axis=1) / kept,
        "best_precision": np.where(columns < kept[:, None], best_cover, 0).sum(axis=1) / kept,
        "random_precision": named.mean(axis=1),
    }
    has_others = others.sum(axis=1) > 0
    kinds = np.array([caption_kind(caption) for caption in captions])

    def summary(rows: np.ndarray) -> dict[str, float]:
        # A scene whose caption names all of its objects has no other object to keep.
        return {
            name: float(values[rows & has_others].mean() if name == "other_recall" else values[rows].mean())
            for name, values in measures.items()
        }

    every = np.ones(len(captions), dtype=bool)
    return {"all": summary(every), **{kind: summary(kinds == kind) for kind in CAPTION_KINDS if kind in kinds}}


def grid_side(model: SepsModel) -> int:
    """The side of the model's square patch grid."""
    side = round(model.config.num_patches**0.5)
    if side * side != model.config.num_patches:
        raise ValueError(f"selection grounding needs a square patch grid; this model has {model.config.num_patches}")
    return side


__all__ = [
    "attribute_aucs",
    "caption_truth",
    "grid_side",
    "caption_coverage",
    "patch_coverage",
    "own_image_keep_masks",
    "recall_by_template",
    "selection_grounding",
    "separation_auc",
]
