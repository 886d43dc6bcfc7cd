"""The training objective of SEPS over a global batch: every process scores the batch of all processes.

Uses `torch.distributed` only (no Accelerate): with one process, or without an initialised process group, the
gather is the identity. The loss itself is `SepsModel.score_embeddings` (docs/model.md, section 4).
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .feature_cache import FrozenFeatureCache, check_frozen
from .modeling_seps import SepsModel, SepsOutput


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; multiplies the gradient by `factor` on the way back."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor over all processes along dim 0, in rank order; the local slice keeps its gradient.

    Every process then computes the loss of the whole global batch. The local slice's gradient is scaled by the
    number of processes, so that after DistributedDataParallel averages the gradients, the parameters get
    exactly the gradient of one process holding the global batch. (No collective runs in the backward pass,
    which would race with DDP's own all-reduce.)
    """
    world_size = _world_size()
    if world_size == 1:
        return tensor
    tensor = tensor.contiguous()
    slices = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(slices, tensor.detach())
    if tensor.requires_grad:
        slices[dist.get_rank()] = _ScaleGradient.apply(tensor, float(world_size))
    return torch.cat(slices, dim=0)


def pad_to_global_length(embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (B, L, C) token embeddings and their (B, L) mask to the longest L over all processes."""
    if _world_size() == 1:
        return embeds, mask
    length = torch.tensor(embeds.shape[1], device=embeds.device)
    dist.all_reduce(length, op=dist.ReduceOp.MAX)
    extra = int(length) - embeds.shape[1]
    return F.pad(embeds, (0, 0, 0, extra)), F.pad(mask, (0, extra))


class SepsForRetrievalTraining(nn.Module):
    """Encodes the local batch, gathers the GLOBAL batch with gradients, scores it and returns the loss of
    [`SepsModel.score_embeddings`] on it: SEPS's (Eq. 6-7) plus, for a model with a global embedding, the
    contrastive loss that trains it (InfoNCE over the global batch, `transformers_seps.global_embedding`).

    Wrap this module (not the bare `SepsModel`) with `accelerator.prepare`: everything that touches parameters
    then runs inside one DistributedDataParallel forward. N processes with batch B compute the loss, and after
    DDP's averaging the gradients, of one process with batch N * B (the batches must have equal sizes:
    use `drop_last=True`).

    Args:
        model: the model to train.
        feature_cache: the tokens of its frozen backbones, computed once (`transformers_seps.feature_cache`); a
            batch that leaves some inputs out reads their tokens from it (see `forward`).
    """

    def __init__(self, model: SepsModel, feature_cache: FrozenFeatureCache | None = None):
        super().__init__()
        self.model = model
        self.feature_cache = feature_cache

    def _cached(self, backbone: str) -> FrozenFeatureCache:
        """The feature cache, for the inputs a batch leaves out; their `backbone` ("vision" or "text") is frozen."""
        if self.feature_cache is None:
            raise ValueError(f"the batch has no {backbone} inputs, and this objective no feature_cache to read from")
        check_frozen(getattr(self.model, f"{backbone}_model"), backbone)
        return self.feature_cache

    def _image_embeds(self, pixel_values: torch.Tensor | None, image_ids: torch.Tensor) -> torch.Tensor:
        model = self.model
        if pixel_values is not None:
            return model.encode_image(pixel_values)
        return model.vision_projection(self._cached("vision").image_tokens(image_ids, model.device))

    def _text_embeds(
        self, kind: str, input_ids: torch.Tensor | None, mask: torch.Tensor | None, keys: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected (B, W, C) tokens of the batch's captions or dense captions (`kind`) and their (B, W) mask."""
        model = self.model
        if input_ids is not None:
            mask = torch.ones_like(input_ids) if mask is None else mask
            return model.encode_text(input_ids, mask), mask
        if keys is None:
            raise ValueError(f"the batch has neither the token ids of its {kind} nor their keys in the feature cache")
        hidden, mask = self._cached("text").text_tokens(kind, keys, model.device)
        return model.text_projection(hidden), mask

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_ids: torch.Tensor | None = None,
        dense_input_ids: torch.Tensor | None = None,
        dense_attention_mask: torch.Tensor | None = None,
        caption_indices: torch.Tensor | None = None,
        max_violation: bool = True,
        selection_seed: int | None = None,
    ) -> SepsOutput:
        """Loss of the global batch of B pairs (image k, caption k).

        Args:
            pixel_values: (B, 3, H, W), or None: the images' cached tokens, by `image_ids`.
            input_ids, attention_mask: (B, L_t) captions, or None: their cached tokens, by `caption_indices`.
            image_ids: (B,) image identities (the captions of one image are positives of each other).
            dense_input_ids, dense_attention_mask: (B, L_d) each image's own dense caption, or None: the cached
                ones, by `image_ids`, when the cache holds dense captions, else none.
            caption_indices: (B,) the captions' keys in the feature cache.
            max_violation: hardest negative (True) or the sum over negatives.
            selection_seed: seeds the Gumbel decisions, so every process (and a resumed run) samples the same ones;
                None keeps the global random state.
        """
        if image_ids is None:
            raise ValueError("image_ids is required: the positives of the loss are the pairs of one image id")
        model = self.model
        image_embeds = gather_with_grad(self._image_embeds(pixel_values, image_ids))
        text_embeds, text_mask = pad_to_global_length(
            *self._text_embeds("captions", input_ids, attention_mask, caption_indices)
        )
        text_embeds, text_mask = gather_with_grad(text_embeds), gather_with_grad(text_mask)
        dense_embeds = dense_mask = None
        if dense_input_ids is not None or (self.feature_cache is not None and self.feature_cache.holds("dense")):
            dense_embeds, dense_mask = pad_to_global_length(
                *self._text_embeds("dense", dense_input_ids, dense_attention_mask, image_ids)
            )
            dense_embeds, dense_mask = gather_with_grad(dense_embeds), gather_with_grad(dense_mask)
        image_ids = gather_with_grad(image_ids)

        def score() -> SepsOutput:
            return model.score_embeddings(
                image_embeds, text_embeds, text_mask, dense_embeds, dense_mask, image_ids, True, max_violation
            )

        if selection_seed is None:
            return score()
        devices = [image_embeds.device] if image_embeds.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(selection_seed)
            return score()
