"""Image-text retrieval metrics, computed the standard way (spec section 5: VSE++, SCAN, LAPS).

i2t: for each image, the rank of the best-ranked of its captions among all captions.
t2i: for each caption, the rank of its image among all images.
R@K in percent, medr/meanr 1-based, rSum the sum of the six recalls. Ties count against the query: a
candidate scoring exactly as much as the right answer ranks ahead of it, so a constant model gets no credit.
"""

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .allocator import reuse_freed_cpu_memory

if TYPE_CHECKING:
    from accelerate import Accelerator

    from .data import RetrievalSplit
    from .modeling_seps import SepsModel
    from .processing_seps import SepsProcessor

DENSE_PAIRINGS = ("image", "query_ground_truth", "none")
LEAK_WARNING = (
    "dense_pairing='query_ground_truth' reproduces the SEPS authors' evaluation: every caption carries the dense "
    "caption of its ground-truth image, which hands the answer to the model (a label leak; see the README, Evaluate). "
    "Use its numbers only to measure the leak, never as retrieval results."
)

RECALL_KS = (1, 5, 10)
METRIC_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")


def _as_tensor(values: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    try:
        tensor = torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{name} must be a matrix of numbers, got {type(values).__name__} ({error})") from error
    if not torch.is_floating_point(tensor):
        tensor = tensor.float()
    if not torch.isfinite(tensor).all():
        bad = (~torch.isfinite(tensor)).nonzero()[:5].tolist()
        raise ValueError(f"{name} holds NaN or infinite values, e.g. at {bad}")
    return tensor


def _check_similarity_shape(shape: tuple[int, ...]) -> None:
    if 0 in shape:
        raise ValueError(f"similarity is empty (shape {shape}): the metrics need at least one image and one caption")
    if len(shape) != 2:
        raise ValueError(f"similarity must be a (N_img, N_txt) matrix, got shape {shape}")


def retrieval_ranks(
    similarity: np.ndarray | torch.Tensor, caption_to_image: Sequence[int] | np.ndarray | torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Ranks (1-based) of the right answers: i2t per image (N_img,) and t2i per caption (N_txt,).

    A query's rank is 1 + the number of WRONG candidates scoring at least as much as its best right answer.

    Args:
        similarity: (N_img, N_txt) scores, higher is better.
        caption_to_image: (N_txt,) the row of each caption's image.
    """
    sims = _as_tensor(similarity, "similarity").double()
    _check_similarity_shape(tuple(sims.shape))
    targets_array = np.asarray(caption_to_image)
    if targets_array.size and not np.issubdtype(targets_array.dtype, np.integer):
        raise ValueError(f"caption_to_image must hold integer image indices, got dtype {targets_array.dtype}")
    targets = torch.as_tensor(targets_array, dtype=torch.long)
    num_images, num_captions = sims.shape
    if targets.shape != (num_captions,):
        raise ValueError(
            f"caption_to_image must have {num_captions} entries (one per caption), got {tuple(targets.shape)}"
        )
    if num_captions and (targets.min() < 0 or targets.max() >= num_images):
        raise ValueError(
            f"caption_to_image must index the {num_images} images; got values in "
            f"[{targets.min().item()}, {targets.max().item()}]"
        )
    counts = torch.bincount(targets, minlength=num_images)
    if (counts == 0).any():
        missing = (counts == 0).nonzero().flatten()[:5].tolist()
        raise ValueError(f"every image needs at least one caption; images {missing} have none")

    right = torch.zeros(num_images, num_captions, dtype=torch.bool)
    right[targets, torch.arange(num_captions)] = True
    # i2t: the image's best-scoring own caption against the other images' captions.
    best_own = sims.masked_fill(~right, float("-inf")).amax(dim=1, keepdim=True)
    i2t = ((sims >= best_own) & ~right).sum(dim=1) + 1
    # t2i: the caption's image against the other images.
    own_score = sims.gather(0, targets[None]).squeeze(0)
    t2i = ((sims >= own_score[None]) & ~right).sum(dim=0) + 1
    return i2t.numpy(), t2i.numpy()


def recall_metrics(i2t_ranks: np.ndarray, t2i_ranks: np.ndarray) -> dict[str, float]:
    """R@1/5/10 (percent), medr and meanr both ways, and rSum from 1-based ranks."""
    metrics: dict[str, float] = {}
    for direction, ranks in (("i2t", np.asarray(i2t_ranks)), ("t2i", np.asarray(t2i_ranks))):
        if ranks.size == 0:
            raise ValueError(f"{direction}_ranks is empty: the metrics need at least one query")
        for k in RECALL_KS:
            metrics[f"{direction}_r{k}"] = 100.0 * float(np.mean(ranks <= k))
        metrics[f"{direction}_medr"] = float(np.floor(np.median(ranks)))
        metrics[f"{direction}_meanr"] = float(np.mean(ranks))
    metrics["rsum"] = sum(metrics[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in RECALL_KS)
    return metrics


def retrieval_metrics(
    similarity: np.ndarray | torch.Tensor, caption_to_image: Sequence[int] | np.ndarray | torch.Tensor
) -> dict[str, float]:
    """All metrics of one similarity matrix (N_img, N_txt) with its caption -> image map (N_txt,)."""
    return recall_metrics(*retrieval_ranks(similarity, caption_to_image))


# ---------------------------------------------------------------------------------------------------------------
# Protocols (spec section 5)
# ---------------------------------------------------------------------------------------------------------------

CAPTIONS_PER_IMAGE = 5
FOLD_SIZE = 1000


def check_five_captions_per_image(caption_to_image: Sequence[int] | np.ndarray, num_images: int) -> None:
    """The 1K/5K protocols assume 5 captions per image, stored image-major (captions 5j..5j+4 of image j)."""
    targets = np.asarray(caption_to_image)
    counts = np.bincount(targets, minlength=num_images)
    if len(targets) != CAPTIONS_PER_IMAGE * num_images or (counts != CAPTIONS_PER_IMAGE).any():
        bad = np.nonzero(counts != CAPTIONS_PER_IMAGE)[0][:5].tolist()
        raise ValueError(
            f"the 5-caption protocols need exactly {CAPTIONS_PER_IMAGE} captions per image; got {len(targets)} "
            f"captions for {num_images} images (images {bad} have {counts[bad].tolist()})"
        )
    if not np.array_equal(targets, np.repeat(np.arange(num_images), CAPTIONS_PER_IMAGE)):
        raise ValueError("the 5-caption protocols need captions in image-major order (5 per image, in image order)")


def fold_metrics(similarity: np.ndarray | torch.Tensor, caption_to_image: Sequence[int] | np.ndarray) -> list[dict]:
    """MS-COCO 1K: metrics of each fold of 1000 consecutive images and their 5000 captions."""
    sims = np.asarray(similarity)
    _check_similarity_shape(sims.shape)
    num_images = sims.shape[0]
    check_five_captions_per_image(caption_to_image, num_images)
    if num_images % FOLD_SIZE:
        raise ValueError(f"the 1K protocol splits the images into folds of {FOLD_SIZE}; got {num_images} images")
    folds = []
    for start in range(0, num_images, FOLD_SIZE):
        rows = slice(start, start + FOLD_SIZE)
        columns = slice(start * CAPTIONS_PER_IMAGE, (start + FOLD_SIZE) * CAPTIONS_PER_IMAGE)
        targets = np.repeat(np.arange(FOLD_SIZE), CAPTIONS_PER_IMAGE)
        folds.append(retrieval_metrics(sims[rows, columns], targets))
    return folds


def mean_metrics(metrics: Sequence[dict[str, float]]) -> dict[str, float]:
    if not metrics:
        raise ValueError("mean_metrics needs at least one metrics dict, got none")
    return {key: float(np.mean([m[key] for m in metrics])) for key in metrics[0]}


# ---------------------------------------------------------------------------------------------------------------
# Encoding and scoring a split
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class EncodedSplit:
    """Everything `SepsModel.similarity` needs for a split, each image and caption encoded once.

    image_embeds (N_img, L_v, C); text_embeds (N_txt, L_t, C) and text_mask (N_txt, L_t); dense_embeds
    (N_img, L_d, C) and dense_mask (N_img, L_d), or None; caption_to_image (N_txt,).
    """

    image_embeds: torch.Tensor
    text_embeds: torch.Tensor
    text_mask: torch.Tensor
    dense_embeds: torch.Tensor | None
    dense_mask: torch.Tensor | None
    caption_to_image: np.ndarray


def pad_and_stack(chunks: list[torch.Tensor], masks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(chunk.shape[1] for chunk in chunks)
    embeds = torch.cat([F.pad(chunk, (0, 0, 0, length - chunk.shape[1])) for chunk in chunks])
    mask = torch.cat([F.pad(mask, (0, length - mask.shape[1])) for mask in masks])
    return embeds, mask


@torch.no_grad()
def encode_split(
    model: "SepsModel",
    processor: "SepsProcessor",
    split: "RetrievalSplit",
    batch_size: int = 64,
    use_dense: bool = True,
    num_workers: int = 0,
    accelerator: "Accelerator | None" = None,
    progress: bool = True,
) -> EncodedSplit:
    """Encode every image (with its own dense caption) and every caption of `split` once, in batches.

    Under Accelerate the batches are split over the processes and the embeddings gathered in order.
    """
    from .data import SepsRetrievalCollator, build_caption_dataset, build_image_dataset

    if use_dense and not split.has_dense_captions:
        raise ValueError(
            f"{split.dataset}/{split.split} has no dense captions but dense captions were asked for; "
            "generate them (examples/generate_dense_captions.py) or evaluate without them"
        )
    model.eval()
    device = accelerator.device if accelerator is not None else model.device
    collator = SepsRetrievalCollator(processor)
    images = build_image_dataset(split)
    if not use_dense:
        images = images.remove_columns(["dense_caption"])
    captions = build_caption_dataset(split).remove_columns(["image_path", "dense_caption"])

    def batches(dataset, description):
        loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collator, num_workers=num_workers)
        if accelerator is not None:
            loader = accelerator.prepare_data_loader(loader, device_placement=False)
        main = accelerator is None or accelerator.is_main_process
        return tqdm(loader, desc=description, disable=not (progress and main))

    def gather(tensor):
        if accelerator is None:
            return tensor.cpu()
        return accelerator.gather_for_metrics(accelerator.pad_across_processes(tensor, dim=1)).cpu()

    image_chunks, dense_chunks, dense_masks = [], [], []
    for batch in batches(images, "encoding images"):
        image_chunks.append(gather(model.get_image_features(batch["pixel_values"].to(device))))
        if use_dense:
            mask = batch["dense_attention_mask"].to(device)
            dense_chunks.append(gather(model.get_text_features(batch["dense_input_ids"].to(device), mask)))
            dense_masks.append(gather(mask))
    text_chunks, text_masks = [], []
    for batch in batches(captions, "encoding captions"):
        mask = batch["attention_mask"].to(device)
        text_chunks.append(gather(model.get_text_features(batch["input_ids"].to(device), mask)))
        text_masks.append(gather(mask))
    text_embeds, text_mask = pad_and_stack(text_chunks, text_masks)
    dense_embeds, dense_mask = pad_and_stack(dense_chunks, dense_masks) if use_dense else (None, None)
    return EncodedSplit(
        torch.cat(image_chunks), text_embeds, text_mask, dense_embeds, dense_mask, np.asarray(split.caption_to_image)
    )


@torch.no_grad()
def score_split(
    model: "SepsModel",
    encoded: EncodedSplit,
    dense_pairing: str = "image",
    images_per_block: int = 50,
    chunk_size: int | None = None,
    accelerator: "Accelerator | None" = None,
    progress: bool = True,
) -> np.ndarray:
    """The (N_img, N_txt) similarity matrix, in blocks of images; under Accelerate the blocks are split over the
    processes and the rows gathered, so any number of processes gives the same matrix.

    dense_pairing:
        "image": each candidate image uses its own dense caption (the honest protocol, default).
        "none": no dense caption.
        "query_ground_truth": the SEPS authors' protocol, every caption carries its ground-truth image's dense
            caption (a label leak; warns). Only for measuring the leak.
    """
    if dense_pairing not in DENSE_PAIRINGS:
        raise ValueError(f"dense_pairing must be one of {DENSE_PAIRINGS}, got {dense_pairing!r}")
    if dense_pairing != "none" and encoded.dense_embeds is None:
        raise ValueError(f"dense_pairing={dense_pairing!r} needs dense captions, and this split was encoded without")
    if dense_pairing == "query_ground_truth" and (accelerator is None or accelerator.is_main_process):
        warnings.warn(LEAK_WARNING, stacklevel=3)  # 3: the caller of score_split, above torch.no_grad's wrapper
    model.eval()
    device = accelerator.device if accelerator is not None else model.device
    num_images = encoded.image_embeds.shape[0]
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    rows = _process_rows(num_images, rank, world)
    texts = encoded.text_embeds.to(device), encoded.text_mask.to(device)
    scores = []
    blocks = range(rows.start, rows.stop, images_per_block)
    for start in tqdm(blocks, desc=f"scoring ({dense_pairing})", disable=not (progress and rank == 0)):
        block = slice(start, min(start + images_per_block, rows.stop))
        images = encoded.image_embeds[block].to(device)
        if dense_pairing == "image":
            dense = encoded.dense_embeds[block].to(device), encoded.dense_mask[block].to(device)
            scores.append(model.similarity(images, *texts, *dense, chunk_size=chunk_size))
        elif dense_pairing == "none":
            scores.append(model.similarity(images, *texts, chunk_size=chunk_size))
        else:
            scores.append(_leaky_similarity(model, images, *texts, encoded, chunk_size))
    local = torch.cat(scores).cpu() if scores else torch.zeros(0, encoded.text_embeds.shape[0])
    if world == 1:
        return local.numpy()
    # Equal-sized pieces for the all-gather, then each process's real rows in rank order.
    per_process = len(_process_rows(num_images, 0, world))
    padded = F.pad(local, (0, 0, 0, per_process - local.shape[0])).to(device)
    gathered = accelerator.gather(padded).cpu().view(world, per_process, -1)
    return torch.cat([gathered[r, : len(_process_rows(num_images, r, world))] for r in range(world)]).numpy()


def _process_rows(num_images: int, rank: int, world: int) -> range:
    """The contiguous block of image rows that process `rank` of `world` scores."""
    per_process = -(-num_images // world)
    return range(min(num_images, rank * per_process), min(num_images, (rank + 1) * per_process))


def _leaky_similarity(
    model: "SepsModel",
    images: torch.Tensor,
    text_embeds: torch.Tensor,
    text_mask: torch.Tensor,
    encoded: EncodedSplit,
    chunk_size: int | None,
) -> torch.Tensor:
    """S(I_j, T_i) computed with D_gt(i), the dense caption of the caption's ground-truth image (the SEPS
    authors' pairing; a label leak kept for the audit only)."""
    dense_embeds = encoded.dense_embeds.to(images.device)
    dense_mask = encoded.dense_mask.to(images.device)
    targets = torch.as_tensor(encoded.caption_to_image, device=images.device)
    return model.head.leaky_pairing_similarity(
        model, images, text_embeds, text_mask, dense_embeds, dense_mask, targets, chunk_size
    )


def markdown_table(metrics: dict[str, float], title: str = "") -> str:
    """A one-row markdown table of the standard metrics (and medr/meanr when present)."""
    keys = [key for key in (*METRIC_KEYS[:3], "i2t_medr", *METRIC_KEYS[3:6], "t2i_medr", "rsum") if key in metrics]
    header = "| " + " | ".join(([""] if title else []) + keys) + " |"
    rule = "|" + " --- |" * (len(keys) + bool(title))
    row = "| " + " | ".join(([title] if title else []) + [f"{metrics[key]:.1f}" for key in keys]) + " |"
    return "\n".join([header, rule, row])


# ---------------------------------------------------------------------------------------------------------------
# The evaluation run behind examples/evaluate_retrieval.py
# ---------------------------------------------------------------------------------------------------------------


def protocol_metrics(similarity: np.ndarray, split: "RetrievalSplit") -> dict:
    """Metrics under the standard protocol of the split (spec section 5).

    Flickr30K test: the 1K protocol (1000 images x 5000 captions). MS-COCO testall: 5K on the whole matrix
    (top-level keys) plus the mean of the five 1K folds (`coco_1k`) and each fold (`coco_1k_folds`). Other
    splits: every image against every caption.
    """
    five_caption_protocol = (split.dataset, split.split) in (("f30k", "test"), ("coco", "testall"))
    if five_caption_protocol:
        check_five_captions_per_image(split.caption_to_image, split.num_images)
    metrics: dict = retrieval_metrics(similarity, split.caption_to_image)
    if (split.dataset, split.split) == ("coco", "testall"):
        folds = fold_metrics(similarity, split.caption_to_image)
        metrics["coco_1k"] = mean_metrics(folds)
        metrics["coco_1k_folds"] = folds
    return metrics


def leak_audit(honest: dict, leaky: dict) -> dict:
    """Side-by-side report of the honest and the authors' pairing, with the difference (leaky - honest)."""
    return {
        "honest": honest,
        "query_ground_truth": leaky,
        "difference": {key: leaky[key] - honest[key] for key in honest if isinstance(honest[key], float)},
    }


def audit_table(audit: dict) -> str:
    keys = [key for key in (*METRIC_KEYS[:6], "rsum")]
    lines = ["| dense pairing | " + " | ".join(keys) + " |", "|" + " --- |" * (len(keys) + 1)]
    for label, name in (("image (honest)", "honest"), ("query_ground_truth (leak)", "query_ground_truth")):
        lines.append(f"| {label} | " + " | ".join(f"{audit[name][key]:.1f}" for key in keys) + " |")
    lines.append("| difference | " + " | ".join(f"{audit['difference'][key]:+.1f}" for key in keys) + " |")
    return "\n".join(lines)


DATASETS = ("f30k", "coco", "synthetic")
SPLITS = ("train", "dev", "test", "testall")


@dataclass
class EvaluationArguments:
    model: str = field(metadata={"help": "A saved SepsModel folder (with its processor) or a hub id."})
    data_root: str = field(metadata={"help": "Annotation folder in the SEPS authors' layout."})
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
    batch_size: int = field(default=64, metadata={"help": "Images or captions per encoding batch."})
    images_per_block: int = field(default=50, metadata={"help": "Images per scoring block."})
    output_json: str | None = field(default=None, metadata={"help": "Write the metrics here."})
    save_sims: str | None = field(default=None, metadata={"help": "Write the similarity matrix here (.npy)."})


def infer_dataset(data_root: str | os.PathLike) -> tuple[str, str] | None:
    """The dataset of an annotation folder and the file that tells it, or None: a synthetic benchmark has
    `synthetic_info.json`, MS-COCO `testall_*` files or `coco_*.jsonl`, Flickr30K `f30k_*.jsonl` or `test_*` files."""
    from .data.synthetic import INFO_FILE

    root = Path(data_root)
    patterns = (
        ("synthetic", INFO_FILE),
        ("coco", "testall_caps.txt"),
        ("coco", "coco_*.jsonl"),
        ("f30k", "f30k_*.jsonl"),
        ("f30k", "test_caps.txt"),
    )
    for dataset, pattern in patterns:
        found = sorted(root.glob(pattern))
        if found:
            return dataset, found[0].name
    return None


def resolve_evaluation_arguments(args: EvaluationArguments) -> EvaluationArguments:
    """Check every argument before any work (a `UsageError` names the flag) and fill in `dataset` (inferred from
    the folder) and `split` (the dataset's test split)."""
    from .cli import UsageError, check_choice, check_existing, check_int, check_model_location, check_writable_file
    from .data import RetrievalFiles

    check_model_location("model", args.model)
    check_existing("data_root", args.data_root, "folder")
    check_choice("dense_pairing", args.dense_pairing, DENSE_PAIRINGS)
    check_int("batch_size", args.batch_size, 1)
    check_int("images_per_block", args.images_per_block, 1)
    inferred = infer_dataset(args.data_root)
    dataset = args.dataset
    if dataset is None:
        if inferred is None:
            raise UsageError(
                f"--data_root {args.data_root}: cannot tell its dataset; pass --dataset f30k|coco|synthetic"
            )
        dataset = inferred[0]
    check_choice("dataset", dataset, DATASETS)
    if inferred is not None and inferred[0] != dataset:
        raise UsageError(
            f"--dataset {dataset}, but --data_root {args.data_root} holds a {inferred[0]} folder ({inferred[1]}); "
            f"pass --dataset {inferred[0]} or leave it out"
        )
    split = args.split or ("testall" if dataset == "coco" else "test")
    check_choice("split", split, SPLITS)
    files = RetrievalFiles.in_folder(args.data_root, dataset, split)
    if not files.captions.is_file():
        raise UsageError(f"--split {split}: --data_root {args.data_root} has no {files.captions.name}")
    if args.dense_pairing != "none" and not files.dense_captions.is_file():
        raise UsageError(
            f"--dense_pairing {args.dense_pairing} needs the dense-caption file {files.dense_captions}, which does "
            "not exist: pass --dense_pairing none to evaluate without dense captions, or write them with "
            "examples/generate_dense_captions.py"
        )
    for flag in ("output_json", "save_sims"):
        if getattr(args, flag) is not None:
            check_writable_file(flag, getattr(args, flag))
    return replace(args, dataset=dataset, split=split)


def run_evaluation(args: EvaluationArguments) -> dict:
    """Encode a split once, score it in blocks (split over processes under Accelerate), report the protocol's
    metrics (markdown on stdout, JSON to `output_json`) and optionally save the similarity matrix."""
    from accelerate import Accelerator

    from .data import load_retrieval_split
    from .modeling_seps import SepsModel
    from .processing_seps import SepsProcessor

    args = resolve_evaluation_arguments(args)
    reuse_freed_cpu_memory()
    # cpu=True on a machine without GPU lets `torchrun --nproc_per_node N` run N gloo processes.
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    accelerator.print(f"evaluating on {accelerator.num_processes} process(es)")
    model = SepsModel.from_pretrained(args.model).to(accelerator.device).eval()
    processor = SepsProcessor.from_pretrained(args.model)
    use_dense = args.dense_pairing != "none"
    split = load_retrieval_split(
        args.data_root, args.dataset, args.split, args.image_root, dense_captions="required" if use_dense else "ignore"
    )
    encoded = encode_split(model, processor, split, args.batch_size, use_dense=use_dense, accelerator=accelerator)
    honest_pairing = "image" if use_dense else "none"
    similarity = score_split(model, encoded, honest_pairing, args.images_per_block, accelerator=accelerator)
    report = protocol_metrics(similarity, split)
    table = markdown_table(report, f"{args.dataset}/{args.split}, dense pairing: {honest_pairing}")
    if "coco_1k" in report:
        table += "\n" + markdown_table(report["coco_1k"], "COCO 1K (mean of 5 folds)").split("\n", 2)[2]
    if args.dense_pairing == "query_ground_truth":
        leaky = score_split(model, encoded, "query_ground_truth", args.images_per_block, accelerator=accelerator)
        report = leak_audit(report, protocol_metrics(leaky, split))
        table += "\n\nLeak audit (the SEPS authors' pairing attaches the query's ground-truth dense caption):\n"
        table += audit_table(report)
    if accelerator.is_main_process:
        print(table)
        for path in (args.output_json, args.save_sims):
            if path:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        if args.output_json:
            Path(args.output_json).write_text(json.dumps(report, indent=2))
        if args.save_sims:
            np.save(args.save_sims, similarity)
    accelerator.wait_for_everyone()
    accelerator.end_training()  # tears the process group down before the interpreter exits
    return report
