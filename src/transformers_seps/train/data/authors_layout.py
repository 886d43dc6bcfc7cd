"""Image-text retrieval data in the layout the SEPS authors publish (Flickr30K, MS-COCO) and the synthetic
benchmark writes.

One dataset folder `data_root` (the authors' `data/f30k`, `data/coco`) holds, for each split:

    id_mapping.json          {"<image id>": "<image file, relative to the image root>", ...} (all splits)
    {split}_caps.txt         one caption per line, image-major (5 per image)
    {split}_ids.txt          the image id of each caption line (dev, test, testall), or of each image when every
                             image has 5 consecutive captions (the authors' train splits: Flickr30K 29,000 ids for
                             145,000 captions, MS-COCO 113,287 ids); the authors' loader tells the two apart the
                             same way, by comparing the line counts
    {dataset}_{split}.jsonl  one dense caption per image, in image order (the order in which ids first appear
                             in `{split}_ids.txt`): {"text": ..., "model_id": ..., "metadata": {"length": ...}}

Splits are train/dev/test (Flickr30K) and train/dev/testall (COCO). The authors ship no dense-caption file for
dev: such a split loads with `dense_captions=None` (the model's dense terms drop out).

A dense caption belongs to the image it describes, always (docs/model.md, section 2): every caption row carries the
dense caption of ITS OWN image, and every image row the dense caption of that image.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import torch
from PIL import Image

from ...images import open_rgb_image
from ...metrics import CAPTIONS_PER_IMAGE

if TYPE_CHECKING:
    from ...processing_seps import SepsProcessor

logger = logging.getLogger(__name__)

__all__ = [
    "DENSE_CAPTION_MODES",
    "RetrievalDataError",
    "RetrievalFileNotFoundError",
    "RetrievalFiles",
    "RetrievalSplit",
    "SepsRetrievalCollator",
    "UnreadableImageError",
    "build_caption_dataset",
    "build_image_dataset",
    "load_retrieval_split",
    "load_rgb_image",
]

#: Accepted values of `load_retrieval_split(dense_captions=...)`.
DENSE_CAPTION_MODES = ("auto", "required", "optional", "ignore")

# Where the authors' README puts the images, next to the caption folders: data/f30k + data/flickr30k-images.
_AUTHORS_IMAGE_FOLDERS = {"f30k": "flickr30k-images", "coco": "coco-images"}


class RetrievalDataError(ValueError):
    """A data file is present but its content is wrong. `path` names the file and `line` (1-based) the line,
    when one line is to blame."""

    def __init__(self, message: str, path: str | os.PathLike, line: int | None = None) -> None:
        location = f"{path}, line {line}" if line is not None else str(path)
        super().__init__(f"{location}: {message}")
        self.path = Path(path)
        self.line = line


class RetrievalFileNotFoundError(FileNotFoundError):
    """A data file, the image root or an image file is missing. `path` names it."""

    def __init__(self, message: str, path: str | os.PathLike) -> None:
        super().__init__(f"{path}: {message}")
        self.path = Path(path)


class UnreadableImageError(RetrievalDataError):
    """An image file exists but cannot be decoded (corrupted, truncated, not an image)."""


@dataclass(frozen=True)
class RetrievalFiles:
    """Paths of the annotation files of one split of a dataset folder."""

    id_mapping: Path
    captions: Path
    image_ids: Path
    dense_captions: Path

    @classmethod
    def in_folder(cls, data_root: str | os.PathLike, dataset: str, split: str) -> RetrievalFiles:
        root = Path(data_root)
        return cls(
            id_mapping=root / "id_mapping.json",
            captions=root / f"{split}_caps.txt",
            image_ids=root / f"{split}_ids.txt",
            dense_captions=root / f"{dataset}_{split}.jsonl",
        )


@dataclass(frozen=True)
class RetrievalSplit:
    """One split of a retrieval dataset, fully validated.

    Attributes:
        dataset (`str`): dataset name (`"f30k"`, `"coco"`, `"synthetic"`), as in the dense-caption file name.
        split (`str`): split name (`"train"`, `"dev"`, `"test"`, `"testall"`).
        image_ids (`list[int]`): `(num_images,)` image ids in order of first appearance in `{split}_ids.txt`.
        image_files (`list[str]`): `(num_images,)` file of each image, relative to `image_root`.
        captions (`list[str]`): `(num_captions,)` captions, stripped, in file order.
        caption_to_image (`list[int]`): `(num_captions,)` index into `image_ids` of each caption's image (the
            `caption_to_image` argument of `transformers_seps.metrics.retrieval_metrics`).
        dense_captions (`list[str]` or `None`): `(num_images,)` dense caption of each image, or None when the
            split has none (or they were ignored).
        image_root (`Path` or `None`): folder the image files are relative to; None when images were not
            required and no image folder exists, and for a split whose images are in `image_store`.
        image_store (`datasets.Dataset` or `None`): `(num_images,)` rows, in image order, of one undecoded
            `datasets.Image` column: the images of a split read from a `datasets` dataset (`hub.load_hub_split`),
            memory-mapped and decoded one at a time by `load_image`; None for images in files.
    """

    dataset: str
    split: str
    image_ids: list[int]
    image_files: list[str]
    captions: list[str]
    caption_to_image: list[int]
    dense_captions: list[str] | None
    image_root: Path | None
    image_store: datasets.Dataset | None = None

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    @property
    def num_captions(self) -> int:
        return len(self.captions)

    @property
    def has_dense_captions(self) -> bool:
        return self.dense_captions is not None

    def image_path(self, image_index: int) -> Path:
        """Path of image `image_index` (an index into `image_ids`, not an image id)."""
        if self.image_root is None:
            raise ValueError(
                f"{self.dataset}/{self.split} has no image root: load it with `require_images=True` or pass "
                "`image_root=`."
            )
        return self.image_root / self.image_files[image_index]

    def load_image(self, image_index: int) -> Image.Image:
        """Image `image_index`, decoded as RGB, from its file or from `image_store` (see [`load_rgb_image`])."""
        if self.image_store is None:
            return load_rgb_image(self.image_path(image_index))
        (encoded,) = self.image_store[image_index].values()  # {"bytes": ..., "path": ...}, not decoded yet
        name = self.image_files[image_index]
        if encoded is None:
            raise UnreadableImageError(f"image {name} (image index {image_index}) is missing (null).", name)
        if encoded.get("bytes") is None:
            return load_rgb_image(encoded["path"])
        return _decode_rgb(io.BytesIO(encoded["bytes"]), name)


def load_retrieval_split(
    data_root: str | os.PathLike,
    dataset: str,
    split: str,
    image_root: str | os.PathLike | None = None,
    require_images: bool = True,
    dense_captions: str = "auto",
) -> RetrievalSplit:
    r"""
    Reads and validates one split of a dataset folder in the SEPS authors' layout (see the module docstring).

    Args:
        data_root (`str` or `os.PathLike`):
            The folder holding `id_mapping.json`, `{split}_caps.txt`, `{split}_ids.txt` and
            `{dataset}_{split}.jsonl` (the authors' `data/f30k`, or a synthetic benchmark folder).
        dataset (`str`):
            Dataset name used in the dense-caption file name: `"f30k"`, `"coco"` or `"synthetic"`.
        split (`str`):
            `"train"`, `"dev"`, `"test"` (Flickr30K, synthetic) or `"testall"` (COCO 5K). `{split}_ids.txt`
            holds one image id per caption line, or one per image when the captions are exactly 5 per image
            (image-major), as in the authors' training splits.
        image_root (`str` or `os.PathLike`, *optional*):
            Folder the `id_mapping.json` file names are relative to. Default: `data_root/images` (the synthetic
            layout) if it exists, else the authors' location `data_root/../flickr30k-images` (f30k) or
            `data_root/../coco-images` (coco).
        require_images (`bool`, *optional*, defaults to `True`):
            Check that the image root and every image file of the split exist. With `False` (text-only use),
            nothing about images is checked and `image_root` is None when no folder exists.
        dense_captions (`str`, *optional*, defaults to `"auto"`):
            What to do with `{dataset}_{split}.jsonl`:
            - `"auto"`: required, except for the `dev` split, for which the authors ship none: a missing dev
              file gives `dense_captions=None` (logged);
            - `"required"`: a missing file is an error;
            - `"optional"`: a missing file gives `dense_captions=None` (logged);
            - `"ignore"`: the file is not read; `dense_captions=None` (models without dense captions).

            The file must hold one JSON object per image, in image order (the authors' files, train
            included). A file with one row per caption line instead is accepted too and reduced to the row of
            each image's first caption; a warning says how many images had differing rows.

    Returns:
        [`RetrievalSplit`]

    Raises:
        RetrievalFileNotFoundError: `data_root`, an annotation file, the image root or an image file is missing.
        RetrievalDataError: a malformed line (blank caption, non-integer id, invalid JSON, a JSON row without a
            non-empty string `text`), an id count that is neither the caption count nor a fifth of it, an id
            listed twice in a one-id-per-image file, an id missing from `id_mapping.json`,
            a dense-caption file whose row count matches neither the images nor the captions. The message
            names the file and, when one line is to blame, the line (1-based).
        ValueError: an unknown `dense_captions` mode.
    """
    if dense_captions not in DENSE_CAPTION_MODES:
        raise ValueError(f"`dense_captions` must be one of {DENSE_CAPTION_MODES}, got {dense_captions!r}.")
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise RetrievalFileNotFoundError("dataset folder not found (the `data_root` argument).", data_root)
    files = RetrievalFiles.in_folder(data_root, dataset, split)

    captions = _read_captions(files.captions)
    if not captions:
        raise RetrievalDataError("the split has no captions.", files.captions)
    id_lines = _read_image_ids(files.image_ids)
    caption_image_ids = _image_id_of_each_caption(id_lines, len(captions), files)

    image_ids = list(dict.fromkeys(caption_image_ids))
    position = {image_id: index for index, image_id in enumerate(image_ids)}
    caption_to_image = [position[image_id] for image_id in caption_image_ids]
    image_files = _image_files(_read_id_mapping(files.id_mapping), id_lines, files)

    dense = None
    if dense_captions != "ignore":
        required = dense_captions == "required" or (dense_captions == "auto" and split != "dev")
        dense = _read_dense_captions(files.dense_captions, caption_to_image, len(image_ids), required)

    root = _resolve_image_root(data_root, dataset, image_root)
    if require_images:
        _check_images(root, image_files, image_ids, data_root, dataset)
    elif not root.is_dir():
        root = None

    return RetrievalSplit(
        dataset=dataset,
        split=split,
        image_ids=image_ids,
        image_files=image_files,
        captions=captions,
        caption_to_image=caption_to_image,
        dense_captions=dense,
        image_root=root,
    )


def _read_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 text file (universal newlines, like Python's text mode), without the final empty one."""
    if not path.is_file():
        raise RetrievalFileNotFoundError("file not found.", path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise RetrievalDataError(f"not valid UTF-8 ({error.reason}).", path, line) from error
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def _read_captions(path: Path) -> list[str]:
    captions = [line.strip() for line in _read_lines(path)]
    for number, caption in enumerate(captions, start=1):
        if not caption:
            raise RetrievalDataError("empty caption line.", path, number)
    return captions


def _read_image_ids(path: Path) -> list[int]:
    image_ids = []
    for number, line in enumerate(_read_lines(path), start=1):
        try:
            image_ids.append(int(line.strip()))
        except ValueError as error:
            raise RetrievalDataError(f"expected an integer image id, got {line!r}.", path, number) from error
    return image_ids


def _image_id_of_each_caption(id_lines: list[int], num_captions: int, files: RetrievalFiles) -> list[int]:
    """The image id of each caption line, from `{split}_ids.txt` in either of its two shapes (module docstring)."""
    if len(id_lines) == num_captions:
        return id_lines
    if len(id_lines) * CAPTIONS_PER_IMAGE == num_captions:
        first_line = {}
        for number, image_id in enumerate(id_lines, start=1):
            if image_id in first_line:
                raise RetrievalDataError(
                    f"image id {image_id} is listed again (first on line {first_line[image_id]}); with one id per "
                    f"image ({len(id_lines)} ids for the {num_captions} captions of {files.captions.name}), each "
                    "image is listed once.",
                    files.image_ids,
                    number,
                )
            first_line[image_id] = number
        return [image_id for image_id in id_lines for _ in range(CAPTIONS_PER_IMAGE)]
    per_image = (
        str(num_captions // CAPTIONS_PER_IMAGE)
        if num_captions % CAPTIONS_PER_IMAGE == 0
        else f"impossible, {num_captions} is not a multiple of {CAPTIONS_PER_IMAGE}"
    )
    raise RetrievalDataError(
        f"{len(id_lines)} image ids, but {files.captions.name} has {num_captions} captions: expected one id per "
        f"caption line ({num_captions}) or one id per image with {CAPTIONS_PER_IMAGE} consecutive captions each "
        f"({per_image}).",
        files.image_ids,
    )


def _read_id_mapping(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise RetrievalFileNotFoundError("file not found.", path)
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise RetrievalDataError(f"invalid JSON ({error.msg}).", path, error.lineno) from error
    except UnicodeDecodeError as error:
        raise RetrievalDataError(f"not valid UTF-8 ({error.reason}).", path) from error
    if not isinstance(mapping, dict) or not all(isinstance(name, str) for name in mapping.values()):
        raise RetrievalDataError('expected a JSON object {"<image id>": "<file name>", ...}.', path)
    return mapping


def _image_files(mapping: dict[str, str], id_lines: list[int], files: RetrievalFiles) -> list[str]:
    """File name of each image (in order of first appearance); an id missing from the mapping is an error."""
    image_files = {}
    for number, image_id in enumerate(id_lines, start=1):
        if image_id in image_files:
            continue
        if str(image_id) not in mapping:
            raise RetrievalDataError(
                f"image id {image_id} is not in {files.id_mapping} ({len(mapping)} entries).", files.image_ids, number
            )
        image_files[image_id] = mapping[str(image_id)]
    return list(image_files.values())


def _read_dense_captions(path: Path, caption_to_image: list[int], num_images: int, required: bool) -> list[str] | None:
    """Dense caption of each image (in image order), or None if the file is missing and not required."""
    if not path.is_file():
        if required:
            raise RetrievalFileNotFoundError(
                "dense-caption file not found. Pass `dense_captions='optional'` (or 'ignore') to load the split "
                "without dense captions.",
                path,
            )
        logger.warning("No dense-caption file %s: this split has no dense captions (dense terms drop out).", path)
        return None

    rows = [_parse_dense_row(line, path, number) for number, line in enumerate(_read_lines(path), start=1)]
    if len(rows) == num_images:
        return rows
    if len(rows) == len(caption_to_image):
        return _dense_captions_per_image(rows, caption_to_image, num_images, path)
    raise RetrievalDataError(
        f"{len(rows)} dense captions for {num_images} images ({len(caption_to_image)} captions); expected one "
        "per image, in the order in which image ids first appear in the ids file.",
        path,
    )


def _parse_dense_row(line: str, path: Path, number: int) -> str:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise RetrievalDataError(f"invalid JSON ({error.msg}).", path, number) from error
    text = row.get("text") if isinstance(row, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise RetrievalDataError('expected a JSON object with a non-empty string "text".', path, number)
    return text.strip()


def _dense_captions_per_image(rows: list[str], caption_to_image: list[int], num_images: int, path: Path) -> list[str]:
    """Reduces one-row-per-caption dense captions to one per image: the row of the image's first caption."""
    per_image: list[str | None] = [None] * num_images
    differing = set()
    for row, image_index in zip(rows, caption_to_image, strict=True):
        if per_image[image_index] is None:
            per_image[image_index] = row
        elif per_image[image_index] != row:
            differing.add(image_index)
    logger.warning(
        "%s has one dense caption per caption line, not per image; kept the first of each image (%d of %d images "
        "had differing rows).",
        path,
        len(differing),
        num_images,
    )
    return per_image


def _resolve_image_root(data_root: Path, dataset: str, image_root: str | os.PathLike | None) -> Path:
    if image_root is not None:
        return Path(image_root)
    candidates = [data_root / "images"]
    if dataset in _AUTHORS_IMAGE_FOLDERS:
        candidates.append(data_root.parent / _AUTHORS_IMAGE_FOLDERS[dataset])
    return next((candidate for candidate in candidates if candidate.is_dir()), candidates[0])


def _check_images(root: Path, image_files: list[str], image_ids: list[int], data_root: Path, dataset: str) -> None:
    check_image_files(
        root,
        image_files,
        image_ids,
        f"`image_root=` (the folder the file names of {data_root / 'id_mapping.json'} are relative to), or "
        f"`require_images=False` for text-only use of {dataset}",
    )


def check_image_files(root: Path, image_files: list[str], image_ids: list[int], how_to_fix: str) -> None:
    """Every image file exists under `root`; the error names the first missing one (or the missing folder, with
    `how_to_fix`, what to pass instead)."""
    if not root.is_dir():
        raise RetrievalFileNotFoundError(f"image folder not found. Pass {how_to_fix}.", root)
    pairs = zip(image_ids, image_files, strict=True)
    missing = [(image_id, name) for image_id, name in pairs if not (root / name).is_file()]
    if missing:
        image_id, name = missing[0]
        raise RetrievalFileNotFoundError(
            f"image file of image id {image_id} not found ({len(missing)} of {len(image_files)} images of the split "
            f"are missing under {root}).",
            root / name,
        )


def build_caption_dataset(split: RetrievalSplit) -> datasets.Dataset:
    """
    One row per caption, for training (and for encoding captions at evaluation time).

    Columns:
        - **caption_index** (`int64`): line of the caption in `{split}_caps.txt` (0-based).
        - **caption** (`string`): the caption.
        - **image_index** (`int64`): index of its image in `split.image_ids` (0-based).
        - **image_id** (`int64`): id of its image (the positives of the triplet loss share it).
        - **image_path** (`string` or None): path of its image, decoded only by the collator (lazily); None when
          the split has no image root (no image folder, or images in its `image_store`).
        - **dense_caption** (`string` or None): the dense caption of ITS OWN image, never of another one; None
          when the split has none.

    Drop columns to skip work: e.g. `remove_columns(["image_path", "dense_caption"])` for text-only batches.
    """
    image_index = split.caption_to_image
    return datasets.Dataset.from_dict(
        {
            "caption_index": list(range(split.num_captions)),
            "caption": split.captions,
            "image_index": image_index,
            "image_id": [split.image_ids[index] for index in image_index],
            "image_path": [_image_path_or_none(split, index) for index in image_index],
            "dense_caption": [_dense_or_none(split, index) for index in image_index],
        },
        features=datasets.Features(
            caption_index=datasets.Value("int64"),
            caption=datasets.Value("string"),
            image_index=datasets.Value("int64"),
            image_id=datasets.Value("int64"),
            image_path=datasets.Value("string"),
            dense_caption=datasets.Value("string"),
        ),
    )


def build_image_dataset(split: RetrievalSplit) -> datasets.Dataset:
    """
    One row per image, in image order, for encoding images (and their dense captions) at evaluation time.

    Columns: **image_index**, **image_id**, **image_path**, **dense_caption**, as in [`build_caption_dataset`].
    """
    indices = list(range(split.num_images))
    return datasets.Dataset.from_dict(
        {
            "image_index": indices,
            "image_id": split.image_ids,
            "image_path": [_image_path_or_none(split, index) for index in indices],
            "dense_caption": [_dense_or_none(split, index) for index in indices],
        },
        features=datasets.Features(
            image_index=datasets.Value("int64"),
            image_id=datasets.Value("int64"),
            image_path=datasets.Value("string"),
            dense_caption=datasets.Value("string"),
        ),
    )


def _image_path_or_none(split: RetrievalSplit, image_index: int) -> str | None:
    return None if split.image_root is None else str(split.image_path(image_index))


def _dense_or_none(split: RetrievalSplit, image_index: int) -> str | None:
    return None if split.dense_captions is None else split.dense_captions[image_index]


def load_rgb_image(path: str | os.PathLike) -> Image.Image:
    """
    Opens and fully decodes an image as upright 8-bit RGB (`transformers_seps.images.open_rgb_image`).

    Raises:
        RetrievalFileNotFoundError: the file does not exist.
        UnreadableImageError: the file cannot be decoded (corrupted, truncated, not an image, pixels that cannot
            be converted to 8-bit RGB). Truncated files
            are errors unless someone set PIL's global `ImageFile.LOAD_TRUNCATED_IMAGES = True` (the SEPS
            authors' loader does; this package never does).
    """
    path = Path(path)
    if not path.is_file():
        raise RetrievalFileNotFoundError("image file not found.", path)
    return _decode_rgb(path, path)


def _decode_rgb(source: Path | io.BytesIO, name: str | os.PathLike) -> Image.Image:
    """Decodes an image file or an in-memory encoded image as upright 8-bit RGB; `name` names it in the error."""
    try:
        return open_rgb_image(source, name)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(f"cannot decode the image ({type(error).__name__}: {error}).", name) from error


class SepsRetrievalCollator:
    r"""
    Turns a list of rows of [`build_caption_dataset`] or [`build_image_dataset`] into a batch for `SepsModel`.

    It works on the columns the rows have, so one collator serves training (caption rows with their image and
    dense caption) and evaluation (image rows, or caption rows without `image_path`/`dense_caption`):

    - `image_path` -> images decoded here (the dataset stores paths: decoding is lazy), passed through
      `image_transform` if given, then the processor's `pixel_values` `(batch, 3, H, W)`; with `split` given,
      the images are `split.load_image(row["image_index"])` instead (a split read from a `datasets` dataset
      keeps its images there, not in files);
    - `caption` -> `input_ids`, `attention_mask` `(batch, text_length)`;
    - `dense_caption` -> `dense_input_ids`, `dense_attention_mask` `(batch, dense_length)`, row `i` being the
      dense caption of row `i`'s own image; left out when the rows have none (None);
    - `image_id` -> `image_ids` `(batch,)` int64;
    - `caption_index` -> `caption_indices` `(batch,)` int64 (the keys of cached caption tokens, see
      `transformers_seps.feature_cache`).

    Unreadable images are NEVER skipped and never silently used: decoding fails with [`UnreadableImageError`]
    (or [`RetrievalFileNotFoundError`]) naming the file. Skipping would shrink the batch on one process only,
    which breaks the equal-size batches the multi-process all-gather of the training loss needs; check or
    replace the file and resume from the last checkpoint.

    Args:
        processor ([`SepsProcessor`]): turns images, captions and dense captions into tensors.
        image_transform (`Callable[[PIL.Image.Image], PIL.Image.Image]`, *optional*):
            Applied to each decoded RGB image before the processor (e.g. a random resized crop for training).
        split ([`RetrievalSplit`], *optional*):
            The split the rows come from, to decode their images by `image_index` (needed for a split with an
            `image_store`; the same images as `image_path` for the others).
    """

    def __init__(
        self,
        processor: SepsProcessor,
        image_transform: Callable[[Image.Image], Image.Image] | None = None,
        split: RetrievalSplit | None = None,
    ) -> None:
        self.processor = processor
        self.image_transform = image_transform
        self.split = split

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("cannot collate an empty list of rows.")
        inputs: dict[str, Any] = {}
        if "image_path" in rows[0]:
            inputs["images"] = [self._load_image(row) for row in rows]
        if "caption" in rows[0]:
            inputs["text"] = [row["caption"] for row in rows]
        dense = _dense_captions_of(rows)
        if dense is not None:
            inputs["dense_text"] = dense
        batch = dict(self.processor(**inputs, return_tensors="pt")) if inputs else {}
        batch["image_ids"] = torch.tensor([row["image_id"] for row in rows], dtype=torch.long)
        if "caption_index" in rows[0]:
            batch["caption_indices"] = torch.tensor([row["caption_index"] for row in rows], dtype=torch.long)
        return batch

    def _load_image(self, row: dict[str, Any]) -> Image.Image:
        if self.split is not None:
            image = self.split.load_image(row["image_index"])
        elif row["image_path"] is None:
            raise ValueError(
                f"row of image id {row.get('image_id')} has no image path: its split was loaded with "
                "`require_images=False` and no image folder; remove the `image_path` column for text-only batches."
            )
        else:
            image = load_rgb_image(row["image_path"])
        return self.image_transform(image) if self.image_transform is not None else image


def _dense_captions_of(rows: Sequence[dict[str, Any]]) -> list[str] | None:
    """The rows' dense captions, or None if they have none; a batch mixing both is an error."""
    if "dense_caption" not in rows[0]:
        return None
    dense = [row["dense_caption"] for row in rows]
    missing = sum(text is None for text in dense)
    if missing == len(dense):
        return None
    if missing:
        raise ValueError(
            f"{missing} of {len(dense)} rows have no dense caption: a batch must have one for every row or none."
        )
    return dense
