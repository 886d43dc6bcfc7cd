"""Build a gallery index on disk (`transformers_seps.index`) from a folder of images or a dataset split, on one
or many processes (`examples/build_index.py`).

The gallery is cut into shards of `shard_size` images; process r of n encodes shards r, r + n, ... and writes each
atomically. A killed build run again with the same arguments skips the finished shards. When all are written,
the main process builds the first-stage FAISS index and writes the manifest (last).
"""

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from ..captioning import is_error_record, list_images, read_dense_captions
from ..index import (
    INDEX_VERSION,
    MANIFEST_FILE,
    PROCESSOR_FOLDER,
    STORAGE_DTYPES,
    StoredGallery,
    check_first_stage,
    finalize_index,
    finished_shards,
    import_first_stage_library,
    is_index_file,
    model_signature,
    read_shard_header,
    shard_name,
    signature_difference,
    signature_fingerprint,
    write_shard,
)
from ..modeling_seps import SepsModel
from ..processing_seps import SepsProcessor
from ..retrieval import SepsRetriever, encode_images, pad_and_stack
from .cli import (
    UsageError,
    check_choice,
    check_existing,
    check_int,
    check_model_location,
    check_writable_folder,
    replace_folder,
)
from .data import load_retrieval_split, load_rgb_image
from .index_arguments import INDEX_DTYPES, IndexArguments

if TYPE_CHECKING:
    from accelerate import Accelerator


@dataclass
class GallerySource:
    """The images to index, in order: ids, files, and each image's own dense caption (or None)."""

    image_ids: list[str | int]
    image_paths: list[Path]
    dense_captions: list[str] | None


def gallery_from_arguments(args: IndexArguments) -> GallerySource:
    """The images of `--image_root` (with `--dense_captions`) or of `--data_root`'s split; `UsageError` on a bad
    combination."""
    if (args.image_root is None) == (args.data_root is None):
        raise UsageError("give either --image_root (a folder of images) or --data_root (a dataset split), not both")
    if args.data_root is not None:
        if args.dataset is None:
            raise UsageError("--data_root needs --dataset (f30k, coco or synthetic)")
        split = load_retrieval_split(args.data_root, args.dataset, args.split, dense_captions="auto")
        paths = [Path(split.image_root) / name for name in split.image_files]
        return GallerySource(list(split.image_ids), paths, split.dense_captions)
    images = list_images(check_existing("image_root", args.image_root, "folder"))
    dense = None
    if args.dense_captions is not None:
        records = read_dense_captions(check_existing("dense_captions", args.dense_captions, "file"))
        by_id = {str(record.get("image_id")): record for record in records}
        missing = [image_id for image_id in images if image_id not in by_id or is_error_record(by_id[image_id])]
        if missing:
            raise UsageError(
                f"--dense_captions {args.dense_captions}: no dense caption for {len(missing)} image(s) of "
                f"--image_root, e.g. {missing[:3]}"
            )
        dense = [by_id[image_id]["text"] for image_id in images]
    return GallerySource(list(images), list(images.values()), dense)


def _check_finished_shard(path: Path, image_ids: list, fingerprint: str) -> None:
    metadata = read_shard_header(path)[0].get("__metadata__", {})
    if json.loads(metadata.get("image_ids", "null")) != image_ids or metadata.get("model_fingerprint") != fingerprint:
        raise UsageError(
            f"{path} holds other images or another model's features than this build would write: {_WAYS_ON}"
        )


# What a refused --output_dir offers.
_WAYS_ON = "pass --overwrite_output_dir to replace it, or another --output_dir"


def _finished_index(directory: Path, plan: dict[str, tuple[int, int]], signature: dict) -> dict | None:
    """The manifest of `directory` if it holds the finished index this build would write; None if it holds no
    finished index. `UsageError` (naming what differs) for the finished index of other images or another model."""
    if not (directory / MANIFEST_FILE).is_file():
        return None
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    if [entry.get("file") for entry in manifest.get("shards", [])] != list(plan):
        raise UsageError(f"--output_dir {directory} holds a finished index of other images: {_WAYS_ON}")
    if manifest.get("version") != INDEX_VERSION:
        difference = f"index version {manifest.get('version')!r}, written by another release"
    elif manifest.get("model_fingerprint") != signature_fingerprint(signature):
        difference = signature_difference(manifest["model"], signature)
    else:
        return manifest
    raise UsageError(f"--output_dir {directory} holds a finished index of another model ({difference}): {_WAYS_ON}")


def _check_unfinished_shards(
    directory: Path, plan: dict[str, tuple[int, int]], source: GallerySource, signature: dict
) -> set[str]:
    """The shards an interrupted build left in `directory` (returned) must be those this build would write."""
    finished = finished_shards(directory)
    strangers = sorted(finished - set(plan))
    if strangers:
        raise UsageError(f"--output_dir {directory} holds shards of another build ({strangers[0]}, ...): {_WAYS_ON}")
    fingerprint = signature_fingerprint(signature)
    for name in sorted(finished):
        start, end = plan[name]
        _check_finished_shard(directory / name, source.image_ids[start:end], fingerprint)
    return finished


def check_replaceable(directory: Path) -> None:
    """`--overwrite_output_dir` replaces a folder of index files only (an index, or what a build left): a
    `UsageError` names the first other files."""
    if directory.is_dir():
        others = sorted(path.name for path in directory.iterdir() if not is_index_file(path.name))
        if others:
            raise UsageError(
                f"--output_dir {directory} holds files that are not an index's ({', '.join(others[:3])}): "
                "--overwrite_output_dir replaces an index only; choose another --output_dir"
            )


def _wait(accelerator: "Accelerator | None") -> None:
    if accelerator is not None:
        accelerator.wait_for_everyone()


def build_index(
    model: SepsModel,
    processor: SepsProcessor,
    source: GallerySource,
    directory: Path,
    shard_size: int = 1024,
    batch_size: int = 32,
    dtype: torch.dtype = torch.float16,
    first_stage: str = "exact",
    accelerator: "Accelerator | None" = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Encode the gallery into `directory` (resuming a killed build) and return the index's manifest.

    A `directory` holding the finished index of other images or another model, or shards of another build, is
    refused unless `overwrite`: then the new index is built beside it, in a hidden folder (which a killed build
    run again resumes), and takes its place once complete (`replace_folder`): until then the old index stays
    whole and usable, and a build that fails leaves it as it was. Only a folder of index files is replaced."""
    rank = accelerator.process_index if accelerator is not None else 0
    directory = Path(directory)
    signature = model_signature(model)
    plan = _shard_plan(len(source.image_ids), shard_size)
    build = (model, processor, source, plan, signature, batch_size, dtype, first_stage, accelerator, progress)
    if not overwrite or not directory.is_dir() or not any(directory.iterdir()):
        return _build(directory, *build)
    check_replaceable(directory)
    staging = directory.with_name(f".{directory.name}.overwrite")
    if rank == 0 and staging.exists():
        try:  # what a killed build of the same images and model left is resumed; anything else started again
            _finished_index(staging, plan, signature)
            _check_unfinished_shards(staging, plan, source, signature)
        except (UsageError, ValueError, KeyError):
            shutil.rmtree(staging)
    _wait(accelerator)
    manifest = _build(staging, *build)
    if rank == 0:
        replace_folder(staging, directory)
    _wait(accelerator)
    return manifest


def _shard_plan(num_images: int, shard_size: int) -> dict[str, tuple[int, int]]:
    """The shards' file names, each with its rows [start, end), in row order."""
    plan = {}
    for start in range(0, num_images, shard_size):
        end = min(start + shard_size, num_images)
        plan[shard_name(start, end - start)] = (start, end)
    return plan


def _build(
    directory: Path,
    model: SepsModel,
    processor: SepsProcessor,
    source: GallerySource,
    plan: dict[str, tuple[int, int]],
    signature: dict,
    batch_size: int,
    dtype: torch.dtype,
    first_stage: str,
    accelerator: "Accelerator | None",
    progress: bool,
) -> dict:
    """Encode the gallery's shards (`plan`) into `directory`, resuming from its finished shards (`build_index`)."""
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    manifest = _finished_index(directory, plan, signature)
    if manifest is not None:
        return manifest
    directory.mkdir(parents=True, exist_ok=True)
    finished = _check_unfinished_shards(directory, plan, source, signature)
    model.eval()
    names = list(plan)
    for shard in tqdm(range(rank, len(names), world), desc=f"shards of process {rank}", disable=not progress):
        name = names[shard]
        start, end = plan[name]
        if name in finished:
            continue
        parts = []
        for batch_start in range(start, end, batch_size):
            rows = slice(batch_start, min(batch_start + batch_size, end))
            images = [load_rgb_image(path) for path in source.image_paths[rows]]
            dense = source.dense_captions[rows] if source.dense_captions is not None else None
            parts.append(encode_images(model, processor, images, dense))
        dense = mask = None
        if source.dense_captions is not None:
            dense, mask = pad_and_stack(
                [part.dense_embeds for part in parts], [part.dense_attention_mask for part in parts]
            )
        image_embeds = torch.cat([part.image_embeds for part in parts])
        global_embeds = torch.cat([part.global_embeds for part in parts])
        ids = source.image_ids[start:end]
        write_shard(directory, start, ids, image_embeds, global_embeds, dense, mask, dtype, signature)
    _wait(accelerator)
    if rank == 0:
        processor.save_pretrained(directory / PROCESSOR_FOLDER)
        finalize_index(directory, signature, first_stage)
    _wait(accelerator)
    return json.loads((directory / MANIFEST_FILE).read_text())


def append_to_index(
    model: SepsModel,
    processor: SepsProcessor,
    source: GallerySource,
    directory: Path,
    shard_size: int = 1024,
    batch_size: int = 32,
    progress: bool = True,
) -> dict:
    """Add to the finished index in `directory` the images of `source` whose ids it does not hold, one shard of
    `shard_size` images per update (`transformers_seps.index_updates.append_images`), and return its manifest."""
    stored = StoredGallery(directory, model)
    held = {stored.image_ids[row] for row in stored.live_rows().tolist()}
    retriever = SepsRetriever.load(directory, model, processor, batch_size=batch_size)
    new = [row for row, image_id in enumerate(source.image_ids) if image_id not in held]
    for start in tqdm(range(0, len(new), shard_size), desc="shards appended", disable=not progress):
        rows = new[start : start + shard_size]
        images = [load_rgb_image(source.image_paths[row]) for row in rows]
        dense = None if source.dense_captions is None else [source.dense_captions[row] for row in rows]
        retriever.add_images(images, dense, [source.image_ids[row] for row in rows])
    return json.loads((directory / MANIFEST_FILE).read_text())


def run_build_index(args: IndexArguments) -> dict:
    """Check the arguments, load the model, and build (or resume) the index of `examples/build_index.py`."""
    from accelerate import Accelerator

    check_model_location("model", args.model)
    check_int("shard_size", args.shard_size, 1)
    check_int("batch_size", args.batch_size, 1)
    check_choice("dtype", args.dtype, INDEX_DTYPES)
    try:
        check_first_stage(args.first_stage)
    except ValueError as error:
        raise UsageError(f"--{error}") from None
    check_writable_folder("output_dir", Path(args.output_dir))
    if args.overwrite_output_dir:
        check_replaceable(Path(args.output_dir))
    if args.append and args.overwrite_output_dir:
        raise UsageError("--append adds to the index in --output_dir; --overwrite_output_dir replaces it: pick one")
    if args.append and not (Path(args.output_dir) / MANIFEST_FILE).is_file():
        raise UsageError(f"--append: --output_dir {args.output_dir} holds no finished index to add to")
    try:
        import_first_stage_library(args.first_stage)
    except ImportError as error:
        raise UsageError(str(error)) from None
    source = gallery_from_arguments(args)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    model = SepsModel.from_pretrained(args.model).to(accelerator.device).eval()
    processor = SepsProcessor.from_pretrained(args.model)
    if args.append:
        if accelerator.num_processes > 1:
            raise UsageError("--append runs on one process (the index's manifest is rewritten by each shard added)")
        try:
            manifest = append_to_index(
                model, processor, source, Path(args.output_dir), args.shard_size, args.batch_size
            )
        except ValueError as error:  # another model's index, or dense captions on one side only
            raise UsageError(f"--append: {error}") from None
        print(f"{args.output_dir}: {manifest['num_images'] - len(manifest['deleted_rows'])} images")
        return manifest
    manifest = build_index(
        model,
        processor,
        source,
        Path(args.output_dir),
        args.shard_size,
        args.batch_size,
        STORAGE_DTYPES[args.dtype],
        args.first_stage,
        accelerator,
        progress=accelerator.is_local_main_process,
        overwrite=args.overwrite_output_dir,
    )
    accelerator.print(
        f"{args.output_dir}: {manifest['num_images']} images in {len(manifest['shards'])} shard(s), "
        f"{manifest['dtype']} tokens, {manifest['first_stage']} first stage, dense captions "
        f"{'on' if manifest['dense_length'] is not None else 'off'}"
    )
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return manifest
