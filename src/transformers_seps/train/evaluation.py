"""Evaluation of a SEPS model on a split (`examples/evaluate_retrieval.py`): encode every image and caption once,
score the similarity matrix in blocks (split over processes under Accelerate), and report the protocol's metrics
(`transformers_seps.metrics`; docs/model.md, section 5).
"""

import json
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..feature_cache import FrozenFeatureCache
from ..global_embedding import first_stage_scores
from ..metrics import (
    METRIC_KEYS,
    check_five_captions_per_image,
    fold_metrics,
    markdown_table,
    mean_metrics,
    retrieval_metrics,
)
from ..modeling_seps import SepsModel
from ..processing_seps import SepsProcessor
from ..retrieval import global_image_embeds, pad_and_stack
from .allocator import reuse_freed_cpu_memory
from .arguments import DATASETS, DENSE_PAIRINGS, SCORERS, SPLITS, EvaluationArguments
from .cli import UsageError, check_choice, check_existing, check_int, check_model_location, check_writable_file
from .data import (
    RetrievalFiles,
    RetrievalSplit,
    SepsRetrievalCollator,
    build_caption_dataset,
    build_image_dataset,
    load_split,
)
from .data.hub import check_hub_dataset_arguments
from .data.synthetic import INFO_FILE

if TYPE_CHECKING:
    from accelerate import Accelerator

LEAK_WARNING = (
    "dense_pairing='query_ground_truth' reproduces the SEPS authors' evaluation: every caption carries the dense "
    "caption of its ground-truth image, which hands the answer to the model (a label leak; see docs/evaluation.md). "
    "Use its numbers only to measure the leak, never as retrieval results."
)


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


def cache_frozen_features(
    model: "SepsModel",
    processor: "SepsProcessor",
    split: "RetrievalSplit",
    batch_size: int = 64,
    *,
    images: bool = True,
    texts: bool = True,
    use_dense: bool = True,
    progress: bool = True,
) -> FrozenFeatureCache:
    """The tokens of frozen backbones for the inputs of `split`, each encoded once (`transformers_seps.feature_cache`):
    its images by image id (with `images`), its captions by caption index and, with `use_dense`, its dense captions
    by image id (with `texts`). The backbones must be frozen and in eval mode."""
    cache = FrozenFeatureCache()
    if images:
        collator = SepsRetrievalCollator(processor, split=split)
        loader = DataLoader(
            build_image_dataset(split).remove_columns(["dense_caption"]), batch_size=batch_size, collate_fn=collator
        )
        for batch in tqdm(loader, desc=f"encoding {split.split} images", disable=not progress):
            cache.add_images(model, batch["image_ids"].tolist(), batch["pixel_values"])
    if texts:
        captions = processor(text=split.captions)
        cache.add_texts(
            "captions", model, range(split.num_captions), captions["input_ids"], captions["attention_mask"],
            batch_size, progress,
        )  # fmt: skip
        if use_dense:
            dense = processor(dense_text=split.dense_captions)
            cache.add_texts(
                "dense", model, split.image_ids, dense["dense_input_ids"], dense["dense_attention_mask"], batch_size,
                progress,
            )  # fmt: skip
    return cache


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
    feature_cache: FrozenFeatureCache | None = None,
) -> EncodedSplit:
    """Encode every image (with its own dense caption) and every caption of `split` once, in batches.

    Under Accelerate the batches are split over the processes and the embeddings gathered in order. With a
    `feature_cache` of the split's backbone tokens (`cache_frozen_features`, both backbones frozen), only the
    projections run, in every process.
    """
    if use_dense and not split.has_dense_captions:
        raise ValueError(
            f"{split.dataset}/{split.split} has no dense captions but dense captions were asked for; "
            "generate them (examples/generate_dense_captions.py) or evaluate without them"
        )
    model.eval()
    if feature_cache is not None:
        return _encode_cached_split(model, split, feature_cache, use_dense, batch_size)
    device = accelerator.device if accelerator is not None else model.device
    collator = SepsRetrievalCollator(processor, split=split)
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
        image_chunks.append(gather(model.encode_image(batch["pixel_values"].to(device))))
        if use_dense:
            mask = batch["dense_attention_mask"].to(device)
            dense_chunks.append(gather(model.encode_text(batch["dense_input_ids"].to(device), mask)))
            dense_masks.append(gather(mask))
    text_chunks, text_masks = [], []
    for batch in batches(captions, "encoding captions"):
        mask = batch["attention_mask"].to(device)
        text_chunks.append(gather(model.encode_text(batch["input_ids"].to(device), mask)))
        text_masks.append(gather(mask))
    text_embeds, text_mask = pad_and_stack(text_chunks, text_masks)
    dense_embeds, dense_mask = pad_and_stack(dense_chunks, dense_masks) if use_dense else (None, None)
    return EncodedSplit(
        torch.cat(image_chunks), text_embeds, text_mask, dense_embeds, dense_mask, np.asarray(split.caption_to_image)
    )


def _encode_cached_split(
    model: "SepsModel", split: "RetrievalSplit", cache: FrozenFeatureCache, use_dense: bool, batch_size: int
) -> EncodedSplit:
    """`encode_split` from the split's cached backbone tokens: the projections only."""
    device = model.device

    def blocks(keys: list[int]) -> list[torch.Tensor]:
        return [torch.tensor(keys[start : start + batch_size]) for start in range(0, len(keys), batch_size)]

    def texts(kind: str, keys: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = [cache.text_tokens(kind, block, device) for block in blocks(keys)]
        return pad_and_stack(
            [model.text_projection(hidden).cpu() for hidden, _ in tokens], [m.cpu() for _, m in tokens]
        )

    image_embeds = torch.cat(
        [model.vision_projection(cache.image_tokens(block, device)).cpu() for block in blocks(split.image_ids)]
    )
    text_embeds, text_mask = texts("captions", list(range(split.num_captions)))
    dense_embeds, dense_mask = texts("dense", split.image_ids) if use_dense else (None, None)
    return EncodedSplit(
        image_embeds, text_embeds, text_mask, dense_embeds, dense_mask, np.asarray(split.caption_to_image)
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
    dtype: torch.dtype = torch.float32,
    first_stage_weight: float | None = None,
) -> np.ndarray:
    """The (N_img, N_txt) similarity matrix, in blocks of images; under Accelerate the blocks are split over the
    processes and the rows gathered, so any number of processes gives the same matrix. `dtype` and
    `first_stage_weight`: those of `SepsModel.similarity` (the "query_ground_truth" audit scores S alone, in
    float32).

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
        if dense_pairing == "query_ground_truth":
            scores.append(_leaky_similarity(model, images, *texts, encoded, chunk_size))
            continue
        dense = ()
        if dense_pairing == "image":
            dense = encoded.dense_embeds[block].to(device), encoded.dense_mask[block].to(device)
        scores.append(
            model.similarity(
                images, *texts, *dense, chunk_size=chunk_size, dtype=dtype, first_stage_weight=first_stage_weight
            )
        )
    local = torch.cat(scores).cpu() if scores else torch.zeros(0, encoded.text_embeds.shape[0])
    if world == 1:
        return local.numpy()
    # Equal-sized pieces for the all-gather, then each process's real rows in rank order.
    per_process = len(_process_rows(num_images, 0, world))
    padded = F.pad(local, (0, 0, 0, per_process - local.shape[0])).to(device)
    gathered = accelerator.gather(padded).cpu().view(world, per_process, -1)
    return torch.cat([gathered[r, : len(_process_rows(num_images, r, world))] for r in range(world)]).numpy()


@torch.no_grad()
def first_stage_similarity(model: "SepsModel", encoded: EncodedSplit) -> np.ndarray:
    """The (N_img, N_txt) scores of the first stage alone (`transformers_seps.global_embedding.first_stage_scores`
    of the global embeddings of the encoded split): what a two-stage search shortlists by."""
    model.eval()
    text_global = torch.cat(
        [
            model.global_text_embeds(embeds.to(model.device), mask.to(model.device)).cpu()
            for embeds, mask in zip(encoded.text_embeds.split(256), encoded.text_mask.split(256), strict=True)
        ]
    )
    return first_stage_scores(text_global, global_image_embeds(model, encoded.image_embeds)).t().numpy()


def scorer_similarities(
    model: "SepsModel", encoded: EncodedSplit, dense_pairing: str = "image", accelerator: "Accelerator | None" = None
) -> dict[str, np.ndarray]:
    """The (N_img, N_txt) scores of an encoded split by each of `SCORERS`, SEPS scored once (honest pairings only)."""
    seps = score_split(model, encoded, dense_pairing, accelerator=accelerator, progress=False, first_stage_weight=0)
    first_stage = first_stage_similarity(model, encoded)
    return {"model": model.fuse_scores(seps, first_stage), "seps": seps, "first_stage": first_stage}


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


# ---------------------------------------------------------------------------------------------------------------
# The evaluation run behind examples/evaluate_retrieval.py
# ---------------------------------------------------------------------------------------------------------------


def protocol_metrics(similarity: np.ndarray, split: "RetrievalSplit") -> dict:
    """Metrics under the standard protocol of the split (docs/model.md, section 5).

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


def infer_dataset(data_root: str | os.PathLike) -> tuple[str, str] | None:
    """The dataset of an annotation folder and the file that tells it, or None: a synthetic benchmark has
    `synthetic_info.json`, MS-COCO `testall_*` files or `coco_*.jsonl`, Flickr30K `f30k_*.jsonl` or `test_*` files."""
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
    check_model_location("model", args.model)
    check_choice("dense_pairing", args.dense_pairing, DENSE_PAIRINGS)
    check_choice("scorer", args.scorer, SCORERS)
    if args.scorer == "first_stage" and args.dense_pairing == "query_ground_truth":
        raise UsageError("--dense_pairing query_ground_truth audits SEPS's dense captions: the first stage has none")
    check_int("batch_size", args.batch_size, 1)
    check_int("images_per_block", args.images_per_block, 1)
    for flag in ("output_json", "save_sims"):
        if getattr(args, flag) is not None:
            check_writable_file(flag, getattr(args, flag))
    if args.dataset_name is not None:
        return _resolve_hub_dataset_arguments(args)
    if args.data_root is None:
        raise UsageError("pass --data_root (a folder in the SEPS authors' layout) or --dataset_name (a dataset)")
    check_existing("data_root", args.data_root, "folder")
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
    return replace(args, dataset=dataset, split=split)


def _resolve_hub_dataset_arguments(args: EvaluationArguments) -> EvaluationArguments:
    """`resolve_evaluation_arguments` for `--dataset_name`: `--dataset` is required (nothing to infer it from)."""
    if args.data_root is not None:
        raise UsageError(f"--data_root {args.data_root} and --dataset_name {args.dataset_name}: pass one of them")
    if args.dataset is None:
        raise UsageError("--dataset_name needs --dataset f30k|coco (the protocol of the test split)")
    check_hub_dataset_arguments(args, args.dataset, needs_dense_captions=args.dense_pairing != "none")
    split = args.split or ("testall" if args.dataset == "coco" else "test")
    check_choice("split", split, SPLITS)
    return replace(args, split=split)


def run_evaluation(args: EvaluationArguments) -> dict:
    """Encode a split once, score it in blocks (split over processes under Accelerate), report the protocol's
    metrics (markdown on stdout, JSON to `output_json`) and optionally save the similarity matrix."""
    from accelerate import Accelerator

    args = resolve_evaluation_arguments(args)
    reuse_freed_cpu_memory()
    # cpu=True on a machine without GPU lets `torchrun --nproc_per_node N` run N gloo processes.
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    accelerator.print(f"evaluating on {accelerator.num_processes} process(es)")
    model = SepsModel.from_pretrained(args.model).to(accelerator.device).eval()
    processor = SepsProcessor.from_pretrained(args.model)
    use_dense = args.dense_pairing != "none"
    split = load_split(args, args.dataset, args.split, "required" if use_dense else "ignore")
    encoded = encode_split(model, processor, split, args.batch_size, use_dense=use_dense, accelerator=accelerator)
    honest_pairing = "image" if use_dense else "none"
    # The leak audit compares SEPS's own score S under both pairings.
    scorer = "seps" if args.dense_pairing == "query_ground_truth" else args.scorer
    if scorer == "first_stage":
        similarity = first_stage_similarity(model, encoded)
    else:
        similarity = score_split(
            model, encoded, honest_pairing, args.images_per_block, accelerator=accelerator,
            dtype=getattr(torch, args.scoring_dtype), first_stage_weight=0 if scorer == "seps" else None,
        )  # fmt: skip
    report = protocol_metrics(similarity, split)
    score = {"model": f"S + {model.config.first_stage_weight:g} * G", "seps": "S", "first_stage": "G"}[scorer]
    table = markdown_table(report, f"{args.dataset}/{args.split}, score {score}, dense pairing: {honest_pairing}")
    if "coco_1k" in report:
        table += "\n" + markdown_table(report["coco_1k"], "COCO 1K (mean of 5 folds)").split("\n", 2)[2]
    if args.dense_pairing == "query_ground_truth":
        leaky = score_split(model, encoded, "query_ground_truth", args.images_per_block, accelerator=accelerator)
        report = leak_audit(report, protocol_metrics(leaky, split))
        table += "\n\nLeak audit (the SEPS authors' pairing attaches the query's ground-truth dense caption):\n"
        table += audit_table(report)
    report["scorer"] = {"name": scorer, "score": score}
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
