"""Images as the model sees them, decoded one way wherever they come from: the processor, the data loaders, the
index build, the dense-caption writer, the pipelines and the demo page.

[`rgb_image`] turns a PIL image into 8-bit RGB: its EXIF orientation applied (a photo shot sideways is upright, as
viewers show it); 16-bit pixels scaled to 8 bits (PIL's `convert("RGB")` clips them at 255, which turns a 16-bit
PNG white); 32-bit integer (`I`) and float (`F`) pixels read by their value range, as float arrays are; alpha
dropped, palettes, grey, and CMYK converted by `convert("RGB")`, as the SEPS authors' loader does. What cannot be
converted is refused, naming the image and its mode. [`open_rgb_image`] decodes a file with it, and
[`list_image_files`] lists the images of a folder and the other files it skips.

This module imports nothing of its own package: `save_pretrained` copies it, with `inputs.py` that imports it, into
a folder that `trust_remote_code=True` loads without the package.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps

__all__ = ["ImageFiles", "list_image_files", "open_rgb_image", "rgb_image"]

# PIL modes of 16-bit unsigned pixels (grey): 16-bit PNG and TIFF files, `Image.fromarray` of uint16 arrays.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_EXIF_ORIENTATION = 0x0112
_UINT8_MAX, _UINT16_MAX = 255, 65535
# Files listed among a folder's skipped ones, by name, in a message.
_MAX_NAMED_FILES = 5


def _grey_to_rgb(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.rint(values).astype(np.uint8), mode="L").convert("RGB")


def _wide_pixels_to_rgb(image: Image.Image, name: str) -> Image.Image:
    """An `I;16*`, `I` or `F` image as 8-bit RGB: 16-bit values scaled by 255 / 65535; `I` values in [0, 255] taken
    as 8-bit ones and in [0, 65535] as 16-bit ones; `F` values in [0, 1] scaled by 255 and in [0, 255] kept (the
    processor's rule for float arrays). Other values raise a `ValueError`."""
    values = np.asarray(image, dtype=np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode in SIXTEEN_BIT_MODES:
        return _grey_to_rgb(values * (_UINT8_MAX / _UINT16_MAX))
    ranges = {"I": ((_UINT8_MAX, 1.0), (_UINT16_MAX, _UINT8_MAX / _UINT16_MAX)), "F": ((1.0, 255.0), (255.0, 1.0))}
    for top, scale in ranges[image.mode]:
        if low >= 0 and high <= top:  # also false for NaN
            return _grey_to_rgb(values * scale)
    meaning = "[0, 255] (8 bits) or [0, 65535] (16 bits)" if image.mode == "I" else "[0, 1] or [0, 255]"
    raise ValueError(
        f"{name}: a PIL image of mode {image.mode!r} with values in [{low:.6g}, {high:.6g}], outside {meaning}: "
        "cannot tell its brightness; convert it to 8-bit RGB yourself"
    )


def rgb_image(image: Image.Image, name: str = "image") -> Image.Image:
    """`image` as an 8-bit RGB image, upright by its EXIF orientation (see the module's docstring); a `ValueError`
    naming `name` and the mode for an image that cannot be converted."""
    if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode in (*SIXTEEN_BIT_MODES, "I", "F"):
        return _wide_pixels_to_rgb(image, name)
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise ValueError(f"{name}: a PIL image of mode {image.mode!r} cannot be converted to RGB ({error})") from error


def open_rgb_image(source: str | os.PathLike | IO[bytes], name: str | os.PathLike | None = None) -> Image.Image:
    """Open and fully decode an image file (a truncated one fails here, not later) as [`rgb_image`] gives it.
    Raises what PIL raises for an unreadable file, and `ValueError` for pixels that cannot be converted."""
    if name is None:
        name = source if isinstance(source, (str, os.PathLike)) else "image"
    with Image.open(source) as image:
        image.load()
        converted = rgb_image(image, os.fspath(name))
        return image.copy() if converted is image else converted  # not the file's image, which the `with` closes


@dataclass
class ImageFiles:
    """The files of a folder: `images` (an image extension known to PIL) and `skipped` (the others), sorted."""

    root: Path
    images: list[Path]
    skipped: list[Path]

    def skipped_message(self) -> str | None:
        """'skipped 2 files of <root> that are not images (by their extension): a.txt, b.csv', or None."""
        if not self.skipped:
            return None
        names = [path.relative_to(self.root).as_posix() for path in self.skipped[:_MAX_NAMED_FILES]]
        more = len(self.skipped) - len(names)
        listed = ", ".join(names) + (f" and {more} more" if more else "")
        count = f"{len(self.skipped)} file" + ("s" if len(self.skipped) > 1 else "")
        verb = "is not an image" if len(self.skipped) == 1 else "are not images"
        return f"skipped {count} of {self.root} that {verb} (by the extension): {listed}"


def list_image_files(root: str | os.PathLike, pattern: str = "**/*") -> ImageFiles:
    """The files under `root` matching the glob `pattern` (default: every file, in subfolders too), split into
    images (an extension PIL can open) and the other files, each sorted by path."""
    root = Path(root)
    extensions = set(Image.registered_extensions())
    files = sorted(path for path in root.glob(pattern) if path.is_file())
    images = [path for path in files if path.suffix.lower() in extensions]
    return ImageFiles(root, images, [path for path in files if path.suffix.lower() not in extensions])
