"""Training speed of the synthetic benchmark's default run with and without the frozen backbones' cached tokens
(`--cache_frozen_features`): the time to prepare the run (build the model, read the data, and with the cache encode
every training and dev input once), the optimizer steps per second, and a dev evaluation; the same model, data
and seed both ways.

    python benchmarks/bench_training.py --data_root data/synthetic --steps 60 [--results_file docs/results/NAME.json]

Any option of `examples/train_retrieval.py` sets up the run (its `--output_dir` is a temporary folder).
"""

import tempfile
import time
from dataclasses import dataclass, field, replace

import torch
from results import Column, Recorder, Table
from tqdm.auto import tqdm
from transformers import HfArgumentParser

from transformers_seps.train.arguments import DataArguments, ModelArguments, RetrievalTrainingArguments
from transformers_seps.train.training import evaluate_model, prepare_run, train_one_epoch


@dataclass
class BenchmarkArguments:
    steps: int = field(default=60, metadata={"help": "Optimizer steps timed."})
    results_file: str | None = field(
        default=None, metadata={"help": "Also write the results to this JSON file (docs/results/NAME.json)."}
    )


COLUMNS = [
    Column("tokens", "backbone tokens"),
    Column("prepare_seconds", "prepare the run (s)", "{:.1f}"),
    Column("steps_per_second", "steps per second", "{:.2f}"),
    Column("dev_evaluation_seconds", "dev evaluation (s)", "{:.1f}"),
    Column("epoch_seconds", "one epoch with its dev evaluation (s)", "{:.1f}"),
]


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
    recorder = Recorder(bench.results_file)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for cache in (False, True):
            args = replace(
                training_args,
                output_dir=f"{folder}/{cache}",
                max_steps=bench.steps,
                cache_frozen_features=cache,
                eval_test=False,
            )
            title = "cached once (--cache_frozen_features true)" if cache else "encoded at every step"
            rows.append({"tokens": title, **measure(model_args, data_args, args, bench.steps)})
    table = Table(COLUMNS, rows)
    notes = f"{bench.steps} steps timed, {torch.get_num_threads()} threads."
    print(notes)
    print(table.markdown())
    recorder.write({"main": table}, notes=notes)


if __name__ == "__main__":
    main()
