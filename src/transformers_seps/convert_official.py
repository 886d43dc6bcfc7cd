"""Map the SEPS authors' checkpoint keys (spec section 3) onto `SepsModel` (variant="official")."""

from collections.abc import Mapping

import torch

from .configuration_seps import SepsConfig

# Prefix in the authors' checkpoint -> prefix in SepsModel.
_PREFIXES = (
    ("img_enc.visual_encoder.", "vision_model."),
    ("img_enc.vision_proj.", "vision_projection."),
    ("txt_enc.bert.", "text_model."),
    ("txt_enc.fc.", "text_projection."),
    ("cross_net.aggr_net.weight.", "aggregator.mlp."),
)
# Backbone entries SepsModel does not hold: the unused pooling heads and BERT's old position-id buffer.
_DROPPED_SUFFIXES = ("embeddings.position_ids",)
_DROPPED_PREFIXES = ("vision_model.pooler.", "text_model.pooler.")


def convert_official_state_dict(state_dict: Mapping[str, torch.Tensor], config: SepsConfig) -> dict[str, torch.Tensor]:
    """Rename the authors' state dict (`model_best.pth["model"]`) to `SepsModel` keys.

    A `module.` prefix (DistributedDataParallel) is stripped. Pooling heads are dropped. A key that maps to
    nothing raises `ValueError` naming it, so a LAPS or SEPS checkpoint of another layout never loads silently.
    """
    if config.variant != "official":
        raise ValueError(f"the authors' checkpoints need SepsConfig(variant='official'), got {config.variant!r}")
    converted: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key == "cross_net.aggr_net.scale":
            converted["aggregator.scale"] = value.reshape(1)
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


__all__ = ["convert_official_state_dict"]
