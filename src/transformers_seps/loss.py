"""The training objective of SEPS over a global batch: every process scores the batch of all processes.

Uses `torch.distributed` only (no Accelerate): with one process, or without an initialised process group, the
gather is the identity. The loss itself is `SepsModel.score_embeddings` (docs/model.md, section 4).
"""

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

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
    """

    def __init__(self, model: SepsModel, cache_dense_hidden_states: bool = False):
        super().__init__()
        self.model = model
        # With a frozen text encoder in eval mode, an image's dense caption always gets the same hidden states:
        # `fill_dense_cache` computes them once per image id, and only the (trained) projection runs at each step.
        self.dense_cache: dict[int, torch.Tensor] | None = {} if cache_dense_hidden_states else None

    def fill_dense_cache(
        self,
        image_ids: Sequence[int],
        dense_input_ids: torch.Tensor,
        dense_attention_mask: torch.Tensor,
        batch_size: int = 64,
        progress: bool = True,
    ) -> None:
        """Encodes the dense caption of every image once, before training.

        Captions go in batches of similar length (padding trimmed per batch), several times faster on CPU than
        one at a time. The batches depend only on the captions, never on the training order, so a resumed run
        caches exactly the values of an uninterrupted one.

        Args:
            image_ids: (N_img,) the id the training batches carry for each image.
            dense_input_ids, dense_attention_mask: (N_img, L_d) each image's tokenised dense caption.
        """
        text_model = self.model.text_model
        if self.dense_cache is None:
            raise ValueError("this objective was built without cache_dense_hidden_states=True")
        if text_model.training or any(p.requires_grad for p in text_model.parameters()):
            raise ValueError("cached dense captions need a frozen text encoder in eval mode")
        if len(image_ids) != dense_input_ids.shape[0] or dense_input_ids.shape != dense_attention_mask.shape:
            raise ValueError(
                f"one dense caption per image: {len(image_ids)} image ids, dense_input_ids "
                f"{tuple(dense_input_ids.shape)}, dense_attention_mask {tuple(dense_attention_mask.shape)}"
            )
        lengths = dense_attention_mask.sum(dim=1)
        order = torch.argsort(lengths, stable=True).tolist()
        device = self.model.device
        for start in tqdm(range(0, len(order), batch_size), desc="encoding dense captions", disable=not progress):
            rows = order[start : start + batch_size]
            length = int(lengths[rows].max())
            mask = dense_attention_mask[rows, :length].to(device)
            with torch.no_grad():
                hidden = text_model(input_ids=dense_input_ids[rows, :length].to(device), attention_mask=mask)
            for row, states, row_mask in zip(rows, hidden.last_hidden_state, mask, strict=True):
                self.dense_cache[int(image_ids[row])] = states[row_mask.bool()].cpu()

    def _dense_embeds(self, input_ids: torch.Tensor, mask: torch.Tensor, image_ids: torch.Tensor) -> torch.Tensor:
        model = self.model
        if self.dense_cache is None:
            return model.encode_text(input_ids, mask)
        missing = [image_id for image_id in image_ids.tolist() if image_id not in self.dense_cache]
        if missing:
            raise KeyError(f"no cached dense caption for image ids {missing[:5]}: call fill_dense_cache first")
        states = [self.dense_cache[int(image_id)] for image_id in image_ids]
        hidden = torch.zeros(len(states), mask.shape[1], states[0].shape[-1], device=mask.device)
        for row, row_states in enumerate(states):
            hidden[row, : len(row_states)] = row_states.to(mask.device)
        return model.text_projection(hidden)

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_ids: torch.Tensor,
        dense_input_ids: torch.Tensor | None = None,
        dense_attention_mask: torch.Tensor | None = None,
        max_violation: bool = True,
        selection_seed: int | None = None,
    ) -> SepsOutput:
        """Loss of the global batch. `selection_seed` seeds the Gumbel decisions, so every process (and a
        resumed run) samples the same ones; None keeps the global random state."""
        model = self.model
        image_embeds = gather_with_grad(model.encode_image(pixel_values))
        text_embeds, text_mask = pad_to_global_length(model.encode_text(input_ids, attention_mask), attention_mask)
        text_embeds, text_mask = gather_with_grad(text_embeds), gather_with_grad(text_mask)
        dense_embeds = dense_mask = None
        if dense_input_ids is not None:
            dense_embeds, dense_mask = pad_to_global_length(
                self._dense_embeds(dense_input_ids, dense_attention_mask, image_ids), dense_attention_mask
            )
            dense_embeds, dense_mask = gather_with_grad(dense_embeds), gather_with_grad(dense_mask)
        image_ids = gather_with_grad(image_ids)

        def score() -> SepsOutput:
            return model.score_embeddings(
                image_embeds, text_embeds, text_mask, dense_embeds, dense_mask, image_ids, True, max_violation
            )

        if selection_seed is None:
            output = score()
        else:
            devices = [image_embeds.device] if image_embeds.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(selection_seed)
                output = score()
        return output
