"""Publish the SEPS (or LAPS) authors' checkpoints: a complete Hub repo folder (model, code, processor, model card)
from a `model_best.pth`, and its upload; the command line `examples/convert_official_checkpoint.py`.

    convert_official_checkpoint("model_best.pth", "seps-vit-224-f30k")
"""

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers import AutoConfig, PreTrainedConfig

# From the package, not its modules: the first use registers the Auto classes, so saved folders get `auto_map`.
from .. import SepsProcessor
from ..train.cli import (
    UsageError,
    check_choice,
    check_existing,
    check_writable_folder,
    looks_like_hub_id,
    replace_folder,
)
from ..train.model_card import honest_metrics
from .arguments import OFFICIAL_TEXT_BACKBONE, ConversionArguments
from .convert_official import (
    infer_official_backbone,
    load_official_checkpoint,
    load_official_model,
)
from .model_card import render_model_card


def convert_official_checkpoint(
    checkpoint_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    tokenizer: str | os.PathLike = OFFICIAL_TEXT_BACKBONE,
    vision_config: PreTrainedConfig | None = None,
    text_config: PreTrainedConfig | None = None,
    repo_id: str | None = None,
    method: str = "seps",
    eval_results: Mapping[str, Any] | None = None,
    dense_pairing: str = "image",
) -> Path:
    """Turn an authors' `model_best.pth` into a complete Hub repo folder and return its path.

    The folder holds `config.json` (with `auto_map`), `model.safetensors`, the model and processor code (for
    `trust_remote_code=True`), the official-preset processor with its tokenizer files, and a model card
    (`README.md`) stating where the weights come from and how the authors evaluated them.

    Args:
        checkpoint_path: the authors' checkpoint (SEPS or LAPS).
        output_dir: the folder to write (created if needed).
        tokenizer: a hub id or a local folder of the bert-base-uncased tokenizer (loaded by `BertTokenizer`); its
            vocabulary must have the size of the text encoder's.
        vision_config, text_config: override the backbones inferred from the checkpoint (`official_seps_config`).
        repo_id: the Hub id the model card's code examples load from (default: `output_dir`).
        method: "seps" or "laps": whose checkpoint it is, for the model card (the files cannot tell).
        eval_results, dense_pairing: our evaluation of the converted model on the test split of its dataset and its
            dense-caption pairing, for the card's results and `model-index` (`render_model_card`).
    """
    checkpoint = load_official_checkpoint(checkpoint_path)
    model = load_official_model(checkpoint, vision_config, text_config)
    image_size = getattr(model.config.vision_config, "image_size", checkpoint.options.get("img_res", 224))
    processor = SepsProcessor.official(os.fspath(tokenizer), image_size=image_size)
    vocab_size = model.config.text_config.vocab_size
    if len(processor.tokenizer) != vocab_size:
        raise ValueError(
            f"the tokenizer {tokenizer} has {len(processor.tokenizer)} tokens but the text encoder {vocab_size}: "
            "use the bert-base-uncased tokenizer"
        )
    output_dir = Path(output_dir)
    card = render_model_card(
        backbone=infer_official_backbone(checkpoint.options) if vision_config is None else None,
        dataset=checkpoint.options.get("dataset"),
        repo_id=repo_id or output_dir.as_posix(),
        config=model.config,
        checkpoint=checkpoint,
        method=method,
        eval_results=eval_results,
        dense_pairing=dense_pairing,
    )
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    (output_dir / "README.md").write_text(card, encoding="utf-8")
    return output_dir


def push_folder_to_hub(folder: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Create `repo_id` on the Hub if needed and upload `folder` to it; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id, folder_path=os.fspath(folder), commit_message="SEPS: converted from the authors' checkpoint"
    )
    return str(commit.commit_url)


def _read_eval_results(path: str) -> dict[str, Any]:
    """The `--eval_results` report, checked to hold the test metrics a card needs."""
    check_existing("eval_results", path, "file")
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(report, dict):
            raise ValueError("expected a JSON object of metrics")
        honest_metrics(report)
    except (ValueError, UnicodeDecodeError) as error:
        raise UsageError(f"--eval_results {path}: {error}") from error
    return report


def _check_conversion_arguments(args: ConversionArguments) -> Path:
    """Check the arguments before any work (a `UsageError` names the flag); returns the output folder."""

    check_existing("checkpoint", args.checkpoint, "file")
    for flag in ("vision_config", "text_config"):
        if getattr(args, flag) is not None:
            check_existing(flag, getattr(args, flag))
    check_choice("method", args.method, ("seps", "laps"))
    check_choice("eval_dense_pairing", args.eval_dense_pairing, ("image", "none"))
    if args.push_to_hub is not None and not looks_like_hub_id(args.push_to_hub):
        raise UsageError(f"--push_to_hub {args.push_to_hub}: expected a Hub repository id, org/name")
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"--output_dir {output_dir} is a file, not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not args.overwrite_output_dir:
        raise UsageError(
            f"--output_dir {output_dir} is not empty; pass --overwrite_output_dir to replace it (its files are "
            "removed, so --push_to_hub uploads only the converted model), or another --output_dir"
        )
    check_writable_folder("output_dir", output_dir.absolute().parent)
    return output_dir


def run_conversion(args: ConversionArguments) -> Path:
    """Convert `args.checkpoint` into `args.output_dir`, then upload it if `args.push_to_hub` is set.

    The model is written to a new temporary folder next to `output_dir`, which then replaces `output_dir`: a
    failed conversion leaves `output_dir` as it was, and a replaced one keeps none of its earlier files.
    """
    output_dir = _check_conversion_arguments(args)
    eval_results = _read_eval_results(args.eval_results) if args.eval_results is not None else None
    vision_config = AutoConfig.from_pretrained(args.vision_config) if args.vision_config else None
    text_config = AutoConfig.from_pretrained(args.text_config) if args.text_config else None
    output_dir.absolute().parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".tmp-{output_dir.name}-", dir=output_dir.absolute().parent))
    try:
        convert_official_checkpoint(
            args.checkpoint,
            temporary,
            tokenizer=args.tokenizer,
            vision_config=vision_config,
            text_config=text_config,
            repo_id=args.push_to_hub or output_dir.as_posix(),
            method=args.method,
            eval_results=eval_results,
            dense_pairing=args.eval_dense_pairing,
        )
        replace_folder(temporary, output_dir)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    print(f"wrote {output_dir}")
    if args.push_to_hub:
        print(f"uploaded: {push_folder_to_hub(output_dir, args.push_to_hub, private=args.private)}")
    return output_dir
