"""`make demo`'s training run over several seeds: test recall on the synthetic benchmark (mean ± standard deviation
over the seeds), the best dev rSum, run time and CPU time, for each run asked for.

A run is a label and the arguments it adds to `examples/train_retrieval.py` (`--run "LABEL=ARGS"`, repeated; by
default the paper variant as `make demo` trains it, the official variant, and the paper variant without dense
captions). Each seed of each run trains in a subprocess into `--output_root/<run number>-seed<seed>`, with
`--data_root`, `--seed` and `--overwrite_output_dir`; its test metrics are read from `eval_results.json`, and its
time is the whole run's (training, the dev evaluations, the test evaluation); another invocation with the same
`--output_root` overwrites those folders (give each its own to keep the models). Arguments after `--` go to every
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
TIME_COLUMNS = [Column("minutes", "run time (min)", "{:.1f}"), Column("cpu_minutes", "CPU time (min)", "{:.1f}")]
COLUMNS = [
    Column("run"),
    *(Column(key, key.replace("_r", " R@").replace("rsum", "rSum"), "{:.1f}") for key in METRICS),
    Column("seps_rsum", "rSum, SEPS alone", "{:.1f}"),
    Column("first_stage_rsum", "rSum, first stage alone", "{:.1f}"),
    Column("best_dev_rsum", "best dev rSum", "{:.1f}"),
    *TIME_COLUMNS,
]
# --split dev: the dev metrics of each run's best epoch (runs trained with --eval_test false), to choose settings.
DEV_COLUMNS = [
    Column("run"),
    *(Column(key, f"dev {key.replace('_r', ' R@')}", "{:.1f}") for key in ("i2t_r1", "i2t_r10", "t2i_r1", "t2i_r10")),
    Column("rsum", "dev rSum", "{:.1f}"),
    Column("first_stage_rsum", "dev rSum, first stage alone", "{:.1f}"),
    Column("best_epoch", "best epoch", "{:.1f}"),
    *TIME_COLUMNS,
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
    """One training run: its test metrics (or with `--split dev`, the dev metrics of its best epoch and its dev rSum
    after each epoch), wall and CPU minutes."""
    dev = ["--eval_test", "false"] if args.split == "dev" else []
    command = [
        sys.executable, str(TRAIN), "--output_dir", str(output_dir), "--overwrite_output_dir",
        "--data_root", args.data_root, "--seed", str(seed), *arguments, *args.extra, *dev,
    ]  # fmt: skip
    print(shlex.join(command), flush=True)
    cpu, start = children_cpu_seconds(), time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "TQDM_DISABLE": "1"}, stdout=subprocess.DEVNULL)
    times = {"minutes": (time.perf_counter() - start) / 60, "cpu_minutes": (children_cpu_seconds() - cpu) / 60}
    if args.split == "dev":
        history = json.loads((output_dir / "dev_history.json").read_text())
        best = max(history, key=lambda epoch: epoch["rsum"])  # the first of equals, as the run keeps it
        keys = [column.key for column in DEV_COLUMNS[1:-2] if column.key != "best_epoch"]
        by_epoch = {f"epoch_{epoch['epoch']}": epoch["rsum"] for epoch in history}
        return {**{key: best[key] for key in keys}, "best_epoch": best["epoch"], **times, **by_epoch}
    results = json.loads((output_dir / "eval_results.json").read_text())
    keys = [column.key for column in COLUMNS[1:-2]]
    return {**{key: results[key] for key in keys}, **times}


def epochs_table(rows: list[dict]) -> Table:
    """Dev rSum after each epoch, by run (`--split dev`)."""
    epochs = sorted({key for row in rows for key in row if key.startswith("epoch_")}, key=lambda k: int(k[6:]))
    columns = [Column("run"), *(Column(key, f"epoch {int(key[6:]) + 1}", "{:.1f}") for key in epochs)]
    return Table(columns, [{key: row.get(key) for key in ("run", *epochs)} for row in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--run", type=parse_run, action="append", help="LABEL=ARGUMENTS (repeat; default: 3 runs)")
    parser.add_argument("--data_root", default="data/synthetic")
    parser.add_argument("--output_root", default="runs/bench-demo")
    parser.add_argument(
        "--split",
        choices=("test", "dev"),
        default="test",
        help="test: the test metrics of each run; dev: the runs train with --eval_test false, and the dev metrics "
        "of their best epoch and their dev rSum after each epoch are recorded (to choose settings on dev)",
    )
    add_results_argument(parser)
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="-- then arguments for every run")
    args = parser.parse_args()
    args.extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    recorder = Recorder(args.results_file)
    runs = args.run or [parse_run(spec) for spec in DEFAULT_RUNS]

    rows = []
    for number, (label, arguments) in enumerate(runs):
        seeds = [train(Path(args.output_root) / f"{number}-seed{seed}", seed, arguments, args) for seed in args.seeds]
        rows.append({"run": label, **{key: [seed.get(key) for seed in seeds] for key in seeds[0]}})
    columns = DEV_COLUMNS if args.split == "dev" else COLUMNS
    tables = {"main": Table(columns, [{c.key: row[c.key] for c in columns} for row in rows])}
    if args.split == "dev":
        tables["epochs"] = epochs_table(rows)
    for table in tables.values():
        print(table.markdown() + "\n")
    seeds = ", ".join(map(str, args.seeds))
    recorder.write(tables, notes=f"Mean ± standard deviation over the seeds {seeds}.")


if __name__ == "__main__":
    main()
