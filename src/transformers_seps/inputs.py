"""Checks of what users pass to SEPS: image and caption batches, token limits, `from_pretrained` locations.

Shared by the processor, the model and the retrieval API, so that a bad input gets the same message everywhere.
This module imports nothing from its own package: `save_pretrained` copies it, with the model and processor files
that import it, into a folder that `trust_remote_code=True` loads without the package.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from PIL import Image
from transformers.image_utils import is_valid_image, make_flat_list_of_images

__all__ = [
    "already_rescaled",
    "as_caption_batch",
    "as_image_batch",
    "check_one_caption",
    "check_one_image",
    "check_pretrained_location",
    "check_token_limit",
]

# Special tokens added around every caption: [CLS] ... [SEP].
_NUM_SPECIAL_TOKENS = 2


def as_caption_batch(value: Any, name: str) -> list[str]:
    """Turns captions (argument `name`) into a non-empty list of non-blank strings, or raises a `ValueError`."""
    if isinstance(value, str):
        batch: list[Any] = [value]
    elif isinstance(value, (list, tuple)):
        batch = list(value)
    else:
        raise ValueError(f"`{name}` must be a string or a list of strings, got {type(value).__name__}.")
    if not batch:
        raise ValueError(f"`{name}` is an empty list; give at least one caption.")
    for index, caption in enumerate(batch):
        if not isinstance(caption, str):
            raise ValueError(f"`{name}[{index}]` must be a string, got {type(caption).__name__} ({caption!r}).")
        if not caption.strip():
            raise ValueError(f"`{name}[{index}]` is an empty or whitespace-only string ({caption!r}).")
    return batch


def as_image_batch(images: Any) -> list[Any]:
    """Turns `images` into a flat, non-empty list; non-RGB PIL images are converted with `convert("RGB")`."""
    if isinstance(images, (list, tuple)) and len(images) == 0:
        raise ValueError("`images` is an empty list; give at least one image.")
    try:
        batch = make_flat_list_of_images(images)
    except ValueError as error:
        invalid = type(images).__name__
        if isinstance(images, (list, tuple)):
            index = next((i for i, image in enumerate(images) if not _is_image_or_list(image)), None)
            if index is not None:
                invalid = f"{type(images).__name__} whose item {index} is a {type(images[index]).__name__}"
        raise ValueError(
            f"`images` must be a PIL image, a numpy array, a torch tensor, or a list of them; got {invalid}."
        ) from error
    return [
        image.convert("RGB") if isinstance(image, Image.Image) and image.mode != "RGB" else image for image in batch
    ]


def check_one_image(image: Any, name: str) -> None:
    """Raises a `ValueError` unless `image` is exactly one image (not a list or batch of them)."""
    num_images = len(as_image_batch(image))
    if num_images != 1:
        raise ValueError(f"`{name}` must be one image, got a batch of {num_images}.")


def check_one_caption(caption: Any, name: str) -> None:
    """Raises a `ValueError` unless `caption` is one string (a list of captions is a batch)."""
    if not isinstance(caption, str):
        raise ValueError(f"`{name}` must be one caption (a str), got {type(caption).__name__}.")


def _is_image_or_list(value: Any) -> bool:
    return is_valid_image(value) or isinstance(value, (list, tuple))


def _float_value_range(image: Any) -> tuple[float, float] | None:
    """(min, max) of a float NumPy or torch image; None for PIL and integer images."""
    if isinstance(image, torch.Tensor) and torch.is_floating_point(image):
        return image.min().item(), image.max().item()
    if isinstance(image, np.ndarray) and np.issubdtype(image.dtype, np.floating):
        return float(image.min()), float(image.max())
    return None


def already_rescaled(images: list[Any]) -> bool:
    """Whether the batch holds float images in [0, 1] (rescaled already), as `transformers.image_utils.
    is_scaled_image` tells; raises for float images outside [0, 255] and for a batch mixing both conventions."""
    scaled = []
    for index, image in enumerate(images):
        value_range = _float_value_range(image)
        if value_range is None:
            continue
        low, high = value_range
        if not (low >= 0 and high <= 255):  # also catches NaN
            raise ValueError(
                f"`images[{index}]` is a float image with values in [{low:.3g}, {high:.3g}], outside [0, 1] and "
                "[0, 255]: it looks normalized already. Pass the raw image (PIL, uint8, or floats in [0, 1] or "
                "[0, 255]), not `pixel_values`."
            )
        if high <= 1:
            scaled.append(index)
    if scaled and len(scaled) != len(images):
        raise ValueError(
            f"`images` mixes float images with values in [0, 1] (images {scaled[:5]}) with images in [0, 255]: "
            "pass all images in one convention (or rescale the [0, 1] ones by 255)."
        )
    return bool(scaled)


def check_token_limit(name: str, value: Any, upper: int | None = None) -> int | None:
    """Returns `value` if it is None or an int in [2, upper], else raises a `ValueError` naming `name`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"`{name}` must be an int or None, got {type(value).__name__} ({value!r}).")
    if value < _NUM_SPECIAL_TOKENS:
        raise ValueError(f"`{name}` must be at least {_NUM_SPECIAL_TOKENS} (room for [CLS] and [SEP]), got {value}.")
    if upper is not None and value > upper:
        raise ValueError(
            f"`{name}` ({value}) exceeds the longest sequence the tokenizer and the text model accept "
            f"(text_max_length={upper})."
        )
    return value


def check_pretrained_location(name_or_path: str | os.PathLike, subfolder: str = "") -> str | None:
    """The local folder `from_pretrained` will read (with `subfolder`), or None for a Hub id.

    Raises `FileNotFoundError` for a path that is neither an existing folder nor a valid Hub id ('name' or
    'org/name'), e.g. "./runs/demo/best" or "runs/demo/best" before training wrote it, instead of the Hub's
    "Repo id must be in the form ..."; `NotADirectoryError` for a file.
    """
    path = os.fspath(name_or_path)
    if os.path.isdir(path):
        folder = os.path.join(path, subfolder) if subfolder else path
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"no such folder: {folder!r} (subfolder {subfolder!r} of {path!r})")
        return folder
    if os.path.exists(path):
        raise NotADirectoryError(f"{path!r} is a file; from_pretrained takes the folder that holds the saved files")
    try:
        validate_repo_id(path)
    except HFValidationError:
        hint = "; '~' is not expanded: pass os.path.expanduser(path)" if path.startswith("~") else ""
        raise FileNotFoundError(
            f"no such folder: {path!r} (and it is not a Hub id of the form 'org/name'{hint})"
        ) from None
    return None
