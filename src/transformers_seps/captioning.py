"""Dense captions for SEPS: a multimodal-LLM captioner and a resumable jsonl cache.

SEPS pairs every image with a *dense caption*, a long description written by a multimodal LLM from the image alone
(the paper uses LLaVA-13B). This module writes them:

- [`SepsDenseCaptioner`] wraps any transformers image-text-to-text model (`AutoModelForImageTextToText` +
  `AutoProcessor`) and captions batches of images with the paper's prompt and sampling settings. With sampling, each
  image draws from its own random stream, seeded by the captioner's seed and the image's pixels, so a caption does not
  depend on the batch, the process or the run that produced it.
- [`write_dense_captions`] captions a list of image files into a jsonl file in the SEPS authors' format, one record
  per line, resumable after a crash or a kill, and split across processes under `accelerate launch` / `torchrun`.
- [`read_dense_captions`] reads such a file (and the authors' published files).
- [`load_dense_captioner`] and [`caption_for_processor`] run the captioner a `SepsProcessor` names (its
  `dense_caption_*` settings, checked by [`check_dense_caption_settings`]): `processor(images=...,
  generate_dense=True)` calls the latter. The paper's prompt and sampling settings, and that check, live in the
  torch-free `transformers_seps.caption_settings` (re-exported here).

Record format (one JSON object per line, in image order):

    {"image_id": "25", "text": "The image features ...", "model_id": "llava-hf/llava-1.5-13b-hf",
     "metadata": {"length": 569}}

`metadata.length` is the number of characters of `text`, as in the authors' files (which have no `image_id`: their
line order is the image order). An image that cannot be read gets an *error record*, with an `error` field and no
`text`: `{"image_id": "26", "error": "UnidentifiedImageError: ...", "model_id": ...}` (see [`is_error_record`]).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    LogitsProcessor,
    LogitsProcessorList,
    MinPLogitsWarper,
    PreTrainedModel,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from .caption_settings import DENSE_CAPTION_GENERATION_KWARGS, DENSE_CAPTION_PROMPT, check_dense_caption_settings
from .images import list_image_files, open_rgb_image

if TYPE_CHECKING:
    from accelerate import PartialState

__all__ = [
    "DENSE_CAPTION_GENERATION_KWARGS",
    "DENSE_CAPTION_PROMPT",
    "DenseCaptionSummary",
    "SepsDenseCaptioner",
    "caption_for_processor",
    "check_dense_caption_settings",
    "is_error_record",
    "list_images",
    "load_dense_captioner",
    "read_dense_captions",
    "write_dense_captions",
]

logger = logging.getLogger(__name__)

# Sampling settings that the per-image sampler applies itself (same order as `generate`: temperature first).
_SAMPLING_KEYS = ("temperature", "top_k", "top_p", "min_p")
# Sampling settings that the per-image sampler does not implement.
_UNSUPPORTED_WITH_SAMPLING = ("num_beams", "num_beam_groups", "typical_p", "epsilon_cutoff", "eta_cutoff", "top_h")
# `from_pretrained` keyword arguments that also apply to the model's processor.
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "trust_remote_code")
# What PIL raises on a missing, truncated, corrupt or oversized image file.
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


# ---------------------------------------------------------------------------------------------- seeded sampling


def _image_seed(image: Any, seed: int) -> int:
    """A 63-bit seed derived from `seed` and the pixels (values, shape and dtype) of `image`."""
    pixels = np.ascontiguousarray(np.asarray(image))
    header = f"{seed}:{pixels.dtype.str}:{pixels.shape}:".encode()
    digest = hashlib.sha256(header + pixels.tobytes()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class _PerImageSampler(LogitsProcessor):
    """
    Samples the next token of every row from that row's own random stream and forces it.

    `generate` draws all rows of a batch from one global generator, so a sampled caption would depend on its batch.
    This processor applies the sampling warpers (temperature, top-k, top-p, min-p), draws one uniform number per row
    from a `torch.Generator` seeded for that row, picks the token by inverse CDF, and returns logits that are `-inf`
    everywhere except at that token; `generate` runs greedy, so it keeps exactly the token drawn here.
    """

    def __init__(self, seeds: Sequence[int], warpers: LogitsProcessorList) -> None:
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.warpers = warpers

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        cdf = self.warpers(input_ids, scores).double().softmax(dim=-1).cumsum(dim=-1)
        draws = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in self.generators]).to(cdf.device)
        # Scaling by the total keeps the draw below the last step of the CDF despite rounding; `right=True` never
        # lands on a token of probability zero.
        tokens = torch.searchsorted(cdf, (draws * cdf[:, -1])[:, None], right=True)
        return torch.full_like(scores, float("-inf")).scatter_(-1, tokens, 0.0)


def _sampling_warpers(generation_kwargs: Mapping[str, Any]) -> LogitsProcessorList:
    """The warpers `generate` would build for these sampling settings (unset ones are not applied)."""
    temperature, top_k, top_p, min_p = (generation_kwargs.get(key) for key in _SAMPLING_KEYS)
    warpers = LogitsProcessorList()
    if temperature is not None and temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p is not None and top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    if min_p is not None:
        warpers.append(MinPLogitsWarper(min_p))
    return warpers


# --------------------------------------------------------------------------------------------------- captioner


class SepsDenseCaptioner:
    r"""
    Writes dense captions with a transformers image-text-to-text model (LLaVA, LLaVA-NeXT, Qwen2-VL, ...).

    The prompt goes through the processor's chat template as one user turn holding the image then the prompt text,
    followed by the generation prompt; a processor without a chat template gets LLaVA-1.5's format,
    `"USER: <image>\n{prompt} ASSISTANT:"` (with the processor's `image_token`). Batches are padded on the left for
    decoder-only models, and the answer is the decoded new tokens, stripped.

    With `do_sample=True` (the paper's setting), each image samples from its own random stream seeded by `seed` and a
    hash of its pixels: the same image gets the same caption whatever its batch, its position, the process or the
    run (on the same hardware and software). Sampling supports `temperature`, `top_k`, `top_p` and `min_p`, taken
    from `generation_kwargs` only (the model's `generation_config` sampling values are not used). Without sampling,
    `generation_kwargs` go to `generate` unchanged (greedy or beam search).

    Args:
        model ([`PreTrainedModel`]):
            An image-text-to-text model, e.g. from `AutoModelForImageTextToText.from_pretrained`.
        processor ([`~processing_utils.ProcessorMixin`]):
            Its processor, taking `images=` and `text=`.
        prompt (`str`, *optional*, defaults to `DENSE_CAPTION_PROMPT`):
            The instruction, the paper's "Provide a comprehensive description of this image" by default.
        generation_kwargs (`dict`, *optional*):
            Arguments of `generate`; `None` means `DENSE_CAPTION_GENERATION_KWARGS` (`do_sample=True`,
            `temperature=0.2`, `top_p=0.9`, `max_new_tokens=500`).
        batch_size (`int`, *optional*, defaults to 8):
            Images per `generate` call.
        seed (`int`, *optional*, defaults to 0):
            Seed of the per-image random streams.
        model_id (`str`, *optional*):
            Name written in the `model_id` field of records; defaults to the model's `name_or_path`.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        processor: Any,
        prompt: str = DENSE_CAPTION_PROMPT,
        generation_kwargs: Mapping[str, Any] | None = None,
        batch_size: int = 8,
        seed: int = 0,
        model_id: str | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")
        self.model = model
        self.processor = processor
        self.prompt = prompt
        self.generation_kwargs = dict(
            DENSE_CAPTION_GENERATION_KWARGS if generation_kwargs is None else generation_kwargs
        )
        self.batch_size = batch_size
        self.seed = seed
        self.model_id = model_id if model_id is not None else model.name_or_path
        self._check_generation_kwargs()

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str | os.PathLike,
        *,
        prompt: str = DENSE_CAPTION_PROMPT,
        generation_kwargs: Mapping[str, Any] | None = None,
        batch_size: int = 8,
        seed: int = 0,
        model_id: str | None = None,
        device: str | torch.device | None = None,
        **model_kwargs: Any,
    ) -> SepsDenseCaptioner:
        r"""
        Loads a model with `AutoModelForImageTextToText` and its processor with `AutoProcessor`.

        Args:
            model_name_or_path (`str` or `os.PathLike`):
                Hub id (e.g. `"llava-hf/llava-1.5-13b-hf"`, the paper's model family) or local folder.
            device (`str` or `torch.device`, *optional*):
                Where to move the model after loading; leave it `None` when passing `device_map`.
            prompt, generation_kwargs, batch_size, seed, model_id:
                See [`SepsDenseCaptioner`].
            model_kwargs:
                Passed to `AutoModelForImageTextToText.from_pretrained` (e.g. `dtype=torch.float16`,
                `device_map="auto"`); `cache_dir`, `force_download`, `local_files_only`, `token`, `revision` and
                `trust_remote_code` also go to `AutoProcessor.from_pretrained`.
        """
        processor_kwargs = {key: model_kwargs[key] for key in _HUB_KWARGS if key in model_kwargs}
        processor = AutoProcessor.from_pretrained(model_name_or_path, **processor_kwargs)
        model = AutoModelForImageTextToText.from_pretrained(model_name_or_path, **model_kwargs)
        if device is not None:
            model = model.to(device)
        return cls(
            model.eval(),
            processor,
            prompt=prompt,
            generation_kwargs=generation_kwargs,
            batch_size=batch_size,
            seed=seed,
            model_id=model_id,
        )

    @property
    def formatted_prompt(self) -> str:
        """`str`: the text given to the processor with each image (chat template, or LLaVA-1.5's format)."""
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError(f"`prompt` must be a non-empty string, got {self.prompt!r}.")
        if getattr(self.processor, "chat_template", None):
            conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt}]}]
            return self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        image_token = getattr(self.processor, "image_token", "<image>")
        return f"USER: {image_token}\n{self.prompt} ASSISTANT:"

    def __call__(self, images: Sequence[Any], show_progress: bool = False) -> list[str]:
        """
        Captions `images` (PIL images or arrays), `batch_size` at a time, and returns one caption per image, in order.

        Args:
            images (`Sequence`):
                The images; PIL images should be RGB.
            show_progress (`bool`, *optional*, defaults to `False`):
                Show a progress bar counting images.
        """
        captions: list[str] = []
        with tqdm(total=len(images), unit="image", desc="dense captions", disable=not show_progress) as bar:
            for batch in _batches(list(images), self.batch_size):
                captions.extend(self.caption_batch(batch))
                bar.update(len(batch))
        return captions

    @torch.inference_mode()
    def caption_batch(self, images: Sequence[Any]) -> list[str]:
        """Captions `images` with a single `generate` call; returns one caption per image, in order."""
        generation_kwargs = self._check_generation_kwargs()
        is_decoder_only = not self.model.config.is_encoder_decoder
        text_kwargs = {"padding": True, "padding_side": "left"} if is_decoder_only else {"padding": True}
        inputs = self.processor(
            images=list(images), text=[self.formatted_prompt] * len(images), return_tensors="pt", **text_kwargs
        )
        inputs = inputs.to(self.model.device, dtype=self.model.dtype)
        if generation_kwargs.pop("do_sample", False):
            seeds = [_image_seed(image, self.seed) for image in images]
            sampler = _PerImageSampler(seeds, _sampling_warpers(generation_kwargs))
            # `generate` runs greedy over the sampler's forced tokens (after the caller's own logits processors),
            # with the model's sampling defaults unset.
            processors = LogitsProcessorList([*generation_kwargs.get("logits_processor", []), sampler])
            generation_kwargs.update(dict.fromkeys(_SAMPLING_KEYS), do_sample=False, logits_processor=processors)
        output_ids = self.model.generate(**inputs, **generation_kwargs)
        new_ids = output_ids if not is_decoder_only else output_ids[:, inputs["input_ids"].shape[1] :]
        return [text.strip() for text in self.processor.batch_decode(new_ids, skip_special_tokens=True)]

    def _check_generation_kwargs(self) -> dict[str, Any]:
        """Validates `generation_kwargs` and returns a copy."""
        kwargs = dict(self.generation_kwargs)
        if kwargs.get("num_return_sequences", 1) != 1:
            raise ValueError("`num_return_sequences` must be 1: the captioner keeps one caption per image.")
        unsupported = [key for key in _UNSUPPORTED_WITH_SAMPLING if key in kwargs]
        if kwargs.get("do_sample") and unsupported:
            raise ValueError(
                f"With `do_sample=True` the captioner samples each image on its own and supports only "
                f"{', '.join(_SAMPLING_KEYS)}; remove {', '.join(unsupported)}."
            )
        return kwargs


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive slices of `items` of length `size` (the last one may be shorter)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ------------------------------------------------------------------------------------- a processor's captioner


# The captioner loaded for each processor, with the model it was loaded from; freed with the processor.
_PROCESSOR_CAPTIONERS: weakref.WeakKeyDictionary[Any, tuple[str, SepsDenseCaptioner]] = weakref.WeakKeyDictionary()


def load_dense_captioner(processor: Any, **kwargs: Any) -> SepsDenseCaptioner:
    r"""
    Loads the captioner a `SepsProcessor` names (`dense_caption_model`), with its prompt and generation arguments,
    and keeps it for that processor's `generate_dense=True` calls, as long as the processor lives and names that
    model. [`caption_for_processor`] calls it with no argument (so on the CPU) when nothing is loaded yet: call it
    first to choose where and how the model is loaded.

    Args:
        processor ([`SepsProcessor`]):
            The processor whose `dense_caption_*` settings name the captioner.
        kwargs:
            Passed to [`SepsDenseCaptioner.from_pretrained`], e.g. `device="cuda"`, `dtype=torch.float16`,
            `device_map="auto"`, `batch_size=16`, `seed=0`.

    Raises:
        ValueError: if the processor names no captioner model, or its `dense_caption_*` settings are invalid.
    """
    model, prompt, generation_kwargs = _processor_settings(processor)
    captioner = SepsDenseCaptioner.from_pretrained(model, prompt=prompt, generation_kwargs=generation_kwargs, **kwargs)
    _PROCESSOR_CAPTIONERS[processor] = (model, captioner)
    return captioner


def caption_for_processor(processor: Any, images: Sequence[Any]) -> list[str]:
    """
    Writes one dense caption per image (RGB PIL images or arrays) with the captioner `processor` names and its
    current prompt and generation arguments, loaded by [`load_dense_captioner`] on first use. This is what
    `processor(images=..., generate_dense=True)` and `processor.generate_dense_captions(images)` call.
    """
    model, prompt, generation_kwargs = _processor_settings(processor)
    loaded_model, captioner = _PROCESSOR_CAPTIONERS.get(processor, (None, None))
    if captioner is None or loaded_model != model:
        captioner = load_dense_captioner(processor)
    captioner.prompt, captioner.generation_kwargs = prompt, generation_kwargs
    return captioner(images)


def _processor_settings(processor: Any) -> tuple[str, str, dict[str, Any]]:
    """The checked `dense_caption_*` settings of `processor`, which must name a captioner model."""
    model, prompt, generation_kwargs = check_dense_caption_settings(
        processor.dense_caption_model, processor.dense_caption_prompt, processor.dense_caption_generation_kwargs
    )
    if model is None:
        raise ValueError(
            "This processor has no dense-caption model: set `processor.dense_caption_model` (e.g. "
            '"llava-hf/llava-1.5-13b-hf") to generate dense captions, or pass `dense_text`.'
        )
    return model, prompt, generation_kwargs


# ------------------------------------------------------------------------------------------------- jsonl records


def _caption_record(image_id: str, text: str, model_id: str) -> dict[str, Any]:
    return {"image_id": image_id, "text": text, "model_id": model_id, "metadata": {"length": len(text)}}


def _error_record(image_id: str, error: BaseException, model_id: str) -> dict[str, Any]:
    return {"image_id": image_id, "error": f"{type(error).__name__}: {error}", "model_id": model_id}


def is_error_record(record: Mapping[str, Any]) -> bool:
    """Whether a record of a dense-caption file stands for an image that could not be read (it has no `text`)."""
    return "error" in record


def _encode(record: Mapping[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


def read_dense_captions(path: str | os.PathLike) -> list[dict[str, Any]]:
    """
    Reads a dense-caption jsonl file: this module's files or the SEPS authors' published ones.

    A last line without its newline is the record a killed writer was in the middle of: it is skipped (and logged).
    Every other line must be a JSON object with a string `text` or, for an error record, a string `error`.

    Returns:
        `list[dict]`: the records, in file order.

    Raises:
        ValueError: on a malformed complete line, naming the file and line number.
    """
    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    if lines[-1]:
        logger.warning(
            "%s: ignoring an incomplete last line (%d bytes), left by an interrupted writer.", path, len(lines[-1])
        )
    records = []
    for number, line in enumerate(lines[:-1], start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not valid JSON ({error}).") from error
        valid = isinstance(record, dict) and isinstance(record.get("error" if "error" in record else "text"), str)
        if not valid:
            raise ValueError(f"{path}, line {number}: expected an object with a string `text` or `error`.")
        records.append(record)
    return records


def _drop_incomplete_last_line(path: Path) -> None:
    """Truncates `path` after its last newline, removing what an interrupted write left behind."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        logger.warning("%s: removing an incomplete last line (%d bytes).", path, len(data) - end)
        with open(path, "rb+") as file:
            file.truncate(end)
            os.fsync(file.fileno())


class _RecordAppender:
    """Appends records to a jsonl file, each with one `write` then `fsync`, so a kill loses at most the record being
    written, as an incomplete last line that the next run removes."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, record: Mapping[str, Any]) -> None:
        data = memoryview(_encode(record))
        while data:  # `os.write` may write less than asked (e.g. interrupted by a signal)
            data = data[os.write(self.fd, data) :]
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def _replace_file(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    """Writes `records` to `path` atomically: a reader (or a crash) sees the old file or the new one, never a mix."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as file:
        file.write(b"".join(_encode(record) for record in records))
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


# ------------------------------------------------------------------------------------------------ caption files


def list_images(
    image_root: str | os.PathLike,
    ids_file: str | os.PathLike | None = None,
    id_mapping: str | os.PathLike | Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """
    Lists the images to caption, in order, as `{image_id: path}`.

    Args:
        image_root (`str` or `os.PathLike`):
            Folder holding the images.
        ids_file (`str` or `os.PathLike`, *optional*):
            Text file with one image id per line, in the output order. Repeated ids count once (so the authors'
            `test_ids.txt`, one line per caption, works as is); blank lines are skipped. Without it, every file under
            `image_root` with an image extension known to PIL is listed, sorted by relative path; the other files
            are skipped, counted and named in a warning.
        id_mapping (`str`, `os.PathLike` or `Mapping`, *optional*):
            JSON file (or dict) mapping image id to a file name relative to `image_root`, like the authors'
            `id_mapping.json`. Without it, an image id is the path of the image relative to `image_root`.

    Raises:
        ValueError: if an id is missing from `id_mapping`, or if no image is found.
    """
    root = Path(image_root)
    if ids_file is None:
        files = list_image_files(root)
        if files.skipped:
            logger.warning(files.skipped_message())
        ids = [path.relative_to(root).as_posix() for path in files.images]
    else:
        lines = Path(ids_file).read_text(encoding="utf-8").splitlines()
        ids = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
    if isinstance(id_mapping, (str, os.PathLike)):
        id_mapping = json.loads(Path(id_mapping).read_text(encoding="utf-8"))
    if id_mapping is None:
        images = {image_id: root / image_id for image_id in ids}
    else:
        missing = [image_id for image_id in ids if image_id not in id_mapping]
        if missing:
            raise ValueError(f"{len(missing)} image id(s) are not in `id_mapping`, e.g. {missing[:5]}.")
        images = {image_id: root / id_mapping[image_id] for image_id in ids}
    if not images:
        raise ValueError(f"No image to caption: no id in {ids_file}." if ids_file else f"No image file under {root}.")
    return images


def _shard_path(output: Path, process_index: int, num_processes: int) -> Path:
    return output.with_name(f"{output.name}.shard-{process_index:05d}-of-{num_processes:05d}")


def _existing_shards(output: Path) -> list[Path]:
    return sorted(output.parent.glob(f"{output.name}.shard-*-of-*"))


def _merge_in_image_order(output: Path, image_ids: Sequence[str]) -> None:
    """Rewrites `output` with its records and the shard files' records, one per image id, in `image_ids` order
    (ids not in `image_ids` last, in file order), then deletes the shards. Does nothing if already in order."""
    shards = _existing_shards(output)
    current = read_dense_captions(output) if output.exists() else []
    unique: dict[str, dict[str, Any]] = {}
    for record in [*current, *(record for shard in shards for record in read_dense_captions(shard))]:
        unique.setdefault(record["image_id"], record)
    position = {image_id: index for index, image_id in enumerate(image_ids)}
    merged = sorted(unique.values(), key=lambda record: position.get(record["image_id"], len(position)))
    if merged != current or not output.exists():
        _replace_file(output, merged)
    for shard in shards:
        shard.unlink()


def _drop_error_records(path: Path, image_ids: set[str]) -> None:
    """Rewrites `path` without the error records of `image_ids`, so that those images are tried again."""
    records = read_dense_captions(path)
    kept = [record for record in records if not (is_error_record(record) and record.get("image_id") in image_ids)]
    if len(kept) < len(records):
        logger.info("%s: retrying %d image(s) that could not be read before.", path, len(records) - len(kept))
        _replace_file(path, kept)


def _done_ids(paths: Sequence[Path]) -> set[str]:
    """Image ids that already have a record (caption or error) in any of `paths`."""
    done = set()
    for path in paths:
        for number, record in enumerate(read_dense_captions(path), start=1):
            if not isinstance(record.get("image_id"), str):
                raise ValueError(
                    f"{path}, record {number} has no `image_id`, so the file cannot be resumed (the SEPS authors' "
                    "files identify images by line order only); write to a new file."
                )
            done.add(record["image_id"])
    return done


@dataclass(frozen=True)
class DenseCaptionSummary:
    """What [`write_dense_captions`] left in its output file, counted over the requested images."""

    #: The output jsonl file.
    output: Path
    #: Distinct images requested.
    num_images: int
    #: Images that already had a record before this run (skipped).
    num_resumed: int
    #: Images with a caption in the file.
    num_captions: int
    #: Images with an error record in the file (unreadable image).
    num_errors: int


def write_dense_captions(
    captioner: SepsDenseCaptioner,
    images: Mapping[str, str | os.PathLike],
    output: str | os.PathLike,
    *,
    state: PartialState | None = None,
    show_progress: bool = True,
) -> DenseCaptionSummary:
    """
    Captions image files into a jsonl file, one record per image id, in the order of `images`; resumable.

    Images that already have a caption in `output` (or in shard files left by an interrupted multi-process run) are
    skipped, so running again after a crash or a kill completes the file without duplicates. An image with an error
    record is tried again, so a fixed image file gets its caption in place of the error. A record is written with
    one `write` then `fsync` once its batch is captioned; a kill can leave an incomplete last line, which the next
    run removes (and which [`read_dense_captions`] skips). An image that cannot be opened or decoded gets an error
    record and the run goes on.

    In a multi-process run (`accelerate launch` or `torchrun`), the remaining images are split between processes,
    each appending to its own shard file `{output}.shard-{i}-of-{n}`; after all are done the main process merges
    them into `output` in image order, atomically, and deletes the shards. A single process appends to `output`
    directly. The captioner's per-image seeding makes the file the same whatever the number of processes, the batch
    size or the interruptions.

    Args:
        captioner ([`SepsDenseCaptioner`]):
            The captioner, on this process's device.
        images (`Mapping[str, str | os.PathLike]`):
            Image id to image file, in the output order (see [`list_images`]).
        output (`str` or `os.PathLike`):
            The jsonl file to write or complete.
        state (`accelerate.PartialState`, *optional*):
            The distributed state; `accelerate.PartialState()` by default (accelerate is needed either way).
        show_progress (`bool`, *optional*, defaults to `True`):
            Show a progress bar on the local main process.

    Returns:
        [`DenseCaptionSummary`], on every process.
    """
    if state is None:
        from accelerate import PartialState  # only this function needs accelerate

        state = PartialState()
    output = Path(output)
    image_ids = list(images)
    if state.is_main_process:
        output.parent.mkdir(parents=True, exist_ok=True)
        for path in [output, *_existing_shards(output)]:
            if path.exists():
                _drop_incomplete_last_line(path)
                _drop_error_records(path, set(image_ids))
    state.wait_for_everyone()
    done = _done_ids([path for path in [output, *_existing_shards(output)] if path.exists()])
    todo = [image_id for image_id in image_ids if image_id not in done][state.process_index :: state.num_processes]
    # Every process must have listed the finished ids before any of them appends new ones.
    state.wait_for_everyone()

    sink_path = output if state.num_processes == 1 else _shard_path(output, state.process_index, state.num_processes)
    sink = _RecordAppender(sink_path)
    bar = tqdm(
        total=len(todo),
        unit="image",
        desc="dense captions",
        disable=not (show_progress and state.is_local_main_process),
    )
    try:
        for batch_ids in _batches(todo, captioner.batch_size):
            for record in _caption_files(captioner, [(image_id, Path(images[image_id])) for image_id in batch_ids]):
                sink.append(record)
            bar.update(len(batch_ids))
    finally:
        bar.close()
        sink.close()

    state.wait_for_everyone()
    if state.is_main_process:
        _merge_in_image_order(output, image_ids)
    state.wait_for_everyone()
    records = {record["image_id"]: record for record in read_dense_captions(output)}
    requested = [records[image_id] for image_id in image_ids if image_id in records]
    num_errors = sum(is_error_record(record) for record in requested)
    return DenseCaptionSummary(
        output=output,
        num_images=len(image_ids),
        num_resumed=sum(image_id in done for image_id in image_ids),
        num_captions=len(requested) - num_errors,
        num_errors=num_errors,
    )


def _caption_files(captioner: SepsDenseCaptioner, batch: Sequence[tuple[str, Path]]) -> list[dict[str, Any]]:
    """Records for one batch of `(image_id, path)`, in order: a caption, or an error for an unreadable file."""
    loaded: dict[str, Image.Image] = {}
    failed: dict[str, BaseException] = {}
    for image_id, path in batch:
        try:
            loaded[image_id] = open_rgb_image(path)
        except _IMAGE_ERRORS as error:
            logger.warning("Cannot read image %r (%s): %s", image_id, path, error)
            failed[image_id] = error
    captions = dict(zip(loaded, captioner.caption_batch(list(loaded.values())), strict=True)) if loaded else {}
    return [
        _error_record(image_id, failed[image_id], captioner.model_id)
        if image_id in failed
        else _caption_record(image_id, captions[image_id], captioner.model_id)
        for image_id, _ in batch
    ]
