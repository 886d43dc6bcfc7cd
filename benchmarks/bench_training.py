"""Training speed of the synthetic benchmark's default run with and without the frozen backbones' cached tokens
(`--cache_frozen_features`): the time to prepare the run (build the model, read the data, and with the cache encode
every training and dev input once), the optimizer steps per second, and a dev evaluation; the same model, data
and seed both ways.

    .venv/bin/python benchmarks/bench_training.py --data_root data/synthetic --steps 60 [--output_json speed.json]

Any option of `examples/train_retrieval.py` sets up the run (its `--output_dir` is a temporary folder).
"""

import json
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import HfArgumentParser

from transformers_seps.train.arguments import DataArguments, ModelArguments, RetrievalTrainingArguments
from transformers_seps.train.training import evaluate_model, prepare_run, train_one_epoch


@dataclass
class BenchmarkArguments:
    steps: int = field(default=60, metadata={"help": "Optimizer steps timed."})
    output_json: str | None = field(default=None, metadata={"help": "Write the numbers here."})


def measure(
    model_args: ModelArguments, data_args: DataArguments, args: RetrievalTrainingArguments, steps: int
) -> dict[str, float]:
    start = time.perf_counter()
    run = prepare_run(model_args, data_args, args)
    prepared = time.perf_counter() - start
    start = time.perf_counter()
    train_one_epoch(run, 0, tqdm(disable=True), None)
    step_seconds = (time.perf_counter() - start) / steps
    start = time.perf_counter()
    evaluate_model(
        run.model, run.processor, run.splits["dev"], args.per_device_eval_batch_size, run.accelerator,
        use_dense=run.use_dense, feature_cache=run.dev_features,
    )  # fmt: skip
    dev_seconds = time.perf_counter() - start
    return {
        "prepare_seconds": prepared,
        "steps_per_second": 1 / step_seconds,
        "dev_evaluation_seconds": dev_seconds,
        "epoch_seconds": run.schedule.steps_per_epoch * step_seconds + dev_seconds,
    }


def main() -> None:
    parser = HfArgumentParser((ModelArguments, DataArguments, RetrievalTrainingArguments, BenchmarkArguments))
    parser.description = __doc__
    model_args, data_args, training_args, bench = parser.parse_args_into_dataclasses()
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for cache in (False, True):
            args = replace(
                training_args,
                output_dir=f"{folder}/{cache}",
                max_steps=bench.steps,
                cache_frozen_features=cache,
                eval_test=False,
            )
            results["cached" if cache else "encoded"] = measure(model_args, data_args, args, bench.steps)
    print(f"{torch.get_num_threads()} threads, {bench.steps} steps timed")
    print("| backbone tokens | prepare the run (s) | steps per second | dev evaluation (s) | one epoch (s) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, row in results.items():
        cells = [
            f"{row[key]:.1f}"
            for key in ("prepare_seconds", "steps_per_second", "dev_evaluation_seconds", "epoch_seconds")
        ]
        title = "cached once (--cache_frozen_features true)" if name == "cached" else "encoded at every step"
        print(f"| {title} | " + " | ".join(cells) + " |")
    if bench.output_json:
        Path(bench.output_json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
