"""Training pieces shared by `examples/train_retrieval.py`: the global-batch objective, optimiser, schedule and
atomic checkpoints. Works in one process and under `accelerate launch` (any number of processes)."""

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .modeling_seps import SepsModel, SepsOutput

CHECKPOINT_PREFIX = "checkpoint-"


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
    """Encodes the local batch, gathers the GLOBAL batch with gradients, scores it and returns the loss.

    Wrap this module (not the bare `SepsModel`) with `accelerator.prepare`: everything that touches parameters
    then runs inside one DistributedDataParallel forward. N processes with batch B compute the loss, and after
    DDP's averaging the gradients, of one process with batch N * B (the batches must have equal sizes:
    use `drop_last=True`).
    """

    def __init__(self, model: SepsModel):
        super().__init__()
        self.model = model

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
        image_embeds = gather_with_grad(model.get_image_features(pixel_values))
        text_embeds, text_mask = pad_to_global_length(
            model.get_text_features(input_ids, attention_mask), attention_mask
        )
        text_embeds, text_mask = gather_with_grad(text_embeds), gather_with_grad(text_mask)
        dense_embeds = dense_mask = None
        if dense_input_ids is not None:
            dense_embeds, dense_mask = pad_to_global_length(
                model.get_text_features(dense_input_ids, dense_attention_mask), dense_attention_mask
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


def build_optimizer(
    model: SepsModel, learning_rate: float, backbone_lr_ratio: float = 0.1, weight_decay: float = 1e-4
) -> torch.optim.AdamW:
    """AdamW with the paper's groups: backbones at `backbone_lr_ratio` * lr, everything else (projections,
    selection, aggregation, alignment heads) at lr."""
    backbone = [p for name in ("vision_model", "text_model") for p in getattr(model, name).parameters()]
    backbone_ids = {id(p) for p in backbone}
    head = [p for p in model.parameters() if id(p) not in backbone_ids]
    groups = [
        {"params": [p for p in head if p.requires_grad], "lr": learning_rate},
        {"params": [p for p in backbone if p.requires_grad], "lr": learning_rate * backbone_lr_ratio},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=learning_rate, weight_decay=weight_decay)


def step_decay(decay_epochs: list[int], decay_rate: float, steps_per_epoch: int) -> Callable[[int], float]:
    """LR multiplier for `LambdaLR`: times `decay_rate` at each epoch in `decay_epochs` (the authors' schedule)."""

    def factor(step: int) -> float:
        epoch = step // max(1, steps_per_epoch)
        return decay_rate ** sum(epoch >= boundary for boundary in decay_epochs)

    return factor


def checkpoint_step(path: Path) -> int | None:
    """The step of a `checkpoint-<step>` folder, None for anything else (temporary folders included)."""
    match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", path.name)
    return int(match.group(1)) if match else None


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step under `directory`, or None."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    steps = [(step, path) for path in directory.iterdir() if (step := checkpoint_step(path)) is not None]
    return max(steps)[1] if steps else None


def publish_checkpoint(temporary: Path, final: Path, keep: int = 2) -> None:
    """Rename a fully written checkpoint folder to its final `checkpoint-<step>` name; keep the newest `keep`.

    Write with `accelerator.save_state(temporary)` on every process, wait for everyone, then call this on the
    main process only. A kill during the write leaves only the temporary folder, which `latest_checkpoint`
    never returns, so a checkpoint that loads is always complete.
    """
    if final.exists():
        shutil.rmtree(final)
    os.replace(temporary, final)
    checkpoints = sorted((step, path) for path in final.parent.iterdir() if (step := checkpoint_step(path)) is not None)
    for _, path in checkpoints[: max(0, len(checkpoints) - keep)]:
        shutil.rmtree(path)
