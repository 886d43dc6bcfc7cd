"""`make demo`'s training run over several seeds: test recall on the synthetic benchmark (mean ± standard deviation
over the seeds), the best dev rSum, run time and CPU time, for each run asked for.

A run is a label and the arguments it adds to `examples/train_retrieval.py` (`--run "LABEL=ARGS"`, repeated; by
default the paper variant as `make demo` trains it, the official variant, and the paper variant without dense
captions). Each seed of each run trains in a subprocess into `--output_root/<run number>-seed<seed>`, with
`--data_root`, `--seed` and `--overwrite_output_dir`; its test metrics are read from `eval_results.json`, and its
time is the whole run's (training, the dev evaluations, the test evaluation). Arguments after `--` go to every
run. `--results_file docs/results/NAME.json` also writes the table for the docs (`benchmarks/results.py`).

    python benchmarks/bench_demo.py --seeds 0 1 2 [--run "paper=" --run "official=--variant official"]
        [--results_file docs/results/demo_synthetic.json] [-- --num_train_epochs 1]
"""

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

from results import Column, Recorder, Table, add_results_argument

TRAIN = Path(__file__).resolve().parents[1] / "examples" / "train_retrieval.py"
DEFAULT_RUNS = (
    "paper (`make demo`)=",
    "official (`--variant official`)=--variant official",
    "paper, no dense captions (`--use_dense_captions false`)=--use_dense_captions false",
)
METRICS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")
COLUMNS = [
    Column("run"),
    *(Column(key, key.replace("_r", " R@").replace("rsum", "rSum"), "{:.1f}") for key in METRICS),
    Column("best_dev_rsum", "best dev rSum", "{:.1f}"),
    Column("minutes", "run time (min)", "{:.1f}"),
    Column("cpu_minutes", "CPU time (min)", "{:.1f}"),
]


def parse_run(spec: str) -> tuple[str, list[str]]:
    label, separator, arguments = spec.partition("=")
    if not separator or not label:
        raise argparse.ArgumentTypeError(f"--run takes LABEL=ARGUMENTS, got {spec!r}")
    return label, shlex.split(arguments)


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def train(output_dir: Path, seed: int, arguments: list[str], args: argparse.Namespace) -> dict:
    """One training run: its test metrics, best dev rSum, wall and CPU minutes."""
    command = [
        sys.executable, str(TRAIN), "--output_dir", str(output_dir), "--overwrite_output_dir",
        "--data_root", args.data_root, "--seed", str(seed), *arguments, *args.extra,
    ]  # fmt: skip
    print(shlex.join(command), flush=True)
    cpu, start = children_cpu_seconds(), time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "TQDM_DISABLE": "1"}, stdout=subprocess.DEVNULL)
    minutes, cpu_minutes = (time.perf_counter() - start) / 60, (children_cpu_seconds() - cpu) / 60
    results = json.loads((output_dir / "eval_results.json").read_text())
    return {**{key: results[key] for key in METRICS}, "best_dev_rsum": results["best_dev_rsum"], "minutes": minutes,
            "cpu_minutes": cpu_minutes}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--run", type=parse_run, action="append", help="LABEL=ARGUMENTS (repeat; default: 3 runs)")
    parser.add_argument("--data_root", default="data/synthetic")
    parser.add_argument("--output_root", default="runs/bench-demo")
    add_results_argument(parser)
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="-- then arguments for every run")
    args = parser.parse_args()
    args.extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    recorder = Recorder(args.results_file)
    runs = args.run or [parse_run(spec) for spec in DEFAULT_RUNS]

    table = Table(COLUMNS)
    for number, (label, arguments) in enumerate(runs):
        seeds = [train(Path(args.output_root) / f"{number}-seed{seed}", seed, arguments, args) for seed in args.seeds]
        row = {key: [seed[key] for seed in seeds] for key in seeds[0]}
        table.rows.append({"run": label, **row})
    print(table.markdown())
    seeds = ", ".join(map(str, args.seeds))
    recorder.write({"main": table}, notes=f"Mean ± standard deviation over the seeds {seeds}.")


if __name__ == "__main__":
    main()
