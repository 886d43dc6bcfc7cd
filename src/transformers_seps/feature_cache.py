"""The outputs of frozen backbones, computed once, so that training runs only what it trains.

A frozen backbone in eval mode gives an image or a caption the same tokens at every step. `FrozenFeatureCache` keeps
those tokens on the CPU, each input encoded once before training, and `SepsForRetrievalTraining` reads its batches
from it: each step then runs the projections, the SEPS head and the first stage only, as VSE-style work trains on
precomputed image features. The tokens are the backbones' own (up to the float rounding of another batch shape), so
training with the cache gives the model training without it gives.
"""

from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .modeling_seps import SepsModel

# What a cache holds: images and their dense captions by image id, captions by caption index.
FEATURE_KINDS = ("images", "captions", "dense")


def check_frozen(backbone: nn.Module, name: str) -> None:
    """Raise `ValueError` unless `backbone` is frozen (no parameter requires a gradient): a backbone that trains
    changes its tokens, and cached ones would be stale."""
    if any(parameter.requires_grad for parameter in backbone.parameters()):
        raise ValueError(f"cached {name} tokens need a frozen {name} backbone (requires_grad_(False)); this one trains")


class FrozenFeatureCache:
    """Tokens of frozen backbones, before the projections, by key, on the CPU.

    `images[image_id]` is an image's (L_v, hidden) vision tokens, `dense[image_id]` its dense caption's (W_d, hidden)
    text tokens and `captions[caption_index]` a caption's (W, hidden) text tokens; text tokens are stored without
    their padding. Fill it with [`add_images`] and [`add_texts`] (the backbones must be frozen and in eval mode:
    dropout would make the tokens random), then read padded batches with [`image_tokens`] and [`text_tokens`].
    """

    def __init__(self) -> None:
        self.images: dict[int, torch.Tensor] = {}
        self.captions: dict[int, torch.Tensor] = {}
        self.dense: dict[int, torch.Tensor] = {}

    def holds(self, kind: str) -> bool:
        """Whether tokens of `kind` (one of `FEATURE_KINDS`) were added."""
        return bool(self._store(kind))

    @property
    def nbytes(self) -> int:
        """Memory the stored tokens take."""
        return sum(t.numel() * t.element_size() for kind in FEATURE_KINDS for t in self._store(kind).values())

    def _store(self, kind: str) -> dict[int, torch.Tensor]:
        if kind not in FEATURE_KINDS:
            raise ValueError(f"kind must be one of {FEATURE_KINDS}, got {kind!r}")
        return getattr(self, kind)

    @torch.no_grad()
    def add_images(self, model: SepsModel, image_ids: Sequence[int], pixel_values: torch.Tensor) -> None:
        """Encode (N, 3, H, W) images with the frozen vision backbone and keep their tokens under `image_ids` (N,)."""
        _check_frozen_and_eval(model.vision_model, "vision")
        if len(image_ids) != pixel_values.shape[0]:
            raise ValueError(f"one image id per image: {len(image_ids)} ids for {pixel_values.shape[0]} images")
        tokens = model.encode_image_backbone(pixel_values.to(model.device)).cpu()
        for image_id, row in zip(image_ids, tokens, strict=True):
            self.images[int(image_id)] = row

    @torch.no_grad()
    def add_texts(
        self,
        kind: str,
        model: SepsModel,
        keys: Sequence[int],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        batch_size: int = 64,
        progress: bool = True,
    ) -> None:
        """Encode tokenised texts with the frozen text backbone and keep each one's real tokens under its key.

        `kind` is "captions" (keys: caption indices) or "dense" (keys: the image ids the dense captions describe).
        Identical texts (a caption written twice) are encoded once and share their tokens. Texts go in batches of
        similar length, padding trimmed per batch (several times faster on CPU than one at a time); the batches depend
        on the texts only, so a resumed run caches exactly the values of the first.
        """
        if kind == "images":
            raise ValueError("images are added with add_images")
        store = self._store(kind)
        _check_frozen_and_eval(model.text_model, "text")
        if len(keys) != input_ids.shape[0] or input_ids.shape != attention_mask.shape:
            raise ValueError(
                f"one key per text: {len(keys)} keys, input_ids {tuple(input_ids.shape)}, attention_mask "
                f"{tuple(attention_mask.shape)}"
            )
        unique, inverse = torch.unique(torch.cat([input_ids, attention_mask], dim=1), dim=0, return_inverse=True)
        unique_ids, unique_mask = unique.split(input_ids.shape[1], dim=1)
        lengths = unique_mask.sum(dim=1)
        order = torch.argsort(lengths, stable=True).tolist()
        device = model.device
        encoded: list[torch.Tensor] = [torch.empty(0)] * len(order)
        for start in tqdm(range(0, len(order), batch_size), desc=f"encoding {kind}", disable=not progress):
            rows = order[start : start + batch_size]
            length = int(lengths[rows].max())
            mask = unique_mask[rows, :length].to(device)
            hidden = model.encode_text_backbone(unique_ids[rows, :length].to(device), mask).cpu()
            # The real tokens of the batch, in row order, split into one (views of a single tensor) per text.
            real = hidden[mask.cpu().bool()].split(lengths[rows].tolist())
            for row, states in zip(rows, real, strict=True):
                encoded[row] = states
        for key, row in zip(keys, inverse.tolist(), strict=True):
            store[int(key)] = encoded[row]

    def image_tokens(self, image_ids: torch.Tensor, device: torch.device) -> torch.Tensor:
        """(B, L_v, hidden) cached vision tokens of `image_ids` (B,), on `device`."""
        return torch.stack(self._rows("images", image_ids)).to(device)

    def text_tokens(self, kind: str, keys: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached text tokens of `keys` (B,), right-padded with zeros to the longest: (B, W, hidden) and the
        (B, W) attention mask (int64), on `device`."""
        rows = self._rows(kind, keys)
        lengths = torch.tensor([len(row) for row in rows])
        hidden = torch.zeros(len(rows), int(lengths.max()), rows[0].shape[-1], dtype=rows[0].dtype)
        for index, row in enumerate(rows):
            hidden[index, : len(row)] = row
        mask = (torch.arange(hidden.shape[1])[None] < lengths[:, None]).long()
        return hidden.to(device), mask.to(device)

    def _rows(self, kind: str, keys: torch.Tensor) -> list[torch.Tensor]:
        store = self._store(kind)
        missing = [key for key in keys.tolist() if key not in store]
        if missing:
            raise KeyError(f"no cached {kind} for keys {missing[:5]}: add them to the cache first")
        return [store[key] for key in keys.tolist()]


def _check_frozen_and_eval(backbone: nn.Module, name: str) -> None:
    check_frozen(backbone, name)
    if backbone.training:
        raise ValueError(f"cached {name} tokens need the {name} backbone in eval mode (dropout would randomise them)")


__all__ = ["FEATURE_KINDS", "FrozenFeatureCache", "check_frozen"]
