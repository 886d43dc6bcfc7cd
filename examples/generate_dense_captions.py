"""Writes SEPS dense captions for a folder of images with a multimodal LLM, as a resumable jsonl file.

One process:

    python examples/generate_dense_captions.py --image_root images/ --output dense.jsonl \
        [--ids_file test_ids.txt --id_mapping id_mapping.json] [--model llava-hf/llava-1.5-13b-hf]

Several GPUs (the images are split between processes; the result is one file, in image order):

    accelerate launch --multi_gpu --num_processes 4 examples/generate_dense_captions.py \
        --image_root images/ --output dense.jsonl

Run the same command again after a crash or a kill: images already captioned are skipped (unreadable ones retried).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

# The defaults come from the torch-free caption_settings.py, so that --help imports no torch; captioning.py (torch
# and the LLM classes) is imported when a command runs.
from transformers_seps.caption_settings import DENSE_CAPTION_GENERATION_KWARGS, DENSE_CAPTION_PROMPT
from transformers_seps.train.cli import (
    UsageError,
    check_existing,
    check_float,
    check_int,
    check_model_location,
    check_writable_file,
    run_cli,
)

if TYPE_CHECKING:
    from transformers_seps.captioning import DenseCaptionSummary


@dataclass
class DataArguments:
    image_root: str = field(metadata={"help": "Folder holding the images."})
    output: str = field(metadata={"help": "The jsonl file to write, or to complete if it exists."})
    ids_file: str | None = field(
        default=None,
        metadata={"help": "One image id per line, in output order (repeats count once). Default: every image file."},
    )
    id_mapping: str | None = field(
        default=None,
        metadata={"help": "JSON file mapping image id to file name under image_root. Default: the id is the path."},
    )


@dataclass
class CaptionerArguments:
    model: str = field(
        default="llava-hf/llava-1.5-13b-hf", metadata={"help": "Hub id or folder of an image-text-to-text model."}
    )
    prompt: str = field(default=DENSE_CAPTION_PROMPT, metadata={"help": "Instruction given with each image."})
    do_sample: bool = field(
        default=DENSE_CAPTION_GENERATION_KWARGS["do_sample"],
        metadata={"help": "Sample, as the paper does (--no_do_sample: greedy decoding)."},
    )
    temperature: float = field(
        default=DENSE_CAPTION_GENERATION_KWARGS["temperature"], metadata={"help": "Sampling temperature."}
    )
    top_p: float = field(default=DENSE_CAPTION_GENERATION_KWARGS["top_p"], metadata={"help": "Nucleus sampling mass."})
    max_new_tokens: int = field(
        default=DENSE_CAPTION_GENERATION_KWARGS["max_new_tokens"], metadata={"help": "Token limit of a caption."}
    )
    batch_size: int = field(default=8, metadata={"help": "Images per generate call, per process."})
    seed: int = field(default=0, metadata={"help": "Seed of the per-image sampling streams."})
    dtype: str = field(
        default="auto", metadata={"help": "Model dtype.", "choices": ["auto", "float16", "bfloat16", "float32"]}
    )
    model_id: str | None = field(default=None, metadata={"help": "Name for the records' model_id (default: --model)."})
    cpu: bool = field(default=False, metadata={"help": "Run on CPU (also for multi-process CPU runs with torchrun)."})


def check_arguments(data_args: DataArguments, captioner_args: CaptionerArguments) -> None:
    """Check every argument before the model is loaded; a `UsageError` names the flag."""
    check_existing("image_root", data_args.image_root, "folder")
    for flag in ("ids_file", "id_mapping"):
        if getattr(data_args, flag) is not None:
            check_existing(flag, getattr(data_args, flag), "file")
    check_writable_file("output", data_args.output)
    check_model_location("model", captioner_args.model)
    if not captioner_args.prompt.strip():
        raise UsageError("--prompt must not be empty")
    check_float("temperature", captioner_args.temperature, 0.0, low_inclusive=False)
    check_float("top_p", captioner_args.top_p, 0.0, 1.0, low_inclusive=False)
    check_int("max_new_tokens", captioner_args.max_new_tokens, 1)
    check_int("batch_size", captioner_args.batch_size, 1)


def caption_folder(data_args: DataArguments, captioner_args: CaptionerArguments) -> DenseCaptionSummary:
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    from transformers_seps.captioning import SepsDenseCaptioner, list_images, write_dense_captions

    check_arguments(data_args, captioner_args)
    try:
        images = list_images(data_args.image_root, data_args.ids_file, data_args.id_mapping)
    except ValueError as error:
        raise UsageError(f"--image_root {data_args.image_root}: {error}") from error
    state = PartialState(cpu=captioner_args.cpu or parse_flag_from_env("ACCELERATE_USE_CPU"))
    generation_kwargs = {"do_sample": captioner_args.do_sample, "max_new_tokens": captioner_args.max_new_tokens}
    if captioner_args.do_sample:
        generation_kwargs.update(temperature=captioner_args.temperature, top_p=captioner_args.top_p)
    dtype = captioner_args.dtype if captioner_args.dtype == "auto" else getattr(torch, captioner_args.dtype)
    captioner = SepsDenseCaptioner.from_pretrained(
        captioner_args.model,
        prompt=captioner_args.prompt,
        generation_kwargs=generation_kwargs,
        batch_size=captioner_args.batch_size,
        seed=captioner_args.seed,
        model_id=captioner_args.model_id,
        device=state.device,
        dtype=dtype,
    )
    summary = write_dense_captions(captioner, images, data_args.output, state=state)
    if state.is_main_process:
        print(
            f"{summary.output}: {summary.num_captions} captions and {summary.num_errors} unreadable images "
            f"(error records) for {summary.num_images} images, {summary.num_resumed} of them done by earlier runs."
        )
    return summary


def main(argv: Sequence[str] | None = None) -> DenseCaptionSummary:
    """Parse `argv` (default: the command line), caption, and return the summary; a bad argument exits with
    status 2 and a one-line message."""
    return run_cli(
        lambda arguments: caption_folder(*arguments), (DataArguments, CaptionerArguments), argv, __doc__, __file__
    )


if __name__ == "__main__":
    main()
