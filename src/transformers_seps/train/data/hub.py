"""Retrieval splits read from a `datasets` dataset in the layout of the Flickr30K and MS-COCO (Karpathy split)
datasets on the Hub, with the dense captions joined by image file name.

The layout (`nlphuji/flickr30k`; `yerevann/coco-karpathy` with `--caption_column sentences --image_id_column
cocoid`): one row per image, with

    image      the image (a `datasets.Image` column), decoded one row at a time when a batch needs it
    caption    the image's captions, a list of strings (the first 5 are used, as in the standard protocol)
    split      the Karpathy split of the image: train, restval (MS-COCO's extra training images), val, test
    filename   the image's file name, the key the dense captions are joined on
    img_id     the image id (an integer or a string of one; the row number when the column is absent)

A dataset without an image column (`yerevann/coco-karpathy` stores URLs) reads its images from files under
`image_root`: `image_root/<filepath>/<filename>`, or `image_root/<filename>` when there is no `filepath` column.

The dataset is memory-mapped Arrow (`load_from_disk`, or `load_dataset` for parquet files and Hub ids): only the
text columns are read into memory; images stay on disk until the collator decodes them.

Dense captions come from either
- the SEPS authors' annotation folder (`data/f30k`: `id_mapping.json`, `{split}_ids.txt`, `{dataset}_{split}.jsonl`),
  whose image order gives each dense caption its file name; or
- a jsonl file of `examples/generate_dense_captions.py` run without `--id_mapping`, whose records are keyed by the
  image's path relative to the image folder (`image_id`).
They are joined on the file name (without folders). Each image gets ITS OWN dense caption (docs/model.md,
section 2); an image of the split without one is an error naming its file, never a silent gap.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import datasets

from ...metrics import CAPTIONS_PER_IMAGE
from ..cli import UsageError, check_existing, looks_like_hub_id
from .authors_layout import (
    DENSE_CAPTION_MODES,
    RetrievalDataError,
    RetrievalFileNotFoundError,
    RetrievalSplit,
    check_image_files,
    load_retrieval_split,
)

if TYPE_CHECKING:
    from ..arguments import HubDatasetArguments

logger = logging.getLogger(__name__)

__all__ = [
    "HUB_LAYOUT_DATASETS",
    "KARPATHY_SPLITS",
    "HubColumns",
    "check_hub_dataset_arguments",
    "hub_columns",
    "load_hub_dataset",
    "load_hub_split",
    "load_split",
    "read_dense_captions_by_file_name",
]

#: The values of the split column that make up each split of ours (Karpathy's: MS-COCO's training images are
#: its train and restval images, its 5K test set is `testall`).
KARPATHY_SPLITS = {"train": ("train", "restval"), "dev": ("val",), "test": ("test",), "testall": ("test",)}
#: The datasets of ours that have this layout on the Hub.
HUB_LAYOUT_DATASETS = ("f30k", "coco")


@dataclass(frozen=True)
class HubColumns:
    """Column names of a Hub-layout dataset; the defaults are those of `nlphuji/flickr30k` (module docstring)."""

    image: str = "image"
    captions: str = "caption"
    split: str = "split"
    file_name: str = "filename"
    image_id: str = "img_id"
    file_folder: str = "filepath"


def load_hub_dataset(dataset_name: str | os.PathLike, cache_dir: str | None = None) -> datasets.Dataset:
    """
    Opens a dataset as one memory-mapped `datasets.Dataset`, its splits (if a `DatasetDict`) concatenated in order.

    `dataset_name` is a folder written by `save_to_disk`, a parquet file, a folder of parquet files, or a Hub id
    (`load_dataset`, which needs the network the first time).
    """
    path = Path(dataset_name)
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        loaded = datasets.load_from_disk(str(path))
    elif path.is_file() and path.suffix == ".parquet":
        loaded = datasets.load_dataset("parquet", data_files=str(path), cache_dir=cache_dir)
    else:
        loaded = datasets.load_dataset(str(dataset_name), cache_dir=cache_dir)
    if isinstance(loaded, datasets.DatasetDict):
        return datasets.concatenate_datasets(list(loaded.values()))
    return loaded


def load_hub_split(
    dataset_name: str | os.PathLike,
    dataset: str,
    split: str,
    dense_captions: str | os.PathLike | None = None,
    dense_captions_mode: str = "auto",
    columns: HubColumns = HubColumns(),
    image_root: str | os.PathLike | None = None,
    require_images: bool = True,
    cache_dir: str | None = None,
) -> RetrievalSplit:
    r"""
    Reads one split of a Hub-layout dataset (module docstring) as a [`RetrievalSplit`], like
    [`load_retrieval_split`] does for the SEPS authors' folders.

    Args:
        dataset_name (`str` or `os.PathLike`): see [`load_hub_dataset`].
        dataset (`str`): `"f30k"` or `"coco"`: the protocol of the test split, the authors' dense-caption file name.
        split (`str`): `"train"`, `"dev"`, `"test"` or `"testall"`; the rows whose split column holds one of
            `KARPATHY_SPLITS[split]`, in dataset order.
        dense_captions (`str` or `os.PathLike`, *optional*): the authors' annotation folder or a jsonl file of
            `examples/generate_dense_captions.py` (module docstring); None: no dense captions.
        dense_captions_mode (`str`, *optional*, defaults to `"auto"`): as in [`load_retrieval_split`]: `"auto"`
            needs a dense caption for every image except on the dev split, which may have none at all;
            `"optional"` lets any split have none at all; `"required"` never (and needs `dense_captions`);
            `"ignore"` reads none. An image without one in a split that has some is always an error.
        columns ([`HubColumns`], *optional*): the column names.
        image_root (`str` or `os.PathLike`, *optional*): the image folder of a dataset without an image column.
        require_images (`bool`, *optional*, defaults to `True`): check that the images can be found (the image
            column, or every file under `image_root`).
        cache_dir (`str`, *optional*): the `datasets` cache of `load_dataset`.

    Raises:
        RetrievalDataError: a missing column (named with its flag), a split without rows, an image with fewer than
            5 captions or an empty one, a repeated file name, a non-integer image id, an image without its dense
            caption. The message names the dataset and, when one row is to blame, its file name.
        RetrievalFileNotFoundError: the dense-caption source, the image root or an image file is missing.
        ValueError: an unknown `split` or `dense_captions_mode`.
    """
    if split not in KARPATHY_SPLITS:
        raise ValueError(f"`split` must be one of {tuple(KARPATHY_SPLITS)}, got {split!r}.")
    if dense_captions_mode not in DENSE_CAPTION_MODES:
        raise ValueError(f"`dense_captions_mode` must be one of {DENSE_CAPTION_MODES}, got {dense_captions_mode!r}.")
    if dense_captions is None and dense_captions_mode == "required":
        raise ValueError("dense_captions_mode='required' needs a `dense_captions` source (--dense_captions).")
    table = load_hub_dataset(dataset_name, cache_dir)
    has_image_column = columns.image in table.column_names
    _check_columns(table, columns, dataset_name, has_image_column, image_root)
    wanted = KARPATHY_SPLITS[split]
    split_values = list(table[columns.split])
    rows = [row for row, value in enumerate(split_values) if value in wanted]
    if not rows:
        raise RetrievalDataError(
            f"no row has {columns.split!r} (--split_column) in {list(wanted)} for the {split} split; the column holds "
            f"{sorted(set(map(str, split_values)))}.",
            dataset_name,
        )
    table = table.select(rows)  # an index mapping over the memory-mapped data: nothing is copied

    text_columns = [columns.captions, columns.file_name]
    text_columns += [name for name in (columns.image_id, columns.file_folder) if name in table.column_names]
    text = table.select_columns(text_columns).to_dict()
    file_names = [str(name) for name in text[columns.file_name]]
    captions = [
        caption
        for file_name, image_captions in zip(file_names, text[columns.captions], strict=True)
        for caption in _five_captions(image_captions, file_name, columns, dataset_name)
    ]
    image_ids = _image_ids(text.get(columns.image_id), rows, file_names, columns, dataset_name)
    keys = _join_keys(file_names, dataset_name, columns)

    dense = None
    if dense_captions is not None and dense_captions_mode != "ignore":
        by_file_name = read_dense_captions_by_file_name(dense_captions, dataset, split, dense_captions_mode)
        may_lack_all = dense_captions_mode == "optional" or (dense_captions_mode == "auto" and split == "dev")
        dense = _join_dense_captions(keys, file_names, by_file_name, dense_captions, may_lack_all)

    image_store, root, image_files = None, None, file_names
    if has_image_column:
        image_store = table.select_columns([columns.image]).cast_column(columns.image, datasets.Image(decode=False))
    else:
        folders = text.get(columns.file_folder)
        if folders is not None:
            image_files = [str(PurePosixPath(folder, name)) for folder, name in zip(folders, file_names, strict=True)]
        root = Path(image_root)
        if require_images:
            check_image_files(root, image_files, image_ids, "`image_root=` (--image_root), the folder of the images")

    return RetrievalSplit(
        dataset=dataset,
        split=split,
        image_ids=image_ids,
        image_files=image_files,
        captions=captions,
        caption_to_image=[index for index in range(len(file_names)) for _ in range(CAPTIONS_PER_IMAGE)],
        dense_captions=dense,
        image_root=root,
        image_store=image_store,
    )


def _check_columns(
    table: datasets.Dataset,
    columns: HubColumns,
    dataset_name: str | os.PathLike,
    has_image_column: bool,
    image_root: str | os.PathLike | None,
) -> None:
    for flag, name in (
        ("--caption_column", columns.captions),
        ("--split_column", columns.split),
        ("--file_name_column", columns.file_name),
    ):
        if name not in table.column_names:
            raise RetrievalDataError(
                f"no column {name!r} ({flag}); the dataset has {table.column_names}.", dataset_name
            )
    if has_image_column:
        feature = table.features[columns.image]
        if not isinstance(feature, datasets.Image):
            raise RetrievalDataError(
                f"column {columns.image!r} (--image_column) holds {feature}, not images (datasets.Image).",
                dataset_name,
            )
    elif image_root is None:
        raise RetrievalDataError(
            f"no image column {columns.image!r} (--image_column), and no --image_root to read the images from "
            f"(<image_root>/<{columns.file_folder}>/<{columns.file_name}>); the dataset has {table.column_names}.",
            dataset_name,
        )


def _five_captions(
    image_captions: Any, file_name: str, columns: HubColumns, dataset_name: str | os.PathLike
) -> list[str]:
    """The first 5 captions of an image, stripped (some MS-COCO images have more; the protocol uses 5)."""
    if not isinstance(image_captions, list) or not all(isinstance(caption, str) for caption in image_captions):
        raise RetrievalDataError(
            f"image {file_name}: column {columns.captions!r} (--caption_column) must hold a list of strings, "
            f"got {type(image_captions).__name__}.",
            dataset_name,
        )
    kept = [caption.strip() for caption in image_captions[:CAPTIONS_PER_IMAGE]]
    if len(kept) < CAPTIONS_PER_IMAGE or not all(kept):
        raise RetrievalDataError(
            f"image {file_name}: {len(image_captions)} captions in {columns.captions!r} with "
            f"{sum(not caption for caption in kept)} empty among the first {CAPTIONS_PER_IMAGE}; the protocol needs "
            f"{CAPTIONS_PER_IMAGE} non-empty captions per image.",
            dataset_name,
        )
    return kept


def _image_ids(
    values: list[Any] | None,
    rows: list[int],
    file_names: list[str],
    columns: HubColumns,
    dataset_name: str | os.PathLike,
) -> list[int]:
    """The image ids (integers: the training loss's positives share one), or the dataset row numbers."""
    if values is None:
        return rows
    image_ids = []
    for value, file_name in zip(values, file_names, strict=True):
        try:
            image_ids.append(int(value))
        except (TypeError, ValueError) as error:
            raise RetrievalDataError(
                f"image {file_name}: {columns.image_id!r} (--image_id_column) is {value!r}, not an integer id.",
                dataset_name,
            ) from error
    if len(set(image_ids)) != len(image_ids):
        raise RetrievalDataError(
            f"{columns.image_id!r} (--image_id_column) repeats ids: each row is one image.", dataset_name
        )
    return image_ids


def _join_keys(file_names: list[str], dataset_name: str | os.PathLike, columns: HubColumns) -> list[str]:
    """The file name of each image without folders, the dense captions' join key; each must be unique."""
    keys = [PurePosixPath(name).name for name in file_names]
    seen: dict[str, str] = {}
    for key, name in zip(keys, file_names, strict=True):
        if key in seen:
            raise RetrievalDataError(
                f"two images of the split have the file name {key!r} ({seen[key]!r}, {name!r} in "
                f"{columns.file_name!r}): dense captions are joined on it.",
                dataset_name,
            )
        seen[key] = name
    return keys


def read_dense_captions_by_file_name(
    source: str | os.PathLike, dataset: str, split: str, mode: str = "auto"
) -> dict[str, str]:
    """
    `{file name: dense caption}` from the SEPS authors' annotation folder (its `split`, with `mode` as in
    [`load_retrieval_split`]) or from a jsonl file of `examples/generate_dense_captions.py` (all its captions;
    error records, for images it could not read, give none). File names lose their folders.
    """
    from ...captioning import is_error_record, read_dense_captions

    path = Path(source)
    if path.is_dir():
        folder = load_retrieval_split(path, dataset, split, require_images=False, dense_captions=mode)
        if folder.dense_captions is None:
            return {}
        return dict(zip(_file_names(folder.image_files), folder.dense_captions, strict=True))
    if not path.is_file():
        raise RetrievalFileNotFoundError(
            "dense-caption source not found (--dense_captions: the authors' annotation folder or a jsonl file).", path
        )
    try:
        records = read_dense_captions(path)
    except ValueError as error:
        raise RetrievalDataError(str(error), path) from error
    if records and "image_id" not in records[0]:
        raise RetrievalDataError(
            "the records have no `image_id`: the SEPS authors' jsonl files give their images by position, so pass "
            "their annotation folder (id_mapping.json, {split}_ids.txt and the jsonl) instead of the file.",
            path,
            1,
        )
    captions = [record for record in records if not is_error_record(record) and record["text"].strip()]
    names = _file_names([record["image_id"] for record in captions])
    return dict(zip(names, [record["text"].strip() for record in captions], strict=True))


def _file_names(paths: list[str]) -> list[str]:
    return [PurePosixPath(str(path)).name for path in paths]


def _join_dense_captions(
    keys: list[str],
    file_names: list[str],
    by_file_name: dict[str, str],
    source: str | os.PathLike,
    may_lack_all: bool,
) -> list[str] | None:
    """The dense caption of each image, by file name; None for a split that may have none and has none."""
    missing = [name for key, name in zip(keys, file_names, strict=True) if key not in by_file_name]
    if len(missing) == len(keys) and may_lack_all:
        logger.warning("%s has no dense caption for this split: it has none (dense terms drop out).", source)
        return None
    if missing:
        raise RetrievalDataError(
            f"no dense caption for image {missing[0]} ({len(missing)} of the split's {len(keys)} images have none); "
            "each image needs its own: write the missing ones with examples/generate_dense_captions.py, or train and "
            "evaluate without dense captions.",
            source,
        )
    return [by_file_name[key] for key in keys]


# ---------------------------------------------------------------------------------------------------------------
# The runners' choice of data source
# ---------------------------------------------------------------------------------------------------------------


def hub_columns(args: HubDatasetArguments) -> HubColumns:
    """The column names the `--*_column` flags give."""
    return HubColumns(
        image=args.image_column,
        captions=args.caption_column,
        split=args.split_column,
        file_name=args.file_name_column,
        image_id=args.image_id_column,
        file_folder=args.file_folder_column,
    )


def load_split(
    args: HubDatasetArguments, dataset: str, split: str, dense_captions_mode: str, require_images: bool = True
) -> RetrievalSplit:
    """One split for the training and evaluation runners, from `--dataset_name` (a Hub-layout dataset) when given,
    else from `--data_root` (the SEPS authors' layout): the one place the data source is chosen. `args` also has
    `data_root` and `image_root`."""
    if args.dataset_name is None:
        return load_retrieval_split(
            args.data_root, dataset, split, args.image_root, require_images, dense_captions=dense_captions_mode
        )
    return load_hub_split(
        args.dataset_name,
        dataset,
        split,
        args.dense_captions,
        dense_captions_mode,
        hub_columns(args),
        args.image_root,
        require_images,
    )


def check_hub_dataset_arguments(args: HubDatasetArguments, dataset: str, needs_dense_captions: bool) -> None:
    """With `--dataset_name`: no `--data_root` too (the evaluation's; the training's has a default), a dataset of
    ours that has a Hub layout, an existing dataset (or a Hub id) and dense captions when they are needed. A
    `UsageError` names the flag."""
    if dataset not in HUB_LAYOUT_DATASETS:
        raise UsageError(
            f"--dataset_name needs --dataset {' or '.join(HUB_LAYOUT_DATASETS)} (the protocol of the test split), "
            f"got --dataset {dataset}"
        )
    if not Path(args.dataset_name).exists() and not looks_like_hub_id(args.dataset_name):
        raise UsageError(
            f"--dataset_name {args.dataset_name}: not found, neither a dataset folder or parquet file nor a Hub id "
            "(org/name)"
        )
    if args.dense_captions is not None:
        check_existing("dense_captions", args.dense_captions)
    elif needs_dense_captions:
        raise UsageError(
            "dense captions are needed but --dataset_name has none: pass --dense_captions (the SEPS authors' "
            "annotation folder or a jsonl file of examples/generate_dense_captions.py), or run without dense "
            "captions (training: --no_use_dense_captions; evaluation: --dense_pairing none)"
        )
