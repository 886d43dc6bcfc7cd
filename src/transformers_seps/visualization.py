"""Pictures of what SEPS looks at: the patches a caption keeps (like figures 4 and 5 of the paper) and where each
word of a caption matches the image.

`patch_selection` and `patch_word_alignment` compute the data (NumPy arrays on the patch grid); `plot_*` draw it
and return a `matplotlib.figure.Figure` (no pyplot state: show it in a notebook, or `figure.savefig(path)`).
matplotlib is imported only when drawing, so the package works without it.
"""

import math
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from .configuration_seps import check_positive_int
from .inputs import check_one_caption, check_one_image
from .modeling_seps import SepsModel
from .processing_seps import SepsProcessor

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_TITLE_WIDTH = 42  # characters per line of a panel title


@dataclass
class PatchSelection:
    """The patch selection of one image-caption pair, on the patch grid (h x w = N patches, row-major).

    Args:
        image: (H, W, 3) floats in [0, 1], the image as the model sees it (resized, de-normalised).
        caption: the caption.
        keep: (h, w) 1 where the caption's selection keeps the patch (D_s; top-K in eval mode).
        score: S(image, caption).
        dense_caption: the image's dense caption, if one was given.
        dense_keep: (h, w) the dense caption's decisions: the dense view D_d (paper variant), or the patches the
            dense caption keeps in its own branch f(I, D) (official variant). None without a dense caption.
    """

    image: np.ndarray
    caption: str
    keep: np.ndarray
    score: float
    dense_caption: str | None = None
    dense_keep: np.ndarray | None = None


@dataclass
class PatchWordAlignment:
    """Cosine similarity of every patch with every word of a caption, before selection and aggregation.

    Args:
        image: (H, W, 3) floats in [0, 1], the image as the model sees it.
        tokens: the caption's word pieces (W of them).
        similarity: (W, h, w) cosine of each projected patch with each projected word.
    """

    image: np.ndarray
    tokens: list[str]
    similarity: np.ndarray


@contextmanager
def _eval_mode(model: SepsModel) -> Iterator[None]:
    """Deterministic (top-K) selection for the picture, restoring the model's mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _patch_grid_side(model: SepsModel) -> int:
    num_patches = model.config.num_patches
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"cannot draw {num_patches} patches as a square grid")
    return side


def _model_view(pixel_values: torch.Tensor, processor: SepsProcessor) -> np.ndarray:
    """(3, H, W) model input -> (H, W, 3) image in [0, 1], undoing the processor's normalisation."""
    image_processor = processor.image_processor
    image = pixel_values.detach().float().cpu()
    if getattr(image_processor, "do_normalize", False):
        mean = torch.tensor(image_processor.image_mean, dtype=image.dtype).view(-1, 1, 1)
        std = torch.tensor(image_processor.image_std, dtype=image.dtype).view(-1, 1, 1)
        image = image * std + mean
    return image.clamp(0, 1).permute(1, 2, 0).numpy()


def _check_pair(image: Any, text: Any, dense_text: Any = None) -> None:
    """A picture shows one image with one caption (and the image's one dense caption)."""
    check_one_image(image, "image")
    check_one_caption(text, "text")
    if dense_text is not None:
        check_one_caption(dense_text, "dense_text")


def _check_opacity(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be an opacity in [0, 1], got {value!r}")


def _encode(model: SepsModel, processor: SepsProcessor, **inputs: Any) -> dict[str, torch.Tensor]:
    encoded = processor(return_tensors="pt", **inputs)
    return {name: tensor.to(model.device) for name, tensor in encoded.items()}


def patch_selection(
    model: SepsModel, processor: SepsProcessor, image: Any, text: str, dense_text: str | None = None
) -> PatchSelection:
    """The patches `text` keeps in `image` (and those the dense caption `dense_text` of the image keeps), with the
    model in eval mode (top-K decisions). See [`PatchSelection`]."""
    _check_pair(image, text, dense_text)
    side = _patch_grid_side(model)
    with _eval_mode(model):
        inputs = _encode(model, processor, images=image, text=text, dense_text=dense_text)
        output = model(**inputs)
        dense_keep = None
        if dense_text is not None:
            dense_keep = model.head.dense_caption_keep_mask(model, inputs, output)
    return PatchSelection(
        image=_model_view(inputs["pixel_values"][0], processor),
        caption=text,
        keep=output.sparse_keep_mask[0, 0].cpu().numpy().reshape(side, side),
        score=float(output.logits_per_image[0, 0]) / model.config.logit_scale,  # S, unscaled
        dense_caption=dense_text,
        dense_keep=None if dense_keep is None else dense_keep.cpu().numpy().reshape(side, side),
    )


def patch_word_alignment(
    model: SepsModel, processor: SepsProcessor, image: Any, text: str, include_special_tokens: bool = False
) -> PatchWordAlignment:
    """Cosine of each patch with each word piece of `text` (projected embeddings, before any selection): where in
    the image each word finds its match. [CLS] and [SEP] are left out unless `include_special_tokens`."""
    _check_pair(image, text)
    side = _patch_grid_side(model)
    with _eval_mode(model):
        inputs = _encode(model, processor, images=image, text=text)
        patches = model.encode_image(inputs["pixel_values"])[0, int(model.config.vision_cls_token) :]
        words = model.encode_text(inputs["input_ids"], inputs["attention_mask"])[0]
    real = inputs["attention_mask"][0].bool()
    ids, words = inputs["input_ids"][0][real], words[real]
    keep = torch.ones_like(ids, dtype=torch.bool)
    if not include_special_tokens:
        keep = ~torch.isin(ids, torch.tensor(processor.tokenizer.all_special_ids, device=ids.device))
    similarity = F.normalize(words[keep], dim=-1) @ F.normalize(patches, dim=-1).T  # (W, N)
    return PatchWordAlignment(
        image=_model_view(inputs["pixel_values"][0], processor),
        tokens=processor.tokenizer.convert_ids_to_tokens(ids[keep].tolist()),
        similarity=similarity.cpu().numpy().reshape(-1, side, side),
    )


# --------------------------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------------------------


def _new_figure(width: float, height: float) -> "Figure":
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("drawing needs matplotlib: pip install matplotlib") from error
    return Figure(figsize=(width, height), layout="constrained")


def _show_image(ax: "Axes", image: np.ndarray, title: str) -> tuple[float, float, float, float]:
    """Draw `image` without ticks; returns the extent that lays a patch grid exactly over it."""
    height, width = image.shape[:2]
    extent = (0, width, height, 0)
    ax.imshow(image, extent=extent)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    return extent


def _draw_selection(ax: "Axes", image: np.ndarray, keep: np.ndarray, title: str, dropped_alpha: float) -> None:
    """The image with its dropped patches veiled in dark grey: the kept ones stand out, as in the paper's figures."""
    extent = _show_image(
        ax, image, f"{textwrap.fill(title, _TITLE_WIDTH)}\n{int(keep.sum())} of {keep.size} patches kept"
    )
    veil = np.full((*keep.shape, 4), 0.15)
    veil[..., 3] = np.where(keep > 0, 0.0, dropped_alpha)
    ax.imshow(veil, extent=extent, interpolation="nearest")


def plot_patch_selection(
    model: SepsModel,
    processor: SepsProcessor,
    image: Any,
    text: str,
    dense_text: str | None = None,
    dropped_alpha: float = 0.75,
) -> "Figure":
    """The image, the patches `text` keeps, and (with `dense_text`, the image's dense caption) the patches the dense
    caption keeps: the dense view D_d in the paper variant, the dense branch's selection in the official one.

    Args:
        model: a [`SepsModel`]; its selection is drawn in eval mode (top-K), its mode is restored after.
        processor: the model's [`SepsProcessor`].
        image: a PIL image (or anything the processor takes).
        text: the caption.
        dense_text: the image's own dense caption, optional.
        dropped_alpha: opacity of the veil over dropped patches.

    Returns:
        `matplotlib.figure.Figure` with 2 panels, or 3 with a dense caption.
    """
    _check_opacity("dropped_alpha", dropped_alpha)
    selection = patch_selection(model, processor, image, text, dense_text)
    panels = 2 if selection.dense_keep is None else 3
    figure = _new_figure(3.2 * panels, 3.8)
    axes = figure.subplots(1, panels, squeeze=False)[0]
    _show_image(axes[0], selection.image, "image (as the model sees it)")
    _draw_selection(axes[1], selection.image, selection.keep, f'"{selection.caption}"', dropped_alpha)
    if selection.dense_keep is not None:
        _draw_selection(axes[2], selection.image, selection.dense_keep, model.head.dense_keep_title, dropped_alpha)
    figure.suptitle(f"S(image, caption) = {selection.score:.3f}", fontsize=10)
    return figure


def plot_patch_word_alignment(
    model: SepsModel,
    processor: SepsProcessor,
    image: Any,
    text: str,
    columns: int = 4,
    include_special_tokens: bool = False,
    alpha: float = 0.6,
) -> "Figure":
    """One panel per word piece of `text`: the image with the cosine of each patch with that word as a heat map
    over the patch grid, on one color scale for all words (see [`patch_word_alignment`]).

    Returns:
        `matplotlib.figure.Figure` with one panel per word piece and a shared color bar.
    """
    check_positive_int("columns", columns)
    _check_opacity("alpha", alpha)
    alignment = patch_word_alignment(model, processor, image, text, include_special_tokens)
    num_words = len(alignment.tokens)
    columns = max(1, min(columns, num_words))
    rows = math.ceil(num_words / columns)
    figure = _new_figure(2.4 * columns + 0.6, 2.5 * rows)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    low, high = float(alignment.similarity.min()), float(alignment.similarity.max())
    heat = None
    for ax, token, similarity in zip(axes, alignment.tokens, alignment.similarity, strict=False):
        extent = _show_image(ax, alignment.image, token)
        heat = ax.imshow(
            similarity, extent=extent, cmap="inferno", vmin=low, vmax=high, alpha=alpha, interpolation="nearest"
        )
    for ax in axes[num_words:]:
        ax.set_axis_off()
    figure.colorbar(heat, ax=list(axes), shrink=0.8, label="cosine(patch, word)")
    figure.suptitle(textwrap.fill(f'"{text}"', 80), fontsize=10)
    return figure


__all__ = [
    "PatchSelection",
    "PatchWordAlignment",
    "patch_selection",
    "patch_word_alignment",
    "plot_patch_selection",
    "plot_patch_word_alignment",
]
