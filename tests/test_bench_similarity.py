"""`benchmarks/bench_similarity.py` runs at a toy size: `similarity` agrees with the authors-shaped loop on every
row, and the knob mode times each block size and thread count asked for."""

import pytest
from test_benchmarks import run_benchmark, table_rows

pytestmark = pytest.mark.slow

TOY = ("--images", "3", "--captions", "4", "--reference_captions", "2", "--dense_tokens", "6", "--embed_dim", "64")


def test_bench_similarity_agrees_with_the_loop_on_every_branch():
    rows = table_rows(run_benchmark("bench_similarity.py", *TOY, "--rounds", "1"))
    for branch in ("official caption branch", "paper caption branch", "paper with dense captions"):
        assert float(rows[branch][-1]) < 1e-5, branch
    assert rows["official dense branch"][0].endswith("ms per image")


def test_bench_similarity_times_each_block_size_and_thread_count():
    output = run_benchmark("bench_similarity.py", *TOY, "--chunk_sizes", "2", "12", "--thread_counts", "1", "2")
    settings = [line.split("|")[1:3] for line in output.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert sorted((int(chunk), int(threads)) for chunk, threads in settings) == [(2, 1), (2, 2), (12, 1), (12, 2)]
