"""Convert the SEPS (and LAPS) authors' checkpoints to `SepsModel` (variant="official", spec section 3).

Their `train.py` saves `model_best.pth`, a pickled dict: `model` (the state dict), `opt` (the run's
`argparse.Namespace`), `epoch`, `best_rsum` and `Eiters`. LAPS checkpoints have the same layout and the same keys:
SEPS's dense-caption branch has no parameters of its own.

    checkpoint = load_official_checkpoint("model_best.pth")      # tensors and argparse.Namespace only
    model = load_official_model(checkpoint)                      # backbone inferred from opt, strict loading
    convert_official_checkpoint("model_best.pth", "seps-vit-224-f30k")   # + processor, code, model card

Nothing is downloaded: the pretrained backbones the authors start from are only needed for their configs, which are
written out below (`official_vision_config`, `official_text_config`).
"""

import argparse
import os
import pickle
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, BertConfig, PreTrainedConfig, SwinConfig, ViTConfig

from .cli import UsageError, check_choice, check_existing, check_writable_folder, looks_like_hub_id, replace_folder
from .configuration_seps import SepsConfig
from .modeling_seps import SepsModel
from .processing_seps import SepsProcessor

# Prefix in the authors' checkpoint -> prefix in SepsModel.
_PREFIXES = (
    ("img_enc.visual_encoder.", "vision_model."),
    ("img_enc.vision_proj.", "vision_projection."),
    ("txt_enc.bert.", "text_model."),
    ("txt_enc.fc.", "text_projection."),
    ("cross_net.aggr_net.weight.", "head.aggregator.mlp."),
)
# Backbone entries SepsModel does not hold: the unused pooling heads, BERT's old position-id buffer and Swin's
# relative-position index, which transformers < 5 saved and now recomputes from the window size.
_DROPPED_SUFFIXES = ("embeddings.position_ids", ".relative_position_index")
_DROPPED_PREFIXES = ("vision_model.pooler.", "text_model.pooler.")

CHECKPOINT_KEYS = ("model", "opt", "epoch", "best_rsum", "Eiters")
OFFICIAL_TEXT_BACKBONE = "bert-base-uncased"
# The pretrained vision backbones of the authors' `lib/encoders.py`, by the name we give them.
OFFICIAL_VISION_BACKBONES = {
    "vit-224": "google/vit-base-patch16-224-in21k",
    "vit-384": "google/vit-base-patch16-384",
    "swin-224": "microsoft/swin-base-patch4-window7-224",
    "swin-384": "microsoft/swin-base-patch4-window12-384",
}


def convert_official_state_dict(state_dict: Mapping[str, torch.Tensor], config: SepsConfig) -> dict[str, torch.Tensor]:
    """Rename the authors' state dict (`model_best.pth["model"]`) to `SepsModel` keys.

    A `module.` prefix (DistributedDataParallel) is stripped. Pooling heads and buffers the backbones recompute
    are dropped. A key that maps to nothing raises `ValueError` naming it, so a LAPS or SEPS checkpoint of another
    layout never loads silently. Backbone keys keep the naming of the transformers version that saved them:
    `load_official_model` loads them through `from_pretrained`, which renames those of older versions.
    """
    if config.variant != "official":
        raise ValueError(f"the authors' checkpoints need SepsConfig(variant='official'), got {config.variant!r}")
    converted: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key == "cross_net.aggr_net.scale":
            converted["head.aggregator.scale"] = value.reshape(1)
            continue
        for old, new in _PREFIXES:
            if key.startswith(old):
                new_key = new + key[len(old) :]
                break
        else:
            unknown.append(key)
            continue
        if new_key.startswith(_DROPPED_PREFIXES) or new_key.endswith(_DROPPED_SUFFIXES):
            continue
        converted[new_key] = value
    if unknown:
        raise ValueError(
            f"unexpected keys in the official state dict: {unknown[:10]}{' ...' if len(unknown) > 10 else ''}"
        )
    return converted


# --------------------------------------------------------------------------------------------------------------
# Reading a checkpoint
# --------------------------------------------------------------------------------------------------------------


@dataclass
class OfficialCheckpoint:
    """The content of an authors' `model_best.pth`.

    Args:
        state_dict: their model's weights (keys `img_enc.*`, `txt_enc.*`, `cross_net.*`).
        options: `vars(opt)`, the training run's arguments (`vit_type`, `img_res`, `embed_size`, `sparse_ratio`,
            `aggr_ratio`, `dataset`, ...).
        epoch: epochs trained (their `epoch + 1`).
        best_rsum: the rSum their `train.py` recorded when saving. It is measured on the TEST split with each
            caption paired with its ground-truth image's dense caption (spec sections 2 and 5): the authors'
            number, not a retrieval result.
        iterations: optimizer steps (`Eiters`).
    """

    state_dict: dict[str, torch.Tensor]
    options: dict[str, Any]
    epoch: int
    best_rsum: float
    iterations: int


def load_official_checkpoint(path: str | os.PathLike) -> OfficialCheckpoint:
    """Read an authors' `model_best.pth` without unpickling arbitrary objects.

    The file is read by `torch.load(weights_only=True)`, which only builds tensors and plain Python values, with
    `argparse.Namespace` (their `opt`) as the one class allowed besides.

    Raises:
        FileNotFoundError: if `path` is not a file.
        ValueError: if the file is not a PyTorch pickle, holds any other class or function (nothing of it is
            executed), or is not a dict with the keys `model` (tensors), `opt` (a Namespace), `epoch`,
            `best_rsum` and `Eiters`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    not_a_checkpoint = f"{path} is not a SEPS/LAPS checkpoint (model_best.pth)"
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = _refusal_reason(error)
        if "GLOBAL" in reason:
            raise ValueError(
                f"{not_a_checkpoint}: it holds objects other than tensors, plain values and argparse.Namespace, "
                f"which are never unpickled here ({reason})"
            ) from error
        raise ValueError(f"{not_a_checkpoint}: torch.load cannot read it ({reason})") from error
    except Exception as error:  # torch.load raises many types for files that are no pickle at all
        raise ValueError(f"{not_a_checkpoint}: torch.load cannot read it ({type(error).__name__}: {error})") from error

    if not isinstance(content, Mapping):
        raise ValueError(f"{not_a_checkpoint}: expected a dict with keys {CHECKPOINT_KEYS}, got {type(content)}")
    missing = [key for key in CHECKPOINT_KEYS if key not in content]
    if missing:
        raise ValueError(f"{not_a_checkpoint}: the keys {missing} are missing (it has {sorted(map(str, content))})")
    if not isinstance(content["opt"], argparse.Namespace):
        raise ValueError(f"{not_a_checkpoint}: 'opt' must be an argparse.Namespace, got {type(content['opt'])}")
    state_dict = content["model"]
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{not_a_checkpoint}: 'model' must be a state dict (names to tensors)")
    return OfficialCheckpoint(
        state_dict=dict(state_dict),
        options=vars(content["opt"]),
        epoch=content["epoch"],
        best_rsum=content["best_rsum"],
        iterations=content["Eiters"],
    )


def _refusal_reason(error: pickle.UnpicklingError) -> str:
    """The first sentence of torch's weights-only refusal that names the offending global or opcode."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[0])
    return reason.split(". ")[0]


# --------------------------------------------------------------------------------------------------------------
# The authors' backbones, written out
# --------------------------------------------------------------------------------------------------------------


def official_vision_config(backbone: str) -> PreTrainedConfig:
    """The config of a vision backbone of `OFFICIAL_VISION_BACKBONES` ("vit-224", "vit-384", "swin-224",
    "swin-384"), as published with its pretrained weights (the classification labels left out)."""
    if backbone not in OFFICIAL_VISION_BACKBONES:
        raise ValueError(f"unknown official backbone {backbone!r}; expected one of {list(OFFICIAL_VISION_BACKBONES)}")
    family, resolution = backbone.split("-")
    image_size = int(resolution)
    if family == "vit":
        # 16-pixel patches: 196 (224 px) or 576 (384 px) patches after a [CLS] token; hidden size 768.
        return ViTConfig(
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            hidden_act="gelu",
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            initializer_range=0.02,
            layer_norm_eps=1e-12,
            image_size=image_size,
            patch_size=16,
            num_channels=3,
            qkv_bias=True,
        )
    # Swin-B: the last stage's grid is 7x7 (224 px, window 7) or 12x12 (384 px, window 12); hidden size 1024.
    return SwinConfig(
        image_size=image_size,
        patch_size=4,
        num_channels=3,
        embed_dim=128,
        depths=[2, 2, 18, 2],
        num_heads=[4, 8, 16, 32],
        window_size=7 if image_size == 224 else 12,
        mlp_ratio=4.0,
        qkv_bias=True,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=0.1,
        hidden_act="gelu",
        use_absolute_embeddings=False,
        initializer_range=0.02,
        layer_norm_eps=1e-5,
        encoder_stride=32,
    )


def official_text_config() -> BertConfig:
    """The config of `bert-base-uncased`, the authors' text encoder."""
    return BertConfig(
        vocab_size=30522,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=512,
        type_vocab_size=2,
        initializer_range=0.02,
        layer_norm_eps=1e-12,
        pad_token_id=0,
    )


def infer_official_backbone(options: Mapping[str, Any]) -> str:
    """The vision backbone of a training run, from its `vit_type` and `img_res` (the authors' `lib/encoders.py`).

    SEPS: `vit_type` containing "swin_384" -> swin-384; "swin_224" or exactly "swin" -> swin-224; "vit_384" ->
    vit-384; "vit_224" or exactly "vit" -> vit-224. LAPS only knows "swin" and "vit". `img_res`, the side the
    images are resized to, must be the one the backbone was built for.
    """
    vit_type = options.get("vit_type")
    if not isinstance(vit_type, str):
        raise ValueError(f"the checkpoint's opt has no vit_type naming its vision backbone (got {vit_type!r})")
    family = "swin" if "swin" in vit_type else "vit"
    if f"{family}_384" in vit_type:
        backbone = f"{family}-384"
    elif f"{family}_224" in vit_type or vit_type == family:
        backbone = f"{family}-224"
    else:
        raise ValueError(
            f"opt.vit_type={vit_type!r} names no backbone of the authors' code (vit, vit_224, vit_384, swin, "
            "swin_224, swin_384); pass the vision config explicitly"
        )
    image_size = int(backbone.split("-")[1])
    img_res = options.get("img_res", image_size)
    if img_res != image_size:
        raise ValueError(
            f"opt.img_res={img_res} but opt.vit_type={vit_type!r} selects {OFFICIAL_VISION_BACKBONES[backbone]}, "
            f"built for {image_size} px images; a backbone run at another resolution is not supported"
        )
    return backbone


def official_seps_config(
    options: Mapping[str, Any],
    vision_config: PreTrainedConfig | None = None,
    text_config: PreTrainedConfig | None = None,
) -> SepsConfig:
    """The `SepsConfig` (variant="official") of a training run, from its options (`vars(opt)`).

    Args:
        options: needs `embed_size`, `sparse_ratio`, `aggr_ratio`, and `vit_type` unless `vision_config` is
            given. `img_res` and `num_patches`, when present, must agree with the vision backbone; `margin`,
            `ratio_weight` and `vse_mean_warmup_epochs` are carried over.
        vision_config: overrides the backbone inferred from `vit_type` (`infer_official_backbone`).
        text_config: overrides `official_text_config()` (bert-base-uncased).
    """
    missing = [name for name in ("embed_size", "sparse_ratio", "aggr_ratio") if name not in options]
    if missing:
        raise ValueError(f"the checkpoint's opt lacks {missing}")
    if vision_config is None:
        vision_config = official_vision_config(infer_official_backbone(options))
    config = SepsConfig(
        vision_config=vision_config,
        text_config=text_config if text_config is not None else official_text_config(),
        variant="official",
        embed_dim=options["embed_size"],
        sparse_ratio=options["sparse_ratio"],
        aggr_ratio=options["aggr_ratio"],
        margin=options.get("margin", 0.2),
        ratio_weight=options.get("ratio_weight", 2.0),
        max_violation_warmup_epochs=options.get("vse_mean_warmup_epochs", 1),
    )
    if config.num_patches is None:
        raise ValueError(f"cannot tell the patch layout of a {config.vision_config.model_type} vision backbone")
    image_size = getattr(config.vision_config, "image_size", None)
    if "img_res" in options and image_size is not None and options["img_res"] != image_size:
        raise ValueError(f"opt.img_res={options['img_res']} but the vision backbone takes {image_size} px images")
    if "num_patches" in options and options["num_patches"] != config.num_patches:
        raise ValueError(
            f"opt.num_patches={options['num_patches']} but the vision backbone has {config.num_patches} patches"
        )
    return config


# --------------------------------------------------------------------------------------------------------------
# Building, saving and publishing the model
# --------------------------------------------------------------------------------------------------------------


def load_official_model(
    checkpoint: OfficialCheckpoint,
    vision_config: PreTrainedConfig | None = None,
    text_config: PreTrainedConfig | None = None,
) -> SepsModel:
    """The authors' model as a `SepsModel` in eval mode, loaded strictly.

    The weights go through `SepsModel.from_pretrained`, so backbone keys saved by an older transformers (the
    authors used 4.x) are renamed as for any checkpoint. A missing, unexpected or wrongly shaped key raises
    `ValueError` naming it. `vision_config` / `text_config` as in `official_seps_config`.
    """
    config = official_seps_config(checkpoint.options, vision_config, text_config)
    state_dict = convert_official_state_dict(checkpoint.state_dict, config)
    model, info = SepsModel.from_pretrained(
        None, config=config, state_dict=state_dict, output_loading_info=True, ignore_mismatched_sizes=True
    )
    problems = [
        f"{name} {sorted(keys)}"
        for name, keys in (
            ("missing keys", info["missing_keys"]),
            ("unexpected keys", info["unexpected_keys"]),
            ("keys with other shapes (key, checkpoint, model)", info["mismatched_keys"]),
            ("errors", info["error_msgs"]),
        )
        if keys
    ]
    if problems:
        raise ValueError(
            "the checkpoint does not fit the model it describes (SepsModel names, backbone weights renamed as "
            "transformers loads them): " + "; ".join(problems)
        )
    return model.eval()


def convert_official_checkpoint(
    checkpoint_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    tokenizer: str | os.PathLike = OFFICIAL_TEXT_BACKBONE,
    vision_config: PreTrainedConfig | None = None,
    text_config: PreTrainedConfig | None = None,
    repo_id: str | None = None,
    method: str = "seps",
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
    """
    from .model_card import render_model_card  # imported here: model_card imports this module

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


@dataclass
class ConversionArguments:
    """Command-line arguments of `examples/convert_official_checkpoint.py`."""

    checkpoint: str = field(metadata={"help": "The authors' model_best.pth (SEPS or LAPS)."})
    output_dir: str = field(metadata={"help": "The Hub repo folder to write."})
    tokenizer: str = field(
        default=OFFICIAL_TEXT_BACKBONE, metadata={"help": "Hub id or folder of the bert-base-uncased tokenizer."}
    )
    vision_config: str | None = field(
        default=None,
        metadata={"help": "A config.json (or its folder) replacing the vision backbone inferred from opt.vit_type."},
    )
    text_config: str | None = field(
        default=None, metadata={"help": "A config.json (or its folder) replacing bert-base-uncased."}
    )
    method: str = field(
        default="seps",
        metadata={"help": "Whose checkpoint it is (for the model card).", "choices": ("seps", "laps")},
    )
    push_to_hub: str | None = field(default=None, metadata={"help": "Upload the folder to this Hub repo (org/name)."})
    private: bool = field(default=False, metadata={"help": "Create the Hub repo as private."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace a non-empty --output_dir (all of it: no earlier file stays to be uploaded)."},
    )


def _check_conversion_arguments(args: ConversionArguments) -> Path:
    """Check the arguments before any work (a `UsageError` names the flag); returns the output folder."""

    check_existing("checkpoint", args.checkpoint, "file")
    for flag in ("vision_config", "text_config"):
        if getattr(args, flag) is not None:
            check_existing(flag, getattr(args, flag))
    check_choice("method", args.method, ("seps", "laps"))
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
        )
        replace_folder(temporary, output_dir)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    print(f"wrote {output_dir}")
    if args.push_to_hub:
        print(f"uploaded: {push_folder_to_hub(output_dir, args.push_to_hub, private=args.private)}")
    return output_dir


__all__ = [
    "CHECKPOINT_KEYS",
    "ConversionArguments",
    "OFFICIAL_TEXT_BACKBONE",
    "OFFICIAL_VISION_BACKBONES",
    "OfficialCheckpoint",
    "convert_official_checkpoint",
    "convert_official_state_dict",
    "infer_official_backbone",
    "load_official_checkpoint",
    "load_official_model",
    "official_seps_config",
    "official_text_config",
    "official_vision_config",
    "push_folder_to_hub",
    "run_conversion",
]
