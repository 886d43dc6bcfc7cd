"""`benchmarks/bench_similarity.py` runs at a toy size: `similarity` agrees with the authors-shaped loop on every
row, and the knob mode times each block size and thread count asked for."""

import json

import pytest
from test_benchmarks import run_benchmark, table_rows

pytestmark = pytest.mark.slow

TOY = ("--images", "3", "--captions", "4", "--reference_captions", "2", "--dense_tokens", "6", "--embed_dim", "64")


def test_bench_similarity_agrees_with_the_loop_on_every_branch(tmp_path):
    results = tmp_path / "similarity.json"
    rows = table_rows(run_benchmark("bench_similarity.py", *TOY, "--rounds", "1", "--results_file", str(results)))
    for branch in ("official caption branch", "paper caption branch", "paper with dense captions"):
        assert float(rows[branch][-1]) < 1e-5, branch
    assert float(rows["official dense branch"][0]) >= 0  # ms per image (near 0 at this toy size)
    record = json.loads(results.read_text())  # the same tables, in the results file the docs render
    assert record["command"] == "python benchmarks/bench_similarity.py " + " ".join(TOY) + " --rounds 1"
    main = record["tables"]["main"]
    assert [row["scoring"] for row in main["rows"]] == [
        "official caption branch",
        "paper caption branch",
        "paper with dense captions",
    ]
    assert main["rows"][0]["max_abs_diff"] == pytest.approx(float(rows["official caption branch"][-1]), rel=0.1)


def test_bench_similarity_times_each_block_size_and_thread_count():
    output = run_benchmark("bench_similarity.py", *TOY, "--chunk_sizes", "2", "12", "--thread_counts", "1", "2")
    settings = [line.split("|")[1:3] for line in output.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert sorted((int(chunk), int(threads)) for chunk, threads in settings) == [(2, 1), (2, 2), (12, 1), (12, 2)]
