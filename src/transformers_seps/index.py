"""A gallery index on disk: encode a collection once, search it later from another process.

Layout of an index folder (`SepsRetriever.save`, `examples/build_index.py`):

- `shard-<first row>-<end row>.safetensors`: per image, the SEPS tokens (`image_embeds`, (n, L_v, C), float16
  by default; stored in int8, codes with a float16 scale per token in `image_embeds_scale`, (n, L_v, 1):
  `quantize_tokens`), the global embedding of the first stage (`global_embeds`, (n, V, D), float32: V vectors per
  image, `SepsConfig.num_global_image_vectors`), and with dense captions `dense_embeds` (n, L_d, C) (and
  `dense_embeds_scale`) and `dense_attention_mask` (n, L_d); the image ids in the file's metadata. Each shard is
  written under a temporary name and renamed, so a shard file is always complete.
- `first_stage.faiss`: the global embeddings in a FAISS index (exact inner product, or HNSW as an option), one row
  per vector: row image * V + k holds vector k of the image (`first_stage-g<n>.faiss` after an update,
  `transformers_seps.index_updates`). Or, with a Qdrant first stage (`transformers_seps.qdrant_first_stage`), a
  collection in `first_stage.qdrant/` or on a Qdrant server.
- `processor/`: the processor that tokenises queries.
- `manifest.json`, written last: what the index holds, and what it depends on in the model that encoded it
  (`model_signature`: the config fields that shape vectors and scores, `SCORING_FIELDS`, and a hash of the
  weights). A folder without it (an interrupted build) is never loaded.

An index is searched only with a model of the same signature, wherever that model was loaded from: the model's
name or path, its dtype field and the fields of training only are not part of it.

Searching reads the SEPS tokens through memory maps, so only the shortlisted images are read from disk (and,
stored in int8, decoded).
"""

import hashlib
import json
import os
import re
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import PreTrainedConfig

from .configuration_seps import SCORING_FIELDS
from .modeling_seps import SepsModel
from .qdrant_first_stage import (
    import_qdrant,
    is_qdrant,
    new_qdrant_collection,
    qdrant_client_of,
    qdrant_point_count,
    qdrant_server_url,
    search_qdrant,
    write_qdrant_points,
)

if TYPE_CHECKING:
    import faiss

MANIFEST_FILE = "manifest.json"
FIRST_STAGE_FILE = "first_stage.faiss"
PROCESSOR_FOLDER = "processor"
INDEX_FORMAT = "transformers-seps-gallery-index"
INDEX_VERSION = 3  # 3: the model's signature in the manifest; 2: V global vectors per image (1 held one)
# The first stage: FAISS, exact or HNSW (a file of the index), or Qdrant ("qdrant": embedded in the index folder;
# "qdrant:<url>": on a server, `transformers_seps.qdrant_first_stage`).
FIRST_STAGE_KINDS = ("exact", "hnsw", "qdrant", "qdrant:<url>")
# Storage of the SEPS tokens and dense captions: float16 or float32 as they are; int8 as codes and a scale per
# token (`quantize_tokens`), a quarter of float32's disk. NumPy memory-maps all three (bfloat16 it cannot).
STORAGE_DTYPES = {"float16": torch.float16, "float32": torch.float32, "int8": torch.int8}
_SAFETENSORS_NUMPY_DTYPES = {"F16": np.float16, "F32": np.float32, "U8": np.uint8, "I8": np.int8}
_SAFETENSORS_STORAGE_NAMES = {"F16": "float16", "F32": "float32", "I8": "int8"}
# Suffix of the tensor holding the per-token scales of an int8 tensor of a shard.
SCALE_SUFFIX = "_scale"
_BUILD_SHARD = re.compile(r"shard-(\d+)-(\d+)\.safetensors")
# HNSW: neighbours per node, and the search breadth (at least the shortlist size).
HNSW_NEIGHBORS = 32
HNSW_MIN_SEARCH_BREADTH = 128


def check_first_stage(kind: str) -> None:
    """`ValueError` naming the allowed first stages for any other `kind`."""
    if kind not in ("exact", "hnsw") and not is_qdrant(kind):
        raise ValueError(f"first_stage must be one of {', '.join(FIRST_STAGE_KINDS)}, got {kind!r}")


def import_first_stage_library(kind: str) -> None:
    """Import what the first stage `kind` needs (FAISS or qdrant-client); `ImportError` naming the extra."""
    if is_qdrant(kind):
        import_qdrant()
    else:
        import_faiss()


def import_faiss() -> "faiss":
    try:
        import faiss
    except ImportError as error:
        raise ImportError(
            "a gallery index on disk needs FAISS: pip install 'transformers-seps[index]' (faiss-cpu)"
        ) from error
    return faiss


# Fields of a backbone's config that change neither its outputs nor its weights: Transformers' generic ones (names,
# dtype, output flags, labels, versions) and those of training only.
_GENERIC_BACKBONE_FIELDS = frozenset(PreTrainedConfig().to_dict()) - {"model_type"}
_TRAINING_ONLY_BACKBONE_MARKERS = ("dropout", "drop_path", "initializer")
# Differences listed by name in the error for an index of another model.
_MAX_LISTED_DIFFERENCES = 6


def _backbone_fields(config: PreTrainedConfig) -> dict[str, Any]:
    fields = config.to_dict()
    return {
        key: value
        for key, value in fields.items()
        if key not in _GENERIC_BACKBONE_FIELDS and not any(marker in key for marker in _TRAINING_ONLY_BACKBONE_MARKERS)
    }


def weights_sha256(model: SepsModel) -> str:
    """SHA-256 of every tensor of the model's state dict (backbones included), by name, shape and float32 value."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        values = tensor.detach().float().cpu().contiguous()
        digest.update(f"{name}{tuple(values.shape)}".encode())
        digest.update(values.numpy().data)
    return digest.hexdigest()


def model_signature(model: SepsModel) -> dict[str, Any]:
    """What an index depends on in the model that encodes or searches it: the `SCORING_FIELDS` of its config (a
    backbone's config without its generic and training-only fields) and a hash of all its weights. Where the model
    was loaded from, its dtype field, `logit_scale` and the loss settings are not part of it."""
    config = {}
    for name in SCORING_FIELDS:
        value = getattr(model.config, name)
        config[name] = _backbone_fields(value) if isinstance(value, PreTrainedConfig) else value
    # As the manifest stores it (JSON: tuples become lists), so that a signature read back compares equal.
    return json.loads(json.dumps({"config": config, "weights_sha256": weights_sha256(model)}, sort_keys=True))


def signature_fingerprint(signature: dict[str, Any]) -> str:
    """SHA-256 of a `model_signature`: what shards record, to tell the model that wrote them."""
    return hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()


def _flatten(fields: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in fields.items():
        if isinstance(value, dict) and key.endswith("_config"):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def signature_difference(stored: dict[str, Any], current: dict[str, Any]) -> str:
    """What differs between the signature an index was encoded with and a model's: the config fields (with both
    values), or else "the weights differ"."""
    stored_fields, current_fields = _flatten(stored["config"]), _flatten(current["config"])
    missing = "(not set)"
    differing = [
        f"{key} {stored_fields.get(key, missing)!r} in the index, {current_fields.get(key, missing)!r} in the model"
        for key in sorted(set(stored_fields) | set(current_fields))
        if stored_fields.get(key, missing) != current_fields.get(key, missing)
    ]
    if differing:
        more = len(differing) - _MAX_LISTED_DIFFERENCES
        listed = "; ".join(differing[:_MAX_LISTED_DIFFERENCES]) + (f"; and {more} more" if more > 0 else "")
        return f"config fields differ: {listed}"
    return "the weights differ (the config fields that shape vectors and scores are the same)"


def check_storage_dtype(dtype: torch.dtype) -> str:
    """The name of a storage dtype; `ValueError` naming the allowed ones for any other."""
    for name, allowed in STORAGE_DTYPES.items():
        if dtype == allowed:
            return name
    raise ValueError(f"dtype must be one of torch.{', torch.'.join(STORAGE_DTYPES)}, got {dtype!r}")


def quantize_tokens(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 scalar quantisation of each token (the last dimension), as LLM.int8's vector-wise one:
    (..., C) tokens -> (..., C) int8 codes and (..., 1) float16 scales, a token being codes * scale
    (`dequantize_tokens`); the scale is the token's largest absolute value / 127, so each value is within half a
    step (scale / 2) of the original. No training: each shard is coded on its own."""
    tokens = tokens.float()
    scales = (tokens.abs().amax(dim=-1, keepdim=True) / 127).half()
    # Divide by the scale as stored, so that decoding (in float32) is within half a step; 0 for an all-zero token.
    steps = scales.float()
    codes = torch.where(steps > 0, tokens / steps.clamp_min(torch.finfo(torch.float32).tiny), 0.0)
    return codes.round().clamp(-127, 127).to(torch.int8), scales


def dequantize_tokens(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The float32 tokens of `quantize_tokens`' (..., C) codes and (..., 1) scales."""
    return codes.astype(np.float32) * scales.astype(np.float32)


def _stored_tensors(name: str, tokens: torch.Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The tensors of a shard that store `tokens` as `name` in the storage `dtype` (`STORAGE_DTYPES`)."""
    if dtype == torch.int8:
        codes, scales = quantize_tokens(tokens)
        return {name: codes.contiguous(), name + SCALE_SUFFIX: scales.contiguous()}
    return {name: tokens.to(dtype).contiguous()}


def shard_name(first_row: int, num_rows: int, generation: int = 0) -> str:
    """A shard's file name: its rows, and the update that wrote it (`transformers_seps.index_updates`; 0: the
    build), so that an update never writes over a file the manifest names."""
    suffix = f"-g{generation}" if generation else ""
    return f"shard-{first_row:09d}-{first_row + num_rows:09d}{suffix}.safetensors"


def first_stage_name(generation: int = 0) -> str:
    """The FAISS file of the first stage written by the build (0) or by an update."""
    return FIRST_STAGE_FILE if generation == 0 else f"first_stage-g{generation}.faiss"


def write_shard(
    directory: Path,
    first_row: int,
    image_ids: Sequence[Any],
    image_embeds: torch.Tensor,
    global_embeds: torch.Tensor,
    dense_embeds: torch.Tensor | None,
    dense_attention_mask: torch.Tensor | None,
    dtype: torch.dtype,
    signature: dict[str, Any],
    generation: int = 0,
) -> Path:
    """Write the gallery rows [first_row, first_row + n) as one shard, atomically (temporary name, then rename),
    with the fingerprint of the `model_signature` of the model that encoded them (`shard_name` for
    `generation`)."""
    check_storage_dtype(dtype)
    tensors = {
        **_stored_tensors("image_embeds", image_embeds, dtype),
        "global_embeds": global_embeds.float().contiguous(),
    }
    if dense_embeds is not None:
        tensors.update(_stored_tensors("dense_embeds", dense_embeds, dtype))
        tensors["dense_attention_mask"] = dense_attention_mask.to(torch.uint8).contiguous()
    return save_shard(directory, shard_name(first_row, len(image_ids), generation), tensors, image_ids, signature)


def save_shard(
    directory: Path, name: str, tensors: dict[str, torch.Tensor], image_ids: Sequence[Any], signature: dict[str, Any]
) -> Path:
    """Save a shard's tensors as `name`, atomically (temporary name, then rename), with its image ids and the
    fingerprint of the `model_signature` of the model that encoded them."""
    metadata = {"image_ids": json.dumps(list(image_ids)), "model_fingerprint": signature_fingerprint(signature)}
    path = Path(directory) / name
    temporary = path.with_name(f".tmp-{path.name}")
    save_file(tensors, str(temporary), metadata=metadata)
    os.replace(temporary, path)
    return path


def read_shard_header(path: Path) -> tuple[dict, int]:
    """The safetensors header of a shard and the offset of its data; `ValueError` naming a damaged file."""
    try:
        with open(path, "rb") as file:
            (header_size,) = struct.unpack("<Q", file.read(8))
            header = json.loads(file.read(header_size))
    except (OSError, struct.error, ValueError) as error:
        raise ValueError(f"{path}: not a readable shard ({error})") from error
    data_offset = 8 + header_size
    data_end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    if path.stat().st_size < data_offset + data_end:
        raise ValueError(f"{path}: truncated ({path.stat().st_size} bytes, its header needs {data_offset + data_end})")
    return header, data_offset


def memory_map(path: Path, header: dict, data_offset: int, name: str) -> np.ndarray | None:
    """A read-only memory map of tensor `name` of a shard (None if the shard has no such tensor)."""
    entry = header.get(name)
    if entry is None:
        return None
    begin = entry["data_offsets"][0]
    dtype = _SAFETENSORS_NUMPY_DTYPES[entry["dtype"]]
    return np.memmap(path, dtype=dtype, mode="r", offset=data_offset + begin, shape=tuple(entry["shape"]))


def _shard_files(directory: Path) -> list[tuple[int, int, Path]]:
    """(first row, end row, path) of the finished shards a build wrote in a folder, in row order."""
    shards = []
    for path in directory.glob("shard-*-*.safetensors"):
        match = _BUILD_SHARD.fullmatch(path.name)
        if match:
            shards.append((int(match[1]), int(match[2]), path))
    return sorted(shards)


def is_index_file(name: str) -> bool:
    """Whether `name`, in an index folder, is a file an index (or its interrupted build) writes."""
    shard = name.startswith("shard-") and name.endswith(".safetensors")
    first_stage = name.startswith("first_stage") and name.endswith((".faiss", ".qdrant"))
    return shard or first_stage or name in (MANIFEST_FILE, PROCESSOR_FOLDER) or name.startswith(".tmp-")


def finished_shards(directory: Path) -> set[str]:
    """Names of the shards a folder already holds (a resumed build skips them)."""
    return {path.name for _, _, path in _shard_files(Path(directory))}


def finalize_index(directory: Path, signature: dict[str, Any], first_stage: str = "exact") -> dict:
    """Check that the shards of `directory` cover rows 0..N-1 once each and come from the model of `signature`
    (`model_signature`), put their global embeddings in a FAISS index, and write the manifest (last)."""
    check_first_stage(first_stage)
    directory = Path(directory)
    qdrant = is_qdrant(first_stage)
    import_first_stage_library(first_stage)  # before any file is read
    fingerprint = signature_fingerprint(signature)
    shards = _shard_files(directory)
    if not shards:
        raise ValueError(f"{directory} holds no shard")
    expected_first, entries, global_parts, dense_length = 0, [], [], None
    layout = None
    for first, end, path in shards:
        if first != expected_first:
            raise ValueError(f"{directory}: shards do not cover the gallery: rows from {expected_first} missing")
        header, offset = read_shard_header(path)
        metadata = header.get("__metadata__", {})
        if metadata.get("model_fingerprint") != fingerprint:
            raise ValueError(f"{path} was encoded by another model (its fingerprint differs from the model's)")
        shape = header["image_embeds"]["shape"]
        global_shape = header["global_embeds"]["shape"]
        shard_layout = (tuple(shape[1:]), header["image_embeds"]["dtype"], "dense_embeds" in header, global_shape[1])
        if layout is not None and shard_layout != layout:
            raise ValueError(f"{path}: tokens {shard_layout} differ from the first shard's {layout}")
        layout = shard_layout
        if shape[0] != end - first:
            raise ValueError(f"{path} holds {shape[0]} images, its name says {end - first}")
        global_parts.append(np.array(memory_map(path, header, offset, "global_embeds")))
        if "dense_embeds" in header:
            dense_length = max(dense_length or 0, header["dense_embeds"]["shape"][1])
        entries.append({"file": path.name, "first_row": first, "num_images": end - first})
        expected_first = end
    global_embeds = np.concatenate(global_parts)  # (N, V, D)
    num_vectors, global_dim = global_embeds.shape[1:]
    url = collection = first_stage_file = None
    if qdrant:
        url = qdrant_server_url(first_stage)
        client = qdrant_client_of(directory, url)
        collection = new_qdrant_collection(client, fingerprint, global_dim)
        write_qdrant_points(client, collection, global_embeds, 0)
    else:
        first_stage_file = FIRST_STAGE_FILE
        write_first_stage(directory, first_stage_index(global_embeds, first_stage), first_stage_file)
    (image_tokens, embed_dim), dtype_code, _, _ = layout
    manifest = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "num_images": expected_first,
        "image_tokens": image_tokens,
        "embed_dim": embed_dim,
        "dtype": _SAFETENSORS_STORAGE_NAMES[dtype_code],
        "global_dim": int(global_dim),
        "global_vectors": int(num_vectors),
        "dense_length": dense_length,
        "first_stage": "qdrant" if qdrant else first_stage,
        "first_stage_file": first_stage_file,
        "qdrant_url": url,
        "qdrant_collection": collection,
        "model_fingerprint": fingerprint,
        "model": signature,
        "shards": entries,
        "generation": 0,
        "deleted_rows": [],
    }
    write_manifest(directory, manifest)
    return manifest


def first_stage_index(global_embeds: np.ndarray, kind: str) -> "faiss.Index":
    """A FAISS index of `kind` (`FIRST_STAGE_KINDS`) over (N, V, D) global embeddings: row image * V + k holds
    vector k of the image."""
    faiss = import_faiss()
    global_dim = global_embeds.shape[-1]
    if kind == "exact":
        index = faiss.IndexFlatIP(global_dim)
    else:
        index = faiss.IndexHNSWFlat(global_dim, HNSW_NEIGHBORS, faiss.METRIC_INNER_PRODUCT)
    index.add(np.ascontiguousarray(global_embeds.reshape(-1, global_dim), dtype=np.float32))
    return index


def write_first_stage(directory: Path, index: "faiss.Index", name: str) -> None:
    """Write the FAISS first stage as `name`, atomically."""
    temporary = directory / f".tmp-{name}"
    import_faiss().write_index(index, str(temporary))
    os.replace(temporary, directory / name)


def write_manifest(directory: Path, manifest: dict) -> None:
    """Write the manifest atomically: the last step of a build or an update, which makes it the index."""
    temporary = directory / f".tmp-{MANIFEST_FILE}"
    temporary.write_text(json.dumps(manifest, indent=1))
    os.replace(temporary, directory / MANIFEST_FILE)


def check_manifest_version(manifest: dict, path: Path) -> None:
    """`ValueError` for a manifest of another format, or of another version of this one (an index built by an
    earlier release is built again, not read)."""
    version = manifest.get("version")
    if manifest.get("format") != INDEX_FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r}, not a {INDEX_FORMAT!r}")
    if version != INDEX_VERSION:
        when = "an earlier" if isinstance(version, int) and version < INDEX_VERSION else "another"
        raise ValueError(
            f"{path}: index version {version!r}, written by {when} release of transformers-seps; this code reads "
            f"version {INDEX_VERSION}: build the index again (SepsRetriever.save or examples/build_index.py)"
        )


def read_manifest(directory: Path, model: SepsModel) -> dict:
    """The manifest of a finished index folder encoded by `model`; `ValueError` naming what is wrong otherwise.
    Fields that updates added (`transformers_seps.index_updates`) get their values for an index never updated."""
    manifest_path = directory / MANIFEST_FILE
    if not directory.is_dir():
        raise FileNotFoundError(f"no such index folder: {directory}")
    if not manifest_path.is_file():
        raise ValueError(
            f"{directory} has no {MANIFEST_FILE}: not a finished index (an interrupted build? run it again)"
        )
    manifest = json.loads(manifest_path.read_text())
    check_manifest_version(manifest, manifest_path)
    signature = model_signature(model)
    if manifest["model_fingerprint"] != signature_fingerprint(signature):
        raise ValueError(
            f"{directory} was encoded by another model: {signature_difference(manifest['model'], signature)}"
        )
    return {"first_stage_file": FIRST_STAGE_FILE, "generation": 0, "deleted_rows": [], "qdrant_url": None, **manifest}


class StoredGallery:
    """A finished index folder, opened for search: memory maps of the shards and the FAISS first stage.

    Rows are the images in the order they were added; rows removed (`deleted_rows` of the manifest, until
    `transformers_seps.index_updates.compact_index` drops them) are never returned."""

    def __init__(self, directory: str | os.PathLike, model: SepsModel):
        directory = Path(directory)
        manifest = read_manifest(directory, model)
        self.directory = directory
        self.manifest = manifest
        # The FAISS index, or the Qdrant client (`transformers_seps.qdrant_first_stage`).
        self.first_stage = self.qdrant = None
        if manifest["first_stage"] == "qdrant":
            self.qdrant = qdrant_client_of(directory, manifest["qdrant_url"])
            held = qdrant_point_count(self.qdrant, manifest["qdrant_collection"])
            if held < manifest["num_images"]:
                raise ValueError(
                    f"the Qdrant collection {manifest['qdrant_collection']} holds {held} images, fewer than the "
                    f"manifest's {manifest['num_images']}"
                )
        else:
            first_stage_path = directory / manifest["first_stage_file"]
            self.first_stage = import_faiss().read_index(str(first_stage_path))
            if self.first_stage.ntotal != manifest["num_images"] * manifest["global_vectors"]:
                raise ValueError(
                    f"{first_stage_path} holds {self.first_stage.ntotal} vectors, the manifest "
                    f"{manifest['num_images']} images of {manifest['global_vectors']}"
                )
        self.deleted = np.zeros(manifest["num_images"], dtype=bool)
        self.deleted[manifest["deleted_rows"]] = True
        self.image_ids: list = []
        # Per shard: a memory map of each stored tensor (None where the shard has none).
        self._shards: list[dict[str, np.ndarray | None]] = []
        for entry in manifest["shards"]:
            path = directory / entry["file"]
            if not path.is_file():
                raise ValueError(f"{path}, listed in the manifest, is missing")
            header, offset = read_shard_header(path)
            if header["image_embeds"]["shape"][0] != entry["num_images"]:
                raise ValueError(f"{path} does not hold the {entry['num_images']} images the manifest lists")
            self.image_ids.extend(json.loads(header["__metadata__"]["image_ids"]))
            names = ("image_embeds", "dense_embeds", "dense_attention_mask")
            names += tuple(name + SCALE_SUFFIX for name in names[:2])
            self._shards.append({name: memory_map(path, header, offset, name) for name in names})
        self._starts = np.array([entry["first_row"] for entry in manifest["shards"]])

    def __len__(self) -> int:
        """The images a search can return (removed ones excluded)."""
        return self.manifest["num_images"] - len(self.manifest["deleted_rows"])

    def live_rows(self) -> torch.Tensor:
        """The rows of the images a search can return, in order."""
        return torch.from_numpy(np.flatnonzero(~self.deleted))

    @property
    def has_dense_captions(self) -> bool:
        return self.manifest["dense_length"] is not None

    def rows(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """SEPS tokens (and dense captions, padded to the gallery's longest) of the gallery rows `rows`, read from
        the memory maps (int8 tokens decoded to float32): (n, L_v, C), (n, L_d, C), (n, L_d)."""
        rows = rows.cpu().numpy()
        shard_of_row = np.searchsorted(self._starts, rows, side="right") - 1
        token_dtype = np.float32 if self.manifest["dtype"] == "int8" else self._shards[0]["image_embeds"].dtype
        images = np.empty((len(rows), self.manifest["image_tokens"], self.manifest["embed_dim"]), dtype=token_dtype)
        dense = mask = None
        if self.has_dense_captions:
            length = self.manifest["dense_length"]
            dense = np.zeros((len(rows), length, self.manifest["embed_dim"]), dtype=token_dtype)
            mask = np.zeros((len(rows), length), dtype=np.int64)
        for shard in np.unique(shard_of_row):
            selected = np.flatnonzero(shard_of_row == shard)
            local = rows[selected] - self._starts[shard]
            tensors = self._shards[shard]
            images[selected] = self._tokens(tensors, "image_embeds", local)
            if dense is not None:
                shard_length = tensors["dense_embeds"].shape[1]
                dense[selected, :shard_length] = self._tokens(tensors, "dense_embeds", local)
                mask[selected, :shard_length] = tensors["dense_attention_mask"][local]
        as_tensor = torch.from_numpy
        return as_tensor(images), None if dense is None else as_tensor(dense), None if mask is None else as_tensor(mask)

    @staticmethod
    def _tokens(tensors: dict[str, np.ndarray | None], name: str, local: np.ndarray) -> np.ndarray:
        """Rows `local` of a shard's tokens `name`, decoded if stored in int8."""
        scales = tensors[name + SCALE_SUFFIX]
        if scales is None:
            return tensors[name][local]
        return dequantize_tokens(tensors[name][local], scales[local])

    def shortlist(self, text_global: torch.Tensor, size: int) -> torch.Tensor:
        """(N_txt, size) gallery rows whose best global vector has the largest inner product with each (N_txt, D)
        caption embedding (`first_stage_scores`), best first.

        FAISS returns the best (size + R) * V vectors, R the removed images; the first `size` distinct images among
        them that are not removed are the shortlist. With the exact index that is the exact shortlist: the best
        vector of an image of the top `size` ranks below the vectors of at most size - 1 + R other images, that is
        at most (size - 1 + R) * V vectors. Qdrant returns the best size + R + S images (S: points no manifest
        lists, left by a killed update), scored by the best of their vectors."""
        manifest = self.manifest
        skipped = len(manifest["deleted_rows"])
        if self.qdrant is not None:
            # Counted at each search: on a server, another process may have added points since this one opened.
            held = qdrant_point_count(self.qdrant, manifest["qdrant_collection"])
            limit = min(size + skipped + held - manifest["num_images"], held)
            candidates = search_qdrant(self.qdrant, manifest["qdrant_collection"], text_global, limit)
        else:
            num_vectors = manifest["global_vectors"]
            breadth = min((size + skipped) * num_vectors, self.first_stage.ntotal)
            if manifest["first_stage"] == "hnsw":
                self.first_stage.hnsw.efSearch = max(breadth, HNSW_MIN_SEARCH_BREADTH)
            _, vector_rows = self.first_stage.search(text_global.detach().float().cpu().numpy(), breadth)
            candidates = [
                list(dict.fromkeys(int(row) // num_vectors for row in rows if row >= 0)) for rows in vector_rows
            ]
        shortlists = []
        for query, images in enumerate(candidates):
            images = [image for image in images if image < manifest["num_images"] and not self.deleted[image]][:size]
            if len(images) < size:  # only an approximate first stage can miss images
                raise RuntimeError(
                    f"the {manifest['first_stage']} first stage found {len(images)} images for query {query}, "
                    f"fewer than the shortlist's {size}"
                )
            shortlists.append(images)
        return torch.tensor(shortlists, dtype=torch.long)


__all__ = [
    "StoredGallery",
    "finalize_index",
    "model_signature",
    "signature_difference",
    "signature_fingerprint",
    "write_shard",
]
