"""The training run behind `examples/train_retrieval.py`, in named steps: resolve the defaults, build the model and
the loaders, train one epoch, validate and keep the best model, test and push. Works in one process and under
`accelerate launch` (any number of processes); the objective is `transformers_seps.loss`."""

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

# From the package, not its modules: the first use registers the Auto classes, so saved folders get `auto_map`.
from .. import SepsConfig, SepsModel, SepsOutput, SepsProcessor
from ..calibration import fit_first_stage_weight, fit_logit_scale
from ..feature_cache import FrozenFeatureCache
from ..loss import SepsForRetrievalTraining
from ..metrics import (
    CAPTIONS_PER_IMAGE,
    FOLD_SIZE,
    METRIC_KEYS,
    fold_metrics,
    markdown_table,
    mean_metrics,
    retrieval_metrics,
)
from .arguments import DEFAULT_SYNTHETIC_ROOT, VIT_SCRATCH, DataArguments, ModelArguments, RetrievalTrainingArguments
from .backbones import backbone_hub_ids, build_processor, load_text_backbone, load_vision_backbone
from .checkpoints import (
    CHECKPOINT_PREFIX,
    RUN_RECORD,
    RunPlan,
    plan_run,
    publish_checkpoint,
    run_arguments,
    start_run_folder,
)
from .cli import (
    UsageError,
    check_choice,
    check_float,
    check_int,
    check_writable_folder,
    looks_like_hub_id,
    replace_folder,
)
from .data import (
    RetrievalFiles,
    RetrievalSplit,
    SepsRetrievalCollator,
    build_caption_dataset,
    load_split,
)
from .data.hub import check_hub_dataset_arguments
from .data.synthetic import (
    GENERATOR_VERSION,
    SyntheticBenchmarkConfig,
    benchmark_is_complete,
    generate_synthetic_benchmark,
    read_benchmark_info,
)
from .evaluation import cache_frozen_features, encode_split, score_split, scorer_similarities
from .model_card import HUB_DATASETS, render_trained_model_card


def build_optimizer(
    model: SepsModel,
    learning_rate: float,
    backbone_lr_ratio: float = 0.1,
    weight_decay: float = 1e-4,
    pretrained_backbones: tuple[str, ...] = ("vision_model", "text_model"),
    first_stage_learning_rate: float | None = None,
) -> torch.optim.AdamW:
    """AdamW with a learning rate per part, each a named parameter group: "seps" (the projections, the selection,
    aggregation and alignment heads, and a backbone trained from scratch) at `learning_rate`, "first_stage" (the
    global embedding, `model.global_embedding`) at `first_stage_learning_rate` (default `learning_rate`), and
    "backbones" (the pretrained ones) at `backbone_lr_ratio` * `learning_rate`, the paper's groups."""
    backbones = {id(p) for name in pretrained_backbones for p in getattr(model, name).parameters()}
    first_stage = set() if model.global_embedding is None else {id(p) for p in model.global_embedding.parameters()}
    rates = {
        "seps": learning_rate,
        "first_stage": first_stage_learning_rate or learning_rate,
        "backbones": learning_rate * backbone_lr_ratio,
    }
    parts: dict[str, list[torch.nn.Parameter]] = {name: [] for name in rates}
    for parameter in model.parameters():
        if parameter.requires_grad:
            part = (
                "backbones" if id(parameter) in backbones else "first_stage" if id(parameter) in first_stage else "seps"
            )
            parts[part].append(parameter)
    groups = [{"name": name, "lr": rates[name], "params": params} for name, params in parts.items() if params]
    return torch.optim.AdamW(groups, lr=learning_rate, weight_decay=weight_decay)


def clip_gradients(accelerator: Accelerator, objective: torch.nn.Module, model: SepsModel, max_norm: float) -> None:
    """Clip the gradients of `objective` to the norm `max_norm` (the authors' 2.0); when the first stage learns
    from detached tokens (`config.global_detach_tokens`), SEPS's and the first stage's apart: they are separate
    models then, and one norm over both would let the first stage's gradients shrink SEPS's steps."""
    first_stage = []
    if model.global_embedding is not None and model.config.global_detach_tokens:
        first_stage = list(model.global_embedding.parameters())
    first_stage_ids = {id(parameter) for parameter in first_stage}
    # Unscales every gradient of a float16 run, the first stage's included.
    accelerator.clip_grad_norm_([p for p in objective.parameters() if id(p) not in first_stage_ids], max_norm)
    if first_stage:
        torch.nn.utils.clip_grad_norm_(first_stage, max_norm)


def step_decay(decay_epochs: list[int], decay_rate: float, steps_per_epoch: int) -> Callable[[int], float]:
    """LR multiplier for `LambdaLR`: times `decay_rate` at each epoch in `decay_epochs` (the authors decay by 0.3
    at epochs 9, 15, 20 and 25: `AUTHORS_LR_DECAY_EPOCHS`, `AUTHORS_LR_DECAY_RATE`)."""

    def factor(step: int) -> float:
        epoch = step // max(1, steps_per_epoch)
        return decay_rate ** sum(epoch >= boundary for boundary in decay_epochs)

    return factor


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


def epoch_order(caption_to_image: list[int], epoch: int, seed: int, *, one_caption_per_image: bool) -> list[int]:
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


# SepsConfig fields that have a flag of their own (ModelArguments), never set through --config_overrides.
_FIELDS_WITH_FLAGS = ("variant", "embed_dim", "sparse_ratio", "aggr_ratio", "max_violation_warmup_epochs")


def config_overrides(text: str | None) -> dict[str, Any]:
    """The `SepsConfig` fields `--config_overrides` sets ('name=value,...'), typed as the fields' defaults are (as
    `PreTrainedConfig.update_from_string` types them); a `UsageError` names an unknown field or a bad value."""
    if not text:
        return {}
    malformed = [item for item in text.split(",") if "=" not in item]
    if malformed:
        raise UsageError(f"--config_overrides {text!r}: {malformed[0]!r} is not name=value")
    defaults = SepsConfig()
    names = [item.split("=", 1)[0] for item in text.split(",")]
    try:
        defaults.update_from_string(text)
        defaults.validate_seps()
    except (ValueError, TypeError) as error:
        raise UsageError(f"--config_overrides {text!r}: {error}") from error
    flagged = [name for name in names if name in _FIELDS_WITH_FLAGS]
    if flagged:
        raise UsageError(f"--config_overrides {text!r}: set {', '.join(flagged)} with its own flag (--{flagged[0]})")
    return {name: getattr(defaults, name) for name in names}


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
    for flag in ("learning_rate", "first_stage_learning_rate"):
        if getattr(args, flag) is not None:
            check_float(flag, getattr(args, flag), 0.0, low_inclusive=False)
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
    config_overrides(model_args.config_overrides)
    check_writable_folder("output_dir", Path(args.output_dir))
    _check_data_root(data_args, model_args.use_dense_captions)
    check_global_batch(args.per_device_train_batch_size, launched_processes(), _synthetic_pairs_per_epoch(data_args))


def launched_processes() -> int:
    """The number of processes of this run, before Accelerate starts: `WORLD_SIZE` of `torchrun` and `accelerate
    launch`, 1 otherwise."""
    world_size = os.environ.get("WORLD_SIZE", "1")
    return int(world_size) if world_size.isdigit() and int(world_size) > 0 else 1


def _synthetic_pairs_per_epoch(data_args: DataArguments) -> int | None:
    """The training pairs of an epoch when the flags tell them before any data is read (the synthetic benchmark:
    its images, or its captions without one caption per image); None for other datasets."""
    if data_args.dataset != "synthetic" or data_args.dataset_name is not None:
        return None
    one_caption_per_image = data_args.one_caption_per_image is not False  # the synthetic default: one
    return data_args.synthetic_num_train * (1 if one_caption_per_image else CAPTIONS_PER_IMAGE)


def check_global_batch(per_device: int, num_processes: int, pairs_per_epoch: int | None = None) -> None:
    """The triplet loss takes each pair's negatives from the other pairs of the global batch: it needs at least
    2 pairs (with 1 the loss is 0 and nothing trains), and no more than an epoch holds. `UsageError` otherwise."""
    global_batch = per_device * num_processes
    batch = (
        f"--per_device_train_batch_size {per_device} on {num_processes} process{'es' if num_processes > 1 else ''} "
        f"is a global batch of {global_batch}"
    )
    if global_batch < 2:
        raise UsageError(
            f"{batch}: the triplet loss takes its negatives from the other pairs of the batch, so it would be 0 and "
            "nothing would train; use a global batch of at least 2"
        )
    if pairs_per_epoch is not None and global_batch > pairs_per_epoch:
        raise UsageError(
            f"{batch}, more than the {pairs_per_epoch} training pairs of an epoch: use at most "
            f"--per_device_train_batch_size {pairs_per_epoch // num_processes}"
        )


def _check_data_root(data_args: DataArguments, use_dense: bool) -> None:
    """A real dataset's folder must exist, with its splits' caption files and (with dense captions) the train and
    test dense-caption files; the synthetic benchmark is only generated into a missing or empty folder when it is
    the default one or `--generate_synthetic` asks for it (a misspelled path is an error). With `--dataset_name`,
    that dataset and its dense captions are checked instead."""
    if data_args.dataset_name is not None:
        check_hub_dataset_arguments(data_args, data_args.dataset, use_dense)
        return
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
    found = read_benchmark_info(root)
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


def _load_data(
    data_args: DataArguments, image_size: int, accelerator: Accelerator, *, use_dense: bool
) -> dict[str, RetrievalSplit]:
    if data_args.dataset == "synthetic":
        config = SyntheticBenchmarkConfig(
            num_train=data_args.synthetic_num_train,
            num_dev=data_args.synthetic_num_dev,
            num_test=data_args.synthetic_num_test,
            image_size=data_args.synthetic_image_size or image_size,
            seed=data_args.synthetic_seed,
        )
        root = Path(data_args.data_root)
        if root.is_dir() and any(root.iterdir()) and not benchmark_is_complete(root, config):
            raise _synthetic_mismatch(root, config)
        if accelerator.is_main_process:
            generate_synthetic_benchmark(data_args.data_root, config)
        accelerator.wait_for_everyone()
    test_split = "testall" if data_args.dataset == "coco" else "test"
    # "auto": train and test need their dense captions; dev may have none (the authors ship none for dev).
    dense_mode = "auto" if use_dense else "ignore"
    return {name: load_split(data_args, data_args.dataset, name, dense_mode) for name in ("train", "dev", test_split)}


@dataclass
class ResolvedDefaults:
    """The options left unset (None) on the command line, resolved for the dataset (docs/training.md, "Training
    defaults")."""

    num_train_epochs: int
    freeze_text_model: bool
    freeze_vision_model: bool
    one_caption_per_image: bool
    max_violation_warmup_epochs: int
    learning_rate: float
    first_stage_learning_rate: float


# The paper's learning rate (section 4.3), the default of every part on real datasets.
PAPER_LEARNING_RATE = 1e-4
# The synthetic benchmark's learning rates (SEPS, first stage), chosen on its dev split (docs/training.md, "Training
# defaults"): the SEPS head learns little at 1e-4 on frozen backbones within the demo's budget, the first stage does
# worse at 1e-3.
SYNTHETIC_LEARNING_RATES = (1e-3, 1e-4)
# The synthetic benchmark's epochs: as many as `make demo` fits in 10 minutes on 2 CPU cores with cached tokens,
# benchmark generation included.
SYNTHETIC_EPOCHS = 6


def resolve_defaults(
    model_args: ModelArguments, data_args: DataArguments, args: RetrievalTrainingArguments
) -> ResolvedDefaults:
    """Real datasets get the paper's and the authors' settings (30 epochs, backbones trained, every caption in every
    epoch, hardest negatives after one epoch); the synthetic benchmark its own (6 epochs, frozen pretrained
    backbones, one caption per image and epoch, all negatives in every epoch). docs/training.md's "Training defaults"
    table gives the source of each."""
    synthetic = data_args.dataset == "synthetic"
    num_train_epochs = args.num_train_epochs or (SYNTHETIC_EPOCHS if synthetic else 30)
    freeze_vision = model_args.freeze_vision_model
    if freeze_vision is None:
        freeze_vision = synthetic and model_args.vision_model != VIT_SCRATCH
    elif freeze_vision and model_args.vision_model == VIT_SCRATCH:
        raise ValueError(f"--freeze_vision_model true would keep '{VIT_SCRATCH}' at its random initialisation")
    warmup_epochs = model_args.max_violation_warmup_epochs
    if warmup_epochs is None:
        warmup_epochs = num_train_epochs if synthetic else 1
    seps_rate, first_stage_rate = SYNTHETIC_LEARNING_RATES if synthetic else (PAPER_LEARNING_RATE, None)
    learning_rate = args.learning_rate or seps_rate
    return ResolvedDefaults(
        num_train_epochs=num_train_epochs,
        freeze_text_model=synthetic if model_args.freeze_text_model is None else model_args.freeze_text_model,
        freeze_vision_model=freeze_vision,
        one_caption_per_image=synthetic if data_args.one_caption_per_image is None else data_args.one_caption_per_image,
        max_violation_warmup_epochs=warmup_epochs,
        learning_rate=learning_rate,
        first_stage_learning_rate=args.first_stage_learning_rate or first_stage_rate or learning_rate,
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
        **config_overrides(model_args.config_overrides),
    )
    processor = build_processor(
        model_args.vision_model, model_args.text_model, vision, text_model_max_length=model.config.max_text_length
    )
    return model, processor


def evaluate_model(
    model: SepsModel,
    processor: SepsProcessor,
    split: RetrievalSplit,
    batch_size: int,
    accelerator: Accelerator,
    *,
    use_dense: bool,
    feature_cache: FrozenFeatureCache | None = None,
) -> dict[str, float]:
    """Metrics of `model`'s score on a split (honest dense pairing), and of SEPS alone (`seps_` keys) and the first
    stage alone (`first_stage_` keys) (`evaluation.SCORERS`); COCO's 5K test also gets the mean of its 1K folds (a
    smaller testall, not a whole number of folds, gets the whole-matrix metrics only).

    A split without dense captions (the authors' dev split) is scored without them: the dense terms drop out.
    `feature_cache`: the split's backbone tokens (`encode_split`)."""
    use_dense = use_dense and split.has_dense_captions
    encoded = encode_split(
        model, processor, split, batch_size, use_dense=use_dense, accelerator=accelerator, feature_cache=feature_cache
    )
    scores = scorer_similarities(model, encoded, "image" if use_dense else "none", accelerator)
    metrics = _split_metrics(scores["model"], split)
    for scorer in ("seps", "first_stage"):
        metrics.update({f"{scorer}_{key}": value for key, value in _split_metrics(scores[scorer], split).items()})
    return metrics


def _split_metrics(similarity: np.ndarray, split: RetrievalSplit) -> dict[str, float]:
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


@dataclass
class TrainingSchedule:
    """How many pairs, optimizer steps and epochs a run trains (`plan_schedule`)."""

    rows_per_epoch: int
    steps_per_epoch: int
    max_steps: int
    num_epochs: int


def plan_schedule(
    args: RetrievalTrainingArguments,
    caption_to_image: list[int],
    num_processes: int,
    num_train_epochs: int,
    *,
    one_caption_per_image: bool,
) -> TrainingSchedule:
    """Steps per epoch from the epoch's pairs and the global batch; `max_steps` (if set) or the epochs bound the run."""
    rows_per_epoch = len(epoch_order(caption_to_image, 0, args.seed, one_caption_per_image=one_caption_per_image))
    check_global_batch(args.per_device_train_batch_size, num_processes, rows_per_epoch)
    micro_steps_per_epoch = rows_per_epoch // (args.per_device_train_batch_size * num_processes)
    steps_per_epoch = max(1, micro_steps_per_epoch // args.gradient_accumulation_steps)
    max_steps = args.max_steps if args.max_steps not in (None, -1) else steps_per_epoch * num_train_epochs
    return TrainingSchedule(rows_per_epoch, steps_per_epoch, max_steps, -(-max_steps // steps_per_epoch))


@dataclass
class TrainingRun:
    """What the steps of one training run share (`run_training`). `objective`, `optimizer` and `scheduler` are
    the ones `accelerator.prepare` returned; `model` is the bare `SepsModel` inside the objective."""

    model_args: ModelArguments
    data_args: DataArguments
    args: RetrievalTrainingArguments
    defaults: ResolvedDefaults
    plan: RunPlan
    accelerator: Accelerator
    model: SepsModel
    processor: SepsProcessor
    splits: dict[str, RetrievalSplit]
    train_rows: datasets.Dataset
    objective: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    schedule: TrainingSchedule
    progress: TrainingProgress
    dev_features: FrozenFeatureCache | None = None  # the dev split's backbone tokens (`_dev_features`)

    @property
    def output_dir(self) -> Path:
        return Path(self.args.output_dir)

    @property
    def use_dense(self) -> bool:
        return self.model_args.use_dense_captions


def run_training(
    model_args: ModelArguments, data_args: DataArguments, args: RetrievalTrainingArguments
) -> dict[str, float]:
    """Train, validate on the dev split every epoch, keep the best model by dev rSum in `output_dir/best`, and
    write its test metrics to `output_dir/eval_results.json`. Returns the test metrics (or the best dev ones).

    A new run needs an empty `output_dir` (or `overwrite_output_dir`); the folder records the run's id and
    arguments, so that `resume_from_checkpoint` only continues the same run from its own checkpoints (`plan_run`).
    """
    validate_training_arguments(model_args, data_args, args)
    run = prepare_run(model_args, data_args, args)
    progress, schedule = run.progress, run.schedule
    bar = tqdm(
        total=schedule.max_steps,
        initial=progress.step,
        desc="training",
        disable=not run.accelerator.is_local_main_process,
    )
    checkpoint_every = None if args.checkpointing_steps in (None, "epoch") else int(args.checkpointing_steps)
    for epoch in range(progress.step // schedule.steps_per_epoch, schedule.num_epochs):
        train_one_epoch(run, epoch, bar, checkpoint_every)
        validate_and_keep_best(run, epoch)
        if args.checkpointing_steps == "epoch" or (checkpoint_every and progress.step % checkpoint_every == 0):
            save_checkpoint(run)
        if progress.step >= schedule.max_steps:
            break
    bar.close()
    calibrate_scores(run)
    results = evaluate_test_and_push(run)
    run.accelerator.end_training()
    return results


def prepare_run(model_args: ModelArguments, data_args: DataArguments, args: RetrievalTrainingArguments) -> TrainingRun:
    """Plan the run folder, build the model and load the data, then write the run record (only once the data is
    known to load, so that a refused run leaves its output_dir untouched), and prepare the objective."""
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
    model, processor = _build_model(model_args, defaults.max_violation_warmup_epochs)
    # The synthetic benchmark is rendered at the input side the processor resizes to.
    image_size = processor.image_processor.size["height"]
    splits = _load_data(data_args, image_size, accelerator, use_dense=model_args.use_dense_captions)
    # After every process has planned its run (`plan_run` reads the folder).
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        start_run_folder(output_dir, plan, arguments)
    accelerator.wait_for_everyone()
    return _prepare_objective(model_args, data_args, args, defaults, plan, accelerator, model, processor, splits)


def _prepare_objective(
    model_args: ModelArguments,
    data_args: DataArguments,
    args: RetrievalTrainingArguments,
    defaults: ResolvedDefaults,
    plan: RunPlan,
    accelerator: Accelerator,
    model: SepsModel,
    processor: SepsProcessor,
    splits: dict[str, RetrievalSplit],
) -> TrainingRun:
    """Freeze what the defaults freeze, cache the tokens of frozen backbones, build the optimizer and schedule, and
    resume the training state of `plan.resume`."""
    use_dense = model_args.use_dense_captions
    objective = _build_objective(
        model,
        processor,
        splits["train"],
        defaults,
        use_dense=use_dense,
        cache_features=args.cache_frozen_features,
        batch_size=args.per_device_eval_batch_size,
        accelerator=accelerator,
    )
    pretrained = ("text_model",) if model_args.vision_model == VIT_SCRATCH else ("vision_model", "text_model")
    optimizer = build_optimizer(
        model,
        defaults.learning_rate,
        args.backbone_lr_ratio,
        args.weight_decay,
        pretrained,
        first_stage_learning_rate=defaults.first_stage_learning_rate,
    )
    schedule = plan_schedule(
        args,
        splits["train"].caption_to_image,
        accelerator.num_processes,
        defaults.num_train_epochs,
        one_caption_per_image=defaults.one_caption_per_image,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, step_decay(args.lr_decay_epochs, args.lr_decay_rate, schedule.steps_per_epoch)
    )
    train_rows = _training_rows(splits["train"], objective.feature_cache, use_dense)
    objective, optimizer, scheduler = accelerator.prepare(objective, optimizer, scheduler)
    progress = TrainingProgress()
    accelerator.register_for_checkpointing(progress)
    run = TrainingRun(
        model_args=model_args,
        data_args=data_args,
        args=args,
        defaults=defaults,
        plan=plan,
        accelerator=accelerator,
        model=model,
        processor=processor,
        splits=splits,
        train_rows=train_rows,
        objective=objective,
        optimizer=optimizer,
        scheduler=scheduler,
        schedule=schedule,
        progress=progress,
    )
    run.dev_features = _dev_features(model, processor, splits["dev"], run)
    _resume_or_start(run)
    return run


def _training_rows(train: RetrievalSplit, cache: FrozenFeatureCache | None, use_dense: bool) -> datasets.Dataset:
    """The training split's caption rows, without the columns of inputs the feature cache holds (not loaded, decoded
    nor tokenised at each step) and without the dense captions when they are not used."""
    cached_column_kinds = {"image_path": "images", "caption": "captions", "dense_caption": "dense"}
    dropped = [column for column, kind in cached_column_kinds.items() if cache is not None and cache.holds(kind)]
    if not use_dense and "dense_caption" not in dropped:
        dropped.append("dense_caption")
    return build_caption_dataset(train).remove_columns(dropped)


def _build_objective(
    model: SepsModel,
    processor: SepsProcessor,
    train: RetrievalSplit,
    defaults: ResolvedDefaults,
    *,
    use_dense: bool,
    cache_features: bool,
    batch_size: int,
    accelerator: Accelerator,
) -> SepsForRetrievalTraining:
    """Freeze what the defaults freeze; with `cache_features`, encode the training inputs of each frozen
    backbone once (`transformers_seps.feature_cache`): images by a frozen vision backbone, captions and dense
    captions by a frozen text encoder."""
    if defaults.freeze_text_model:
        model.text_model.requires_grad_(False).eval()
    if defaults.freeze_vision_model:
        model.vision_model.requires_grad_(False).eval()
    if not cache_features or not (defaults.freeze_text_model or defaults.freeze_vision_model):
        return SepsForRetrievalTraining(model)
    cache = cache_frozen_features(
        model,
        processor,
        train,
        batch_size,
        images=defaults.freeze_vision_model,
        texts=defaults.freeze_text_model,
        use_dense=use_dense,
        progress=accelerator.is_local_main_process,
    )
    accelerator.print(f"frozen backbones' tokens of the training split cached: {cache.nbytes / 2**20:.0f} MiB")
    return SepsForRetrievalTraining(model, cache)


def _dev_features(
    model: SepsModel, processor: SepsProcessor, dev: RetrievalSplit, run: "TrainingRun"
) -> FrozenFeatureCache | None:
    """With both backbones frozen (and `cache_frozen_features`), the dev split's backbone tokens, encoded once for
    every dev evaluation and the calibration."""
    frozen = run.defaults.freeze_text_model and run.defaults.freeze_vision_model
    if not (frozen and run.args.cache_frozen_features):
        return None
    return cache_frozen_features(
        model,
        processor,
        dev,
        run.args.per_device_eval_batch_size,
        use_dense=run.use_dense and dev.has_dense_captions,
        progress=run.accelerator.is_local_main_process,
    )


def _resume_or_start(run: TrainingRun) -> None:
    """Load the checkpoint the run resumes (if any), start the trackers, and say what the run trains."""
    accelerator, plan, progress, defaults = run.accelerator, run.plan, run.progress, run.defaults
    if plan.resume is not None:
        accelerator.load_state(str(plan.resume))
        accelerator.print(f"run {plan.run_id}: resumed from {plan.resume} at step {progress.step}")
    else:
        state = "new run" if plan.new_run else "no checkpoint yet, starting from scratch"
        accelerator.print(f"run {plan.run_id} in {run.output_dir}: {state}")
    if run.args.report_to:
        config = {**asdict(run.model_args), **asdict(run.data_args), **asdict(run.args)}
        accelerator.init_trackers("seps", config=config)
    schedule = run.schedule
    accelerator.print(
        f"{schedule.rows_per_epoch} pairs per epoch, {schedule.steps_per_epoch} steps per epoch, "
        f"{schedule.max_steps} steps; vision backbone "
        f"{'frozen' if defaults.freeze_vision_model else 'trained'}, text encoder "
        f"{'frozen' if defaults.freeze_text_model else 'trained'}; dense "
        f"captions {'on' if run.use_dense else 'off'}; learning rates: SEPS {defaults.learning_rate:g}, first stage "
        f"{defaults.first_stage_learning_rate:g}; triplet loss over all negatives for "
        f"{defaults.max_violation_warmup_epochs} epoch(s), then "
        "over the hardest negative"
    )


def _epoch_loader(run: TrainingRun, epoch: int, done_in_epoch: int) -> DataLoader:
    """The epoch's shuffled pairs (`epoch_order`), split over the processes, without the `done_in_epoch` optimizer
    steps a resumed run already took."""
    args = run.args
    order = epoch_order(
        run.splits["train"].caption_to_image,
        epoch,
        args.seed,
        one_caption_per_image=run.defaults.one_caption_per_image,
    )
    loader = DataLoader(
        run.train_rows.select(order),
        batch_size=args.per_device_train_batch_size,
        drop_last=True,
        collate_fn=SepsRetrievalCollator(run.processor, split=run.splits["train"]),
        num_workers=run.data_args.num_workers,
        generator=torch.Generator().manual_seed(args.seed),
    )
    loader = run.accelerator.prepare_data_loader(loader)
    if done_in_epoch:
        loader = run.accelerator.skip_first_batches(loader, done_in_epoch * args.gradient_accumulation_steps)
    return loader


def train_one_epoch(run: TrainingRun, epoch: int, bar: tqdm, checkpoint_every: int | None) -> None:
    """Optimizer steps of `epoch` (the rest of it, for a resumed run), checkpointing every `checkpoint_every`."""
    accelerator, args, progress, model = run.accelerator, run.args, run.progress, run.model
    run.objective.train()
    if run.defaults.freeze_text_model:
        model.text_model.eval()  # no dropout in a frozen encoder
    if run.defaults.freeze_vision_model:
        model.vision_model.eval()  # BatchNorm keeps its pretrained statistics
    done_in_epoch = progress.step - epoch * run.schedule.steps_per_epoch
    max_violation = epoch >= model.config.max_violation_warmup_epochs
    if max_violation and epoch == model.config.max_violation_warmup_epochs > 0:
        accelerator.print(
            f"epoch {epoch}: the triplet loss switches from the sum over all negatives to the hardest negative "
            f"(after {epoch} warm-up epochs, --max_violation_warmup_epochs)"
        )
    epoch_end_step = min(run.schedule.max_steps, (epoch + 1) * run.schedule.steps_per_epoch)
    micro_step = done_in_epoch * args.gradient_accumulation_steps
    for batch in _epoch_loader(run, epoch, done_in_epoch):
        with accelerator.accumulate(run.objective):
            seed = (args.seed * 1_000_003 + epoch * 100_003 + micro_step) % 2**63
            output = run.objective(**batch, max_violation=max_violation, selection_seed=seed)
            accelerator.backward(output.loss)
            if accelerator.sync_gradients and args.max_grad_norm > 0:
                clip_gradients(accelerator, run.objective, model, args.max_grad_norm)
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad()
        micro_step += 1
        if not accelerator.sync_gradients:
            continue
        progress.step += 1
        _log_step(run, output, epoch, bar)
        if progress.step >= epoch_end_step:
            break
        if checkpoint_every and progress.step % checkpoint_every == 0:
            save_checkpoint(run)


def _log_step(run: TrainingRun, output: SepsOutput, epoch: int, bar: tqdm) -> None:
    learning_rate = run.scheduler.get_last_lr()[0]
    bar.update(1)
    bar.set_postfix(loss=f"{output.loss.item():.3f}", lr=f"{learning_rate:.2e}", epoch=epoch)
    if run.progress.step % run.args.logging_steps == 0:
        run.accelerator.log(
            {
                "train/loss": output.loss.item(),
                "train/alignment_loss": output.alignment_loss.item(),
                "train/ratio_loss": output.ratio_loss.item(),
                **(
                    {"train/global_contrastive_loss": output.global_contrastive_loss.item()}
                    if output.global_contrastive_loss is not None
                    else {}
                ),
                "train/kept_fraction": output.sparse_keep_mask.mean().item(),
                "train/lr": learning_rate,
            },
            step=run.progress.step,
        )


def save_checkpoint(run: TrainingRun) -> None:
    """Every process writes the training state to a temporary folder; the main process then publishes it as
    `checkpoint-<step>` with the run's id (`publish_checkpoint`)."""
    accelerator, step = run.accelerator, run.progress.step
    checkpoints = run.output_dir / "checkpoints"
    temporary = checkpoints / f".tmp-{CHECKPOINT_PREFIX}{step}"
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (temporary / RUN_RECORD).write_text(json.dumps({"run_id": run.plan.run_id, "step": step}))
        publish_checkpoint(temporary, checkpoints / f"{CHECKPOINT_PREFIX}{step}", run_id=run.plan.run_id)
    accelerator.wait_for_everyone()


def validate_and_keep_best(run: TrainingRun, epoch: int) -> None:
    """Dev metrics of the epoch, logged and added to `dev_history.json`; a better dev rSum replaces `best/`."""
    accelerator, progress = run.accelerator, run.progress
    metrics = evaluate_model(
        run.model,
        run.processor,
        run.splits["dev"],
        run.args.per_device_eval_batch_size,
        accelerator,
        use_dense=run.use_dense,
        feature_cache=run.dev_features,
    )
    progress.history.append({"epoch": epoch, "step": progress.step, **metrics})
    accelerator.log({f"dev/{key}": value for key, value in metrics.items()}, step=progress.step)
    accelerator.print(
        f"epoch {epoch}: dev rsum {metrics['rsum']:.1f} (R@1 i2t {metrics['i2t_r1']:.1f}, t2i "
        f"{metrics['t2i_r1']:.1f}); first stage alone {metrics['first_stage_rsum']:.1f}"
    )
    if metrics["rsum"] > progress.best_rsum:
        progress.best_rsum, progress.best_epoch = metrics["rsum"], epoch
        if accelerator.is_main_process:
            _save_pretrained_atomically(run.model, run.processor, run.output_dir / "best")
    if accelerator.is_main_process:
        (run.output_dir / "dev_history.json").write_text(json.dumps(progress.history, indent=2))
    accelerator.wait_for_everyone()


def calibrate_scores(run: TrainingRun) -> dict[str, float]:
    """Fit the best model's `first_stage_weight` (`fit_first_stage_weight`: the fusion with the first stage that
    ranks the dev split best, 0 if none helps) and then its `logit_scale` (`fit_logit_scale`) on the dev split, and
    write both into `best/config.json` (atomically). The scale is fit on the scores without dense captions, as the
    pipelines score (they take none); the weights and the loss do not depend on either."""
    accelerator, best_dir = run.accelerator, run.output_dir / "best"
    best = SepsModel.from_pretrained(best_dir).to(accelerator.device)
    dev = run.splits["dev"]
    use_dense = run.use_dense and dev.has_dense_captions
    batch_size = run.args.per_device_eval_batch_size
    encoded = encode_split(
        best,
        run.processor,
        dev,
        batch_size,
        use_dense=use_dense,
        accelerator=accelerator,
        feature_cache=run.dev_features,
    )
    scores = scorer_similarities(best, encoded, "image" if use_dense else "none", accelerator)
    weight = 0.0
    if best.global_embedding is not None:
        weight = fit_first_stage_weight(scores["seps"], scores["first_stage"], dev.caption_to_image)
    seps_without_dense = scores["seps"]
    if use_dense:
        seps_without_dense = score_split(best, encoded, "none", accelerator=accelerator, first_stage_weight=0)
    pipeline_scores = best.fuse_scores(seps_without_dense, scores["first_stage"], weight)
    fitted = {"first_stage_weight": weight, "logit_scale": fit_logit_scale(pipeline_scores, dev.caption_to_image)}
    if accelerator.is_main_process:
        config_file = best_dir / "config.json"
        config = {**json.loads(config_file.read_text()), **fitted}
        temporary = config_file.with_name(f".tmp-{config_file.name}")
        temporary.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        os.replace(temporary, config_file)
        accelerator.print(
            f"fit on dev: first_stage_weight {weight:.3g} (score S + {weight:.3g} * first stage), logit_scale "
            f"{fitted['logit_scale']:.2f}"
        )
    accelerator.wait_for_everyone()
    return fitted


def evaluate_test_and_push(run: TrainingRun) -> dict[str, float]:
    """The best model's test metrics (written to `eval_results.json`, with the best dev epoch), its model card
    (`best/README.md`, with those metrics as its `model-index`) and its upload."""
    accelerator, args, output_dir = run.accelerator, run.args, run.output_dir
    results = {"best_epoch": run.progress.best_epoch, "best_dev_rsum": run.progress.best_rsum}
    if args.eval_test:
        best = SepsModel.from_pretrained(output_dir / "best").to(accelerator.device)
        test_name = "testall" if run.data_args.dataset == "coco" else "test"
        test = evaluate_model(
            best,
            run.processor,
            run.splits[test_name],
            args.per_device_eval_batch_size,
            accelerator,
            use_dense=run.use_dense,
        )
        results.update(first_stage_weight=best.config.first_stage_weight, **test)
        if accelerator.is_main_process:
            (output_dir / "eval_results.json").write_text(json.dumps(results, indent=2))
            accelerator.print(scorer_table(test, best.config.first_stage_weight))
    if accelerator.is_main_process:
        card = _model_card(run, results if args.eval_test else None)
        (output_dir / "best" / "README.md").write_text(card, encoding="utf-8")
    if args.push_to_hub and accelerator.is_main_process:
        from huggingface_hub import ModelCard

        best = SepsModel.from_pretrained(output_dir / "best")
        best.push_to_hub(args.hub_model_id)
        run.processor.push_to_hub(args.hub_model_id)
        ModelCard(card).push_to_hub(args.hub_model_id)
    return results


def scorer_table(metrics: dict[str, float], first_stage_weight: float) -> str:
    """The markdown table of `evaluate_model`'s metrics: the model's score, SEPS alone and the first stage alone."""
    rows = [
        (f"model: S + {first_stage_weight:.3g} * G", ""),
        ("SEPS alone (S)", "seps_"),
        ("first stage alone (G)", "first_stage_"),
    ]
    tables = [markdown_table({key: metrics[prefix + key] for key in METRIC_KEYS}, name) for name, prefix in rows]
    return "\n".join([tables[0], *(table.split("\n")[2] for table in tables[1:])])


def _model_card(run: TrainingRun, results: dict[str, float] | None) -> str:
    """The card of `best/`: what the run trained on, its backbones and settings, and its test metrics."""
    model_args, data_args = run.model_args, run.data_args
    dataset_name = data_args.dataset_name
    if dataset_name is not None and looks_like_hub_id(dataset_name) and not Path(dataset_name).exists():
        datasets_used = [dataset_name]
    else:
        datasets_used = [HUB_DATASETS[data_args.dataset]] if data_args.dataset in HUB_DATASETS else None
    source = dataset_name if dataset_name is not None else f"{data_args.data_root} (the SEPS authors' layout)"
    training = {
        "data": f"{data_args.dataset}, from {source}",
        "vision backbone": f"`{model_args.vision_model}`",
        "text backbone": f"`{model_args.text_model}`",
        "variant, embedding size": f"{model_args.variant}, {model_args.embed_dim}",
        "dense captions": "each image's own" if run.use_dense else "none",
        "optimizer steps": str(run.progress.step),
        "best dev epoch (rSum)": f"{run.progress.best_epoch} ({run.progress.best_rsum:.1f})",
    }
    name = run.args.hub_model_id or run.output_dir.name
    return render_trained_model_card(
        model_name=name.split("/")[-1],
        repo_id=run.args.hub_model_id or (run.output_dir / "best").as_posix(),
        dataset=data_args.dataset,
        training=training,
        base_model=backbone_hub_ids(model_args.vision_model, model_args.text_model),
        datasets=datasets_used,
        eval_results=results,
        dense_pairing="image" if run.use_dense else "none",
    )
