"""`examples/score_pairs.ipynb` runs top to bottom on a CPU, offline, with its default model."""

import re
from pathlib import Path

import nbclient
import nbformat
import pytest

pytestmark = pytest.mark.slow

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "score_pairs.ipynb"


def _text_outputs(cell) -> str:
    """Everything a cell printed or displayed as text."""
    pieces = []
    for output in cell.get("outputs", []):
        pieces.append(output.get("text", ""))
        pieces.append(output.get("data", {}).get("text/plain", ""))
    return "".join(pieces)


def test_score_pairs_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.delenv("SEPS_MODEL", raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), "commit it cleared"

    client = nbclient.NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()

    code = [_text_outputs(cell) for cell in notebook.cells if cell.cell_type == "code"]
    assert "variant=paper: 64 patches, 32 kept per caption" in code[0]
    score_rows = [line for line in code[2].splitlines() if re.fullmatch(r"\s+\d+( +-?\d+\.\d{3}){4}", line)]
    assert len(score_rows) == 4  # 4 images x 4 captions
    ranked = re.findall(r"^\d\. image (\d)", code[3], flags=re.MULTILINE)
    assert sorted(ranked) == ["0", "1", "2", "3"]
    assert "with 3 Axes" in code[4]  # image, caption's selection, dense view
    assert "Figure" in code[5]
