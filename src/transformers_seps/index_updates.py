"""Growing and shrinking a gallery index in place (`SepsRetriever.add_images` / `remove_images` / `compact` on a
loaded index; `transformers_seps.index` describes the folder).

Every update writes new files only (shards and a FAISS first stage named for the update's generation, so that no
file the current manifest names is touched), then the manifest, atomically: the update takes effect at that last
rename. A process killed before it leaves the index as it was (with files no manifest names, which the next update
deletes); killed after it, the index is the updated one. Files the new manifest no longer names are deleted last.
One process updates an index at a time (nothing locks it against a second writer).

- Adding images appends one shard and a first stage holding the old vectors and the new ones.
- Removing images marks their rows deleted in the manifest: searches skip them at once; their tokens stay on disk.
- Compacting rewrites the shards that hold deleted rows without them, renumbers the rows, and rebuilds the first
  stage.
"""

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .index import (
    STORAGE_DTYPES,
    first_stage_index,
    first_stage_name,
    import_faiss,
    is_index_file,
    memory_map,
    read_manifest,
    read_shard_header,
    save_shard,
    shard_name,
    write_first_stage,
    write_manifest,
    write_shard,
)
from .modeling_seps import SepsModel
from .qdrant_first_stage import new_qdrant_collection, qdrant_client_of, write_qdrant_points


def _delete_unlisted_files(directory: Path, manifest: dict) -> None:
    """Delete the index files of `directory` that `manifest` does not name: what a killed update left, or what the
    update that wrote `manifest` replaced."""
    listed = {entry["file"] for entry in manifest["shards"]} | {manifest["first_stage_file"]}
    for path in directory.iterdir():
        is_data = path.name.startswith(("shard-", "first_stage", ".tmp-"))
        if path.is_file() and is_data and is_index_file(path.name) and path.name not in listed:
            path.unlink()


def _open(directory: str | Path, model: SepsModel) -> tuple[Path, dict]:
    """The index folder and its manifest, for an update by `model` (`ValueError` if it encoded another index), with
    what a killed update left behind deleted."""
    directory = Path(directory)
    manifest = read_manifest(directory, model)
    _delete_unlisted_files(directory, manifest)
    return directory, manifest


def _shard_image_ids(directory: Path, manifest: dict) -> list:
    """The image ids of every row, in row order."""
    ids = []
    for entry in manifest["shards"]:
        header, _ = read_shard_header(directory / entry["file"])
        ids.extend(json.loads(header["__metadata__"]["image_ids"]))
    return ids


def _commit(directory: Path, manifest: dict) -> dict:
    """Write the updated manifest (the update takes effect), then delete the files it no longer names."""
    write_manifest(directory, manifest)
    _delete_unlisted_files(directory, manifest)
    return manifest


def append_images(
    directory: str | Path,
    model: SepsModel,
    image_ids: Sequence[Any],
    image_embeds: torch.Tensor,
    global_embeds: torch.Tensor,
    dense_embeds: torch.Tensor | None = None,
    dense_attention_mask: torch.Tensor | None = None,
) -> dict:
    """Append encoded images to the index in `directory` as one shard, stored as the index stores its tokens, and
    return the new manifest. Shapes as `transformers_seps.index.write_shard` takes them.

    `ValueError` for an id the index already holds (removed ones excepted), or for images with dense captions added
    to an index without them (and the reverse)."""
    directory, manifest = _open(directory, model)
    if (dense_embeds is not None) != (manifest["dense_length"] is not None):
        having = "has" if manifest["dense_length"] is not None else "has no"
        raise ValueError(f"the index {having} dense captions: add images with dense captions for all or for none")
    deleted = set(manifest["deleted_rows"])
    held = {image_id for row, image_id in enumerate(_shard_image_ids(directory, manifest)) if row not in deleted}
    taken = [image_id for image_id in image_ids if image_id in held]
    if taken or len(set(image_ids)) != len(image_ids):
        what = f"already in the index: {taken[:5]!r}" if taken else "given twice"
        raise ValueError(f"image ids must be unique in an index; some are {what}")
    generation = manifest["generation"] + 1
    first_row, count = manifest["num_images"], len(image_ids)
    signature = manifest["model"]  # the model's: `read_manifest` checked its fingerprint
    path = write_shard(
        directory,
        first_row,
        list(image_ids),
        image_embeds,
        global_embeds,
        dense_embeds,
        dense_attention_mask,
        STORAGE_DTYPES[manifest["dtype"]],
        signature,
        generation,
    )
    first_stage_file = manifest["first_stage_file"]
    if manifest["first_stage"] == "qdrant":
        qdrant = qdrant_client_of(directory, manifest["qdrant_url"])
        write_qdrant_points(qdrant, manifest["qdrant_collection"], global_embeds.float().numpy(), first_row)
    else:
        first_stage = import_faiss().read_index(str(directory / first_stage_file))
        first_stage.add(np.ascontiguousarray(global_embeds.float().reshape(-1, manifest["global_dim"]).numpy()))
        first_stage_file = first_stage_name(generation)
        write_first_stage(directory, first_stage, first_stage_file)
    dense_length = manifest["dense_length"]
    if dense_embeds is not None:
        dense_length = max(dense_length, dense_embeds.shape[1])
    updated = {
        **manifest,
        "num_images": first_row + count,
        "dense_length": dense_length,
        "first_stage_file": first_stage_file,
        "shards": [*manifest["shards"], {"file": path.name, "first_row": first_row, "num_images": count}],
        "generation": generation,
    }
    return _commit(directory, updated)


def remove_images(directory: str | Path, model: SepsModel, image_ids: Sequence[Any]) -> dict:
    """Mark the rows of `image_ids` deleted in the index's manifest (searches skip them; `compact_index` drops
    them from the shards) and return the new manifest. `KeyError` naming ids the index does not hold."""
    directory, manifest = _open(directory, model)
    deleted = set(manifest["deleted_rows"])
    ids = _shard_image_ids(directory, manifest)
    wanted = set(image_ids)
    rows = {row for row, image_id in enumerate(ids) if image_id in wanted and row not in deleted}
    found = {ids[row] for row in rows}
    missing = [image_id for image_id in image_ids if image_id not in found]
    if missing:
        more = " and more" if len(missing) > 5 else ""
        raise KeyError(f"not in the index (or already removed): {missing[:5]!r}{more}")
    updated = {**manifest, "deleted_rows": sorted(deleted | rows), "generation": manifest["generation"] + 1}
    return _commit(directory, updated)


def compact_index(directory: str | Path, model: SepsModel) -> dict:
    """Rewrite the shards that hold deleted rows without them (their stored tensors copied as they are, rows
    renumbered, shards of no image dropped), rebuild the first stage, and return the new manifest. An index
    without deleted rows is left as it is."""
    directory, manifest = _open(directory, model)
    deleted = np.zeros(manifest["num_images"], dtype=bool)
    deleted[manifest["deleted_rows"]] = True
    if not deleted.any():
        return manifest
    generation = manifest["generation"] + 1
    signature = manifest["model"]  # the model's: `read_manifest` checked its fingerprint
    shards, global_parts, next_row = [], [], 0
    for entry in manifest["shards"]:
        path = directory / entry["file"]
        header, offset = read_shard_header(path)
        keep = ~deleted[entry["first_row"] : entry["first_row"] + entry["num_images"]]
        count = int(keep.sum())
        global_parts.append(np.array(memory_map(path, header, offset, "global_embeds"))[keep])
        if count == entry["num_images"]:
            shards.append({**entry, "first_row": next_row})
        elif count:
            tensors = {
                name: torch.from_numpy(np.array(memory_map(path, header, offset, name)[keep]))
                for name in header
                if name != "__metadata__"
            }
            ids = json.loads(header["__metadata__"]["image_ids"])
            kept_ids = [image_id for image_id, kept in zip(ids, keep, strict=True) if kept]
            name = shard_name(next_row, count, generation)
            save_shard(directory, name, tensors, kept_ids, signature)
            shards.append({"file": name, "first_row": next_row, "num_images": count})
        next_row += count
    global_embeds = np.concatenate(global_parts)
    first_stage = {"first_stage_file": None, "qdrant_collection": None}
    if manifest["first_stage"] == "qdrant":  # a new collection, the old one dropped once the manifest is written
        qdrant = qdrant_client_of(directory, manifest["qdrant_url"])
        collection = new_qdrant_collection(qdrant, manifest["model_fingerprint"], manifest["global_dim"])
        write_qdrant_points(qdrant, collection, global_embeds, 0)
        first_stage["qdrant_collection"] = collection
    else:
        first_stage["first_stage_file"] = first_stage_name(generation)
        index = first_stage_index(global_embeds, manifest["first_stage"])
        write_first_stage(directory, index, first_stage["first_stage_file"])
    updated = {
        **manifest,
        **first_stage,
        "num_images": next_row,
        "shards": shards,
        "generation": generation,
        "deleted_rows": [],
    }
    _commit(directory, updated)
    if manifest["first_stage"] == "qdrant":
        qdrant.delete_collection(manifest["qdrant_collection"])
    return updated
