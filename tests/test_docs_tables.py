"""The docs quote measured numbers only from results files: every table between `<!-- results: ... -->` markers is
what `tools/docs_tables.py` renders from its file in docs/results/, each file was written by the command
docs/results/benchmarks.toml names, and the writer (`benchmarks/results.py`) records what the renderer reads."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_script

REPOSITORY = Path(__file__).resolve().parents[1]
docs_tables = load_script(REPOSITORY / "tools" / "docs_tables.py", "docs_tables")
results = load_script(REPOSITORY / "benchmarks" / "results.py", "benchmark_results")


@pytest.mark.parametrize("document", docs_tables.documents(), ids=lambda path: str(path.relative_to(REPOSITORY)))
def test_every_table_of_the_docs_is_what_its_results_file_renders(document):
    text = document.read_text(encoding="utf-8")
    assert docs_tables.render_text(text, docs_tables.load_registry()) == text, "run `make docs-tables`"


def test_every_results_file_was_written_by_its_registered_command():
    registry = docs_tables.load_registry()
    for path in sorted(docs_tables.RESULTS_DIR.glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        assert path.stem in registry, f"{path.name} is not in docs/results/benchmarks.toml"
        assert record["format"] == results.FORMAT_VERSION and record["name"] == path.stem
        assert record["command"] == registry[path.stem]["command"], f"{path.name} was measured by another command"
        assert record["commit"] and record["tables"]


def test_every_registered_results_file_is_quoted_by_the_docs():
    quoted = {
        spec.partition("/")[0]
        for document in docs_tables.documents()
        for spec in docs_tables.block_specs(document.read_text(encoding="utf-8"))
    }
    assert quoted == set(docs_tables.load_registry())


def test_the_check_mode_names_a_stale_table(tmp_path, monkeypatch):
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# title\n<!-- results: demo -->\n| stale |\n<!-- /results -->\n")
    monkeypatch.setattr(docs_tables, "REPOSITORY", tmp_path)
    monkeypatch.setattr(docs_tables, "documents", lambda: [tmp_path / "README.md"])
    monkeypatch.setattr(docs_tables, "load_registry", lambda: {"demo": {"command": "python x.py", "about": "x"}})
    monkeypatch.setattr(sys, "argv", ["docs_tables.py", "--check"])
    assert docs_tables.main() == 1
    assert "| stale |" in (tmp_path / "README.md").read_text()  # --check changes nothing
    monkeypatch.setattr(sys, "argv", ["docs_tables.py"])
    assert docs_tables.main() == 0
    assert (
        "Not measured on this version yet: run `python x.py --results_file docs/results/demo.json`"
        in (tmp_path / "README.md").read_text()
    )


def test_a_recorded_table_renders_with_its_provenance_and_mean_and_deviation(tmp_path, monkeypatch):
    monkeypatch.chdir(REPOSITORY / "benchmarks")
    recorder = results.Recorder(tmp_path / "demo.json", argv=["bench_x.py", "--seeds", "0", "1", "--results_file", "f"])
    table = results.Table(
        [results.Column("run"), results.Column("rsum", "rSum", "{:.1f}"), results.Column("note")],
        [{"run": "paper", "rsum": [180.0, 184.0], "note": None}, {"run": "official", "rsum": 91.54}],
    )
    recorder.write({"main": table, "other": results.Table([results.Column("x", format="{:.2f}")], [{"x": 1}])})
    record = json.loads((tmp_path / "demo.json").read_text())
    assert record["command"] == "python benchmarks/bench_x.py --seeds 0 1"  # from the repository root, no results flag
    assert (
        record["commit"]
        == subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPOSITORY, capture_output=True, text=True).stdout.strip()
    )
    assert record["machine"]["cores"] >= 1 and record["seconds"] >= 0
    registry = {"demo": {"command": record["command"], "about": "a demo"}}
    rendered = docs_tables.render_block("demo", registry, tmp_path)
    lines = rendered.splitlines()
    assert lines[:4] == [
        "| run | rSum | note |",
        "| --- | ---: | --- |",
        "| paper | 182.0 ± 2.8 |  |",
        "| official | 91.5 |  |",
    ]
    assert lines[-1].startswith(f"*Measured by `{record['command']}` at commit `{record['commit'][:7]}`")
    assert ("with uncommitted changes" in lines[-1]) == record["dirty"]
    assert docs_tables.render_block("demo/other", registry, tmp_path).startswith("| x |\n| ---: |\n| 1.00 |")
    assert table.markdown() == "\n".join(lines[:4])  # the benchmark prints what the docs show
    with pytest.raises(KeyError, match="no table 'missing'"):
        docs_tables.render_block("demo/missing", registry, tmp_path)
    with pytest.raises(KeyError, match="not in docs/results/benchmarks.toml"):
        docs_tables.render_block("unknown", registry, tmp_path)


def test_a_row_with_a_key_that_is_no_column_is_refused():
    with pytest.raises(ValueError, match=r"row keys \['typo'\]"):
        results.Table([results.Column("run")], [{"run": "a", "typo": 1}])
