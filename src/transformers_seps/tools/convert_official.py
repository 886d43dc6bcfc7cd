"""Convert the SEPS (and LAPS) authors' checkpoints to `SepsModel` (variant="official", docs/model.md, section 3).

Their `train.py` saves `model_best.pth`, a pickled dict: `model` (the state dict), `opt` (the run's
`argparse.Namespace`), `epoch`, `best_rsum` and `Eiters`. LAPS checkpoints have the same layout and the same keys:
SEPS's dense-caption branch has no parameters of its own.

    checkpoint = load_official_checkpoint("model_best.pth")      # tensors and argparse.Namespace only
    model = load_official_model(checkpoint)                      # backbone inferred from opt, strict loading

Nothing is downloaded: the pretrained backbones the authors start from are only needed for their configs, which are
written out below (`official_vision_config`, `official_text_config`). Writing a Hub repo folder (processor, code,
model card) is `transformers_seps.tools.publish.convert_official_checkpoint`.
"""

import argparse
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import BertConfig, PreTrainedConfig, SwinConfig, ViTConfig

# From the package, not its modules: the first use registers the Auto classes, so saved folders get `auto_map`.
from .. import SepsConfig, SepsModel
from .arguments import OFFICIAL_TEXT_BACKBONE

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
            caption paired with its ground-truth image's dense caption (docs/model.md, sections 2 and 5): the authors'
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
        global_contrastive_weight=0.0,  # the authors trained no global embedding: untrained mean-pooled first stage
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


__all__ = [
    "CHECKPOINT_KEYS",
    "OFFICIAL_TEXT_BACKBONE",
    "OFFICIAL_VISION_BACKBONES",
    "OfficialCheckpoint",
    "convert_official_state_dict",
    "infer_official_backbone",
    "load_official_checkpoint",
    "load_official_model",
    "official_seps_config",
    "official_text_config",
    "official_vision_config",
]
