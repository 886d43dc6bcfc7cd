"""The image preprocessing of the SEPS authors' evaluation code, as a Transformers image processor.

Used by `SepsProcessor.official` and `SepsProcessor.from_pretrained`. This module imports nothing of its own
package: `save_pretrained` copies it, with the processor file that imports it, into a folder that
`trust_remote_code=True` loads without the package.
"""

from __future__ import annotations

import os
from typing import Any

from transformers import AutoImageProcessor, ViTImageProcessorPil
from transformers.image_utils import PILImageResampling

__all__ = ["SEPS_IMAGE_MEAN", "SEPS_IMAGE_STD", "official_image_processor", "with_image_backend"]

#: ImageNet per-channel mean and standard deviation of the SEPS authors' `T.Normalize` (RGB order).
SEPS_IMAGE_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
SEPS_IMAGE_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# `from_pretrained` arguments saying where files come from, forwarded when an image processor is reloaded.
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")


def official_image_processor(image_size: int = 224) -> ViTImageProcessorPil:
    """The authors' eval transform: RGB, PIL bicubic resize to `(image_size, image_size)` (no crop, aspect ratio
    not kept), rescaled by 1/255, normalized with `SEPS_IMAGE_MEAN`/`SEPS_IMAGE_STD`; PIL only, no torchvision."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"`image_size` must be a positive int, got {image_size!r}.")
    return ViTImageProcessorPil(
        do_convert_rgb=True,
        size={"height": image_size, "width": image_size},
        resample=PILImageResampling.BICUBIC,
        do_center_crop=False,
        rescale_factor=1 / 255,
        image_mean=list(SEPS_IMAGE_MEAN),
        image_std=list(SEPS_IMAGE_STD),
    )


def with_image_backend(
    image_processor: Any, pretrained_model_name_or_path: str | os.PathLike, backend: str | None, kwargs: dict[str, Any]
) -> Any:
    """`image_processor`, loaded from `pretrained_model_name_or_path` by Transformers (which picks torchvision when
    installed), reloaded with `backend` if it has another one ("pil": the authors resize with PIL's bicubic).
    `backend=None` keeps it, as does an `image_processor` given in `kwargs`, the `from_pretrained` arguments (those
    saying where files come from are forwarded)."""
    current_backend = getattr(image_processor, "backend", None)
    if backend is None or current_backend in (None, backend) or "image_processor" in kwargs:
        return image_processor
    hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
    return AutoImageProcessor.from_pretrained(pretrained_model_name_or_path, backend=backend, **hub_kwargs)
