"""Render the docs' measured tables from their results files (`make docs-tables`).

A table in the docs (README.md and docs/*.md) sits between two markers:

    <!-- results: NAME -->            (the table "main" of docs/results/NAME.json)
    <!-- results: NAME/TABLE -->      (another table of the same file)
    ...rendered here...
    <!-- /results -->

and is rendered from `docs/results/NAME.json` (written by a benchmark through `benchmarks/results.py`): the
table, then one line saying which command measured it, at which commit, when and on what machine. A file that
does not exist yet renders as one line naming the command that writes it, from `docs/results/benchmarks.toml`.
`<!-- results-commands -->` ... `<!-- /results -->` renders the list of those commands.

    python tools/docs_tables.py            # rewrite the blocks in place
    python tools/docs_tables.py --check    # exit 1 naming every block that differs from its rendering
    python tools/docs_tables.py --commands # print the command of every results file, one a line

Standard library only: it imports nothing of the package.
"""

import argparse
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

import tomllib

REPOSITORY = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPOSITORY / "docs" / "results"
REGISTRY = RESULTS_DIR / "benchmarks.toml"
BLOCK = re.compile(
    r"(?P<open><!-- (?:results: (?P<spec>[\w./-]+)|(?P<index>results-commands)) -->\n)"
    r"(?P<body>.*?)(?P<close><!-- /results -->)",
    re.S,
)


def load_registry(path: Path = REGISTRY) -> dict[str, dict[str, str]]:
    """name -> {"command", "needs" (optional), "about"}: what writes each results file."""
    with path.open("rb") as file:
        return tomllib.load(file)


def documents(root: Path = REPOSITORY) -> list[Path]:
    """The markdown files whose tables are rendered: README.md and the docs pages."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def full_command(name: str, entry: dict[str, str]) -> str:
    return f"{entry['command']} --results_file docs/results/{name}.json"


def format_cell(value: Any, pattern: str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        mean = statistics.fmean(value)
        if len(value) == 1:
            return format_cell(mean, pattern)
        return f"{format_cell(mean, pattern)} ± {format_cell(statistics.stdev(value), pattern)}"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and pattern:
        return pattern.format(value)
    return str(value)


def is_numeric(value: Any) -> bool:
    return isinstance(value, (int, float, list)) and not isinstance(value, bool)


def render_table(table: dict[str, Any]) -> list[str]:
    columns, rows = table["columns"], table["rows"]
    lines = ["| " + " | ".join(column["header"] for column in columns) + " |"]
    aligns = []
    for column in columns:
        values = [row.get(column["key"]) for row in rows]
        aligns.append("---:" if any(is_numeric(value) for value in values) else "---")
    lines.append("| " + " | ".join(aligns) + " |")
    for row in rows:
        cells = [format_cell(row.get(column["key"]), column.get("format")) for column in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def provenance(record: dict[str, Any]) -> str:
    """One line: the command, commit, date, machine and threads of a results file."""
    commit = f"commit `{record['commit'][:7]}`" if record.get("commit") else "an unknown commit"
    if record.get("dirty"):
        commit += " with uncommitted changes"
    machine = record["machine"]
    parts = [f"{machine['cpu']}, {machine['cores']} cores"]
    if record.get("threads") is not None:
        parts.append(f"{record['threads']} torch thread{'s' if record['threads'] != 1 else ''}")
    load = (machine.get("load_average") or {}).get("start")
    if load:
        parts.append(f"load average {load[0]:.1f} at the start")
    notes = f" {record['notes']}" if record.get("notes") else ""
    return f"*Measured by `{record['command']}` at {commit} on {record['finished'][:10]} ({', '.join(parts)}).{notes}*"


def render_block(spec: str, registry: dict[str, dict[str, str]], results_dir: Path = RESULTS_DIR) -> str:
    name, _, table_name = spec.partition("/")
    if name not in registry:
        raise KeyError(f"results block {spec!r}: {name!r} is not in {REGISTRY.relative_to(REPOSITORY)}")
    path = results_dir / f"{name}.json"
    if not path.is_file():
        entry = registry[name]
        needs = f" (after `{entry['needs']}`)" if entry.get("needs") else ""
        return f"*Not measured on this version yet: run `{full_command(name, entry)}`{needs}, then `make docs-tables`.*"
    record = json.loads(path.read_text(encoding="utf-8"))
    table_name = table_name or "main"
    if table_name not in record["tables"]:
        raise KeyError(f"{path} has no table {table_name!r} (it has {sorted(record['tables'])})")
    return "\n".join([*render_table(record["tables"][table_name]), "", provenance(record)])


def render_commands(registry: dict[str, dict[str, str]], results_dir: Path = RESULTS_DIR) -> str:
    lines = ["| results file | what | command | measured |", "| --- | --- | --- | --- |"]
    for name, entry in registry.items():
        path = results_dir / f"{name}.json"
        if path.is_file():
            record = json.loads(path.read_text(encoding="utf-8"))
            measured = f"{record['finished'][:10]}, `{(record.get('commit') or '?')[:7]}`"
        else:
            measured = "not yet"
        needs = f"`{entry['needs']}`, then " if entry.get("needs") else ""
        lines.append(f"| `{name}.json` | {entry['about']} | {needs}`{full_command(name, entry)}` | {measured} |")
    return "\n".join(lines)


def render_text(text: str, registry: dict[str, dict[str, str]], results_dir: Path = RESULTS_DIR) -> str:
    def replace(match: re.Match) -> str:
        if match.group("index"):
            body = render_commands(registry, results_dir)
        else:
            body = render_block(match.group("spec"), registry, results_dir)
        return f"{match.group('open')}{body}\n{match.group('close')}"

    return BLOCK.sub(replace, text)


def block_specs(text: str) -> list[str]:
    return [match.group("spec") for match in BLOCK.finditer(text) if match.group("spec")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table is out of date")
    parser.add_argument("--commands", action="store_true", help="print each results file's command and exit")
    args = parser.parse_args()
    registry = load_registry()
    if args.commands:
        for name, entry in registry.items():
            needs = f"{entry['needs']} && " if entry.get("needs") else ""
            print(f"{name}: {needs}{full_command(name, entry)}")
        return 0
    stale = []
    for path in documents():
        text = path.read_text(encoding="utf-8")
        rendered = render_text(text, registry)
        if rendered != text:
            stale.append(path.relative_to(REPOSITORY))
            if not args.check:
                path.write_text(rendered, encoding="utf-8")
    if args.check and stale:
        print(f"out of date (run `make docs-tables`): {', '.join(map(str, stale))}", file=sys.stderr)
        return 1
    for path in stale:
        print(f"rendered {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
