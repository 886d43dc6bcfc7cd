"""Checks of what users pass to SEPS: image and caption batches, token limits, `from_pretrained` locations; and
the captions' tokenization under those limits (`caption_tokenizer_kwargs`, `tokenize_captions`).

Shared by the processor, the model and the retrieval API, so that a bad input gets the same message everywhere.
This module imports nothing from its own package but `images` (how images are decoded): `save_pretrained` copies
both, with the model and processor files that import them, into a folder that `trust_remote_code=True` loads
without the package.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from PIL import Image
from transformers.image_utils import is_valid_image, make_flat_list_of_images
from transformers.tokenization_utils_base import LARGE_INTEGER

from .images import rgb_image

__all__ = [
    "DEFAULT_TEXT_MAX_LENGTH",
    "already_rescaled",
    "as_caption_batch",
    "as_image_batch",
    "caption_token_limit",
    "caption_tokenizer_kwargs",
    "check_one_caption",
    "check_one_image",
    "check_pretrained_location",
    "check_processor_location",
    "check_token_limit",
    "tokenize_captions",
    "tokenizer_defaults",
]

# Special tokens added around every caption: [CLS] ... [SEP].
_NUM_SPECIAL_TOKENS = 2
# A processor folder needs one of these for its tokenizer (the fast tokenizer's file, or the WordPiece vocabulary).
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
#: Token limit of captions when neither the tokenizer nor the text model states one (BERT's).
DEFAULT_TEXT_MAX_LENGTH = 512


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
    """Turns `images` into a flat, non-empty list; PIL images become upright 8-bit RGB ones (`images.rgb_image`:
    16-bit pixels scaled, not clipped)."""
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
        rgb_image(image, f"`images[{index}]`") if isinstance(image, Image.Image) else image
        for index, image in enumerate(batch)
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


def caption_token_limit(tokenizer: Any, text_model_max_length: int | None) -> int:
    """The most tokens a caption may keep: the smaller of the tokenizer's `model_max_length` and
    `text_model_max_length`, each when known, else `DEFAULT_TEXT_MAX_LENGTH` (512)."""
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    # Transformers marks an unknown limit with VERY_LARGE_INTEGER (1e30); anything above LARGE_INTEGER is one.
    if not isinstance(tokenizer_limit, int) or tokenizer_limit >= LARGE_INTEGER:
        tokenizer_limit = None
    limits = [limit for limit in (tokenizer_limit, text_model_max_length) if limit is not None]
    return min(limits) if limits else DEFAULT_TEXT_MAX_LENGTH


def tokenizer_defaults(tokenizer: Any, limit: int) -> dict[str, Any]:
    """The options `tokenizer` was saved with (its `init_kwargs`: call defaults, e.g. `padding`, `max_length`),
    with a saved `max_length` capped at `limit`, the most tokens the text model accepts."""
    defaults = dict(tokenizer.init_kwargs)
    if isinstance(defaults.get("max_length"), int):
        defaults["max_length"] = min(defaults["max_length"], limit)
    return defaults


@contextmanager
def _keeping_backend_settings(tokenizer: Any) -> Iterator[None]:
    """Restores the truncation and padding of `tokenizer`'s Rust backend after the block. A Transformers tokenizer
    call leaves its own there, and `save_pretrained` would save them (as the reloaded tokenizer's `max_length`)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    truncation, padding = (backend.truncation, backend.padding) if backend is not None else (None, None)
    try:
        yield
    finally:
        if backend is not None:
            backend.no_truncation()
            backend.no_padding()
            if truncation is not None:
                backend.enable_truncation(**truncation)
            if padding is not None:
                backend.enable_padding(**padding)


def tokenize_captions(tokenizer: Any, captions: list[str], name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Tokenizes checked captions (argument `name`) with `options` (no `return_tensors`: lists), leaving the
    tokenizer as it was; raises a `ValueError` for a caption left with special tokens only."""
    with _keeping_backend_settings(tokenizer):
        encoded = tokenizer(captions, **options)
    framing_ids = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id}
    for index, ids in enumerate(encoded["input_ids"]):
        if all(token_id in framing_ids for token_id in ids):
            raise ValueError(f"`{name}[{index}]` ({captions[index]!r}) has no token left after BERT normalization.")
    return dict(encoded)


def caption_tokenizer_kwargs(
    text_kwargs: dict[str, Any], dense_text_kwargs: dict[str, Any], text_limit: int, dense_limit: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Tokenizer options of captions (`text_kwargs`, `max_length` by default `text_limit`) and of dense captions
    (the same, truncated at `dense_limit`, then `dense_text_kwargs`); a `max_length` above `text_limit` raises a
    `ValueError`."""
    text_kwargs = dict(text_kwargs)
    if text_kwargs.get("max_length") is None:
        text_kwargs["max_length"] = text_limit
    check_token_limit("max_length", text_kwargs["max_length"], text_limit)
    dense_kwargs = {**text_kwargs, "truncation": True, "max_length": dense_limit, **dense_text_kwargs}
    check_token_limit("dense_text_kwargs['max_length']", dense_kwargs["max_length"], text_limit)
    return text_kwargs, dense_kwargs


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


def check_processor_location(name_or_path: str | os.PathLike, subfolder: str = "") -> None:
    """`check_pretrained_location`; a local folder must also hold a tokenizer file (`FileNotFoundError`)."""
    folder = check_pretrained_location(name_or_path, subfolder)
    if folder is not None and not any(os.path.isfile(os.path.join(folder, name)) for name in _TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{folder!r} holds no tokenizer file (needs {' or '.join(_TOKENIZER_FILES)}; it has "
            f"{sorted(os.listdir(folder))}): save the processor there with `processor.save_pretrained(folder)`."
        )
