"""Results files: what a benchmark measured, with how, where and when it was measured (`docs/results/NAME.json`).

The docs quote no number that is not in such a file: `tools/docs_tables.py` (`make docs-tables`) renders each
table of a results file into the docs, between the markers `<!-- results: NAME -->` (or `NAME/TABLE`) and
`<!-- /results -->`, and `docs/results/benchmarks.toml` names the command that writes each file.

A benchmark script uses it in three steps:

    from results import Column, Recorder, Table, add_results_argument

    add_results_argument(parser)                   # --results_file PATH (the benchmark writes no file without it)
    args = parser.parse_args()
    recorder = Recorder(args.results_file)         # at the start: the start time and load average
    ...                                            # measure
    recorder.write({"main": Table([Column("variant"), Column("pairs_per_second", "pairs/s", "{:,.0f}")], rows)})

`rows` are dicts keyed by the columns' keys. A value is a number, a string, None (an empty cell) or a list of
numbers (one per seed or run: rendered as mean ± sample standard deviation). The file holds:

    {"format": 1, "name": "similarity_speed", "command": "python benchmarks/bench_similarity.py --threads 2",
     "commit": "<40 hex digits>", "dirty": false, "started": "2027-01-05T10:00:00Z", "finished": "...",
     "seconds": 81.2, "machine": {"cpu": "AMD EPYC 7B13", "cores": 2, "load_average": {"start": [...],
     "end": [...]}}, "threads": 2, "versions": {"python": ..., "torch": ..., "transformers": ...},
     "tables": {"main": {"columns": [{"key": ..., "header": ..., "format": ...}], "rows": [...]}}, "notes": ...}

`command` is the command line as run from the repository root, without `--results_file`; `dirty` says whether
tracked files other than `docs/results/` differed from `commit`.
"""

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "tools"))
from docs_tables import render_table  # noqa: E402  (the docs' rendering, printed the same way)

FORMAT_VERSION = 1
RESULTS_FLAG = "--results_file"


@dataclass
class Column:
    """A table column: the rows' key, its header (the key when None) and a `str.format` pattern for numbers."""

    key: str
    header: str | None = None
    format: str | None = None

    def __post_init__(self) -> None:
        self.header = self.key if self.header is None else self.header


@dataclass
class Table:
    columns: list[Column]
    rows: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        keys = {column.key for column in self.columns}
        for row in self.rows:
            unknown = set(row) - keys
            if unknown:
                raise ValueError(f"row keys {sorted(unknown)} are not columns of the table ({sorted(keys)})")

    def markdown(self) -> str:
        """The table as the docs render it."""
        return "\n".join(render_table(asdict(self)))


def add_results_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        RESULTS_FLAG,
        default=None,
        help="also write the results to this JSON file (docs/results/NAME.json for the docs; see docs/reproducing.md)",
    )


def command_line(argv: list[str]) -> str:
    """The command as run from the repository root, without `--results_file`."""
    script = Path(argv[0]).resolve()
    arguments, skip = [], False
    for argument in argv[1:]:
        if skip:
            skip = False
        elif argument == RESULTS_FLAG:
            skip = True
        elif not argument.startswith(RESULTS_FLAG + "="):
            arguments.append(argument)
    shown = script.relative_to(REPOSITORY) if script.is_relative_to(REPOSITORY) else script
    return shlex.join(["python", str(shown), *arguments])


def git_state() -> tuple[str | None, bool | None]:
    """The checked-out commit and whether tracked files (other than the results files) differ from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPOSITORY, capture_output=True, text=True, check=True
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs/results"],
            cwd=REPOSITORY,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout
        return None, None
    return commit, bool(changes)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("torch", "transformers", "transformers_seps"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "__version__"):
            versions[name] = str(module.__version__)
    return versions


def torch_threads() -> int | None:
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


class Recorder:
    """Records a benchmark's start; `write` adds its tables and the context and writes the file (nothing when the
    path is None)."""

    def __init__(self, path: str | os.PathLike | None, argv: list[str] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.command = command_line(sys.argv if argv is None else argv)
        self.started, self.start_seconds, self.start_load = utc_now(), time.perf_counter(), load_average()

    def record(self, tables: dict[str, Table], notes: str | None = None) -> dict[str, Any]:
        commit, dirty = git_state()
        return {
            "format": FORMAT_VERSION,
            "name": self.path.stem if self.path is not None else None,
            "command": self.command,
            "commit": commit,
            "dirty": dirty,
            "started": self.started,
            "finished": utc_now(),
            "seconds": round(time.perf_counter() - self.start_seconds, 1),
            "machine": {
                "cpu": cpu_model(),
                "cores": os.cpu_count(),
                "load_average": {"start": self.start_load, "end": load_average()},
            },
            "threads": torch_threads(),
            "versions": package_versions(),
            "tables": {name: asdict(table) for name, table in tables.items()},
            "notes": notes,
        }

    def write(self, tables: dict[str, Table], notes: str | None = None) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps(self.record(tables, notes), indent=2) + "\n", encoding="utf-8")
        temporary.replace(self.path)
        print(f"results written to {self.path}", file=sys.stderr)
