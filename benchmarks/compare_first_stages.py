"""The first stages of an index against the exact one, on trained models and a real split: for each first stage
(`SepsRetriever.save(first_stage=...)`: FAISS exact, FAISS HNSW, Qdrant embedded), how often its shortlist of each
size is the exact one (the same images, in the same order), the share of the exact shortlist's images it holds,
and the time per query (all captions searched at once). Indexes are written under `--output_dir` and deleted.

    python benchmarks/compare_first_stages.py --models runs/demo/best --data_root data/synthetic \\
        [--shortlist_sizes 10 50 100] [--results_file docs/results/NAME.json]
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch
from bench_token_codecs import write_index
from results import Column, Recorder, Table, add_results_argument

from transformers_seps import SepsModel, SepsProcessor
from transformers_seps.train.allocator import reuse_freed_cpu_memory
from transformers_seps.train.data import load_retrieval_split
from transformers_seps.train.evaluation import encode_split

COLUMNS = [
    Column("first_stage", "first stage"),
    Column("size", "shortlist", "{:.0f}"),
    Column("same", "captions with the exact shortlist (%)", "{:.1f}"),
    Column("recall", "exact shortlist's images held (%)", "{:.2f}"),
    Column("ms_per_query", "ms per query", "{:.2f}"),
]


def shortlists(model: SepsModel, directory: Path, encoded, first_stage: str, sizes: list[int]) -> dict:
    """Per shortlist size: the (N_txt, size) shortlists of the first stage and the seconds per query."""
    gallery = write_index(directory, model, encoded.image_embeds, None, None, "float16", first_stage)
    text_global = model.global_text_embeds(encoded.text_embeds, encoded.text_mask)
    measured = {}
    for size in sizes:
        gallery.shortlist(text_global[:1], size)  # warms up
        begin = time.perf_counter()
        result = gallery.shortlist(text_global, size)
        measured[size] = (result, (time.perf_counter() - begin) / len(text_global))
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["runs/demo/best"], help="trained model folders or hub ids")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--data_root", default="data/synthetic")
    parser.add_argument("--split", default="test")
    parser.add_argument("--first_stages", nargs="+", default=["hnsw", "qdrant"], help="compared with exact")
    parser.add_argument("--shortlist_sizes", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument(
        "--output_dir", default=None, help="where the indexes are written (deleted); default: a temp dir"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    add_results_argument(parser)
    args = parser.parse_args()
    recorder = Recorder(args.results_file)
    if args.threads:
        torch.set_num_threads(args.threads)

    reuse_freed_cpu_memory()
    torch.set_grad_enabled(False)
    split = load_retrieval_split(args.data_root, args.dataset, args.split)
    sizes = [size for size in args.shortlist_sizes if size < split.num_images]
    per_stage = {kind: {size: [] for size in sizes} for kind in ["exact", *args.first_stages]}
    with tempfile.TemporaryDirectory(dir=args.output_dir) as temporary:
        for number, folder in enumerate(args.models):
            model = SepsModel.from_pretrained(folder).eval()
            encoded = encode_split(model, SepsProcessor.from_pretrained(folder), split, use_dense=False, progress=False)
            measured = {
                kind: shortlists(model, Path(temporary) / f"model{number}-{kind}", encoded, kind, sizes)
                for kind in per_stage
            }
            for kind, by_size in measured.items():
                for size, (result, seconds) in by_size.items():
                    exact = measured["exact"][size][0]
                    held = (result.unsqueeze(2) == exact.unsqueeze(1)).any(dim=2).float().mean().item()
                    same = (result == exact).all(dim=1).float().mean().item()
                    per_stage[kind][size].append({"same": 100 * same, "recall": 100 * held, "ms": 1000 * seconds})
    rows = [
        {
            "first_stage": kind,
            "size": size,
            **{key: [m[key] for m in runs] for key in ("same", "recall")},
            "ms_per_query": [m["ms"] for m in runs],
        }
        for kind, by_size in per_stage.items()
        for size, runs in by_size.items()
    ]
    notes = (
        f"{args.dataset}/{args.split}: {split.num_images} images, {split.num_captions} caption queries; "
        f"{len(args.models)} model(s){', mean ± standard deviation' if len(args.models) > 1 else ''}."
    )
    table = Table(COLUMNS, rows)
    print(f"{notes} {torch.get_num_threads()} threads.")
    print(table.markdown())
    recorder.write({"main": table}, notes=notes)


if __name__ == "__main__":
    main()
