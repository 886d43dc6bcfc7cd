"""The benchmark scripts run, at toy sizes (their numbers are printed, not asserted: the docs quote them from their
results files)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from transformers_seps.train.data.synthetic import caption_holds, read_scenes

pytestmark = pytest.mark.slow

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_benchmark(script: str, *arguments: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    result = subprocess.run(
        [sys.executable, script, *arguments], cwd=BENCHMARKS, capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def table_rows(output: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split("|") for line in output.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [cell.strip() for cell in cells[1:]] for cells in rows}


def test_bench_eval_agrees_with_the_reference_loop():
    output = run_benchmark(
        "bench_eval.py", "--images", "6", "--captions", "12", "--reference_captions", "3", "--gallery_sizes", "8",
        "--queries", "2", "--shortlist", "3",
    )  # fmt: skip
    rows = table_rows(output)
    for variant in ("official", "paper"):
        assert float(rows[variant][-1]) < 1e-5, f"{variant}: the fast scoring differs from the reference loop"
    assert "8" in rows  # the gallery-size row of the scaling table


def test_bench_two_stage_on_a_saved_model(saved_models, tiny_synthetic):
    output = run_benchmark(
        "bench_two_stage.py", "--model", str(saved_models["paper"]), "--data_root", str(tiny_synthetic),
        "--shortlist_sizes", "3", "5", "100",
    )  # fmt: skip
    rows = table_rows(output)
    assert rows["exhaustive"][3] == "100.0"  # the exhaustive search always holds the caption's image
    # Exhaustive SEPS holds the image in its top 5 as often as its t2i R@5 says.
    assert rows["shortlist 5 + SEPS"][4] == rows["exhaustive"][1]
    assert "shortlist 3 + SEPS" in rows and "shortlist 100 + SEPS" not in rows  # 100 >= the 8-image gallery


def test_synthetic_ceiling_matches_a_count_of_fitting_images(tiny_synthetic):
    rows = table_rows(run_benchmark("synthetic_ceiling.py", "--data_root", str(tiny_synthetic), "--split", "test"))
    scenes = read_scenes(tiny_synthetic, "test")
    captions = (tiny_synthetic / "test_caps.txt").read_text().splitlines()
    fitting = [sum(caption_holds(caption, scene) for scene in scenes) for caption in captions]
    # t2i R@1 of the perfect reader: its image is first among the images the caption fits with probability 1/m.
    assert float(rows["perfect reader"][3]) == round(100 * sum(1 / m for m in fitting) / len(fitting), 1)
    assert float(rows["chance"][3]) == round(100 / len(scenes), 1)  # 8 test images
    assert float(rows["chance"][-1]) < float(rows["perfect reader"][-1])


def test_synthetic_ceiling_places_a_model_and_breaks_its_recall_down(saved_models, tiny_synthetic):
    output = run_benchmark(
        "synthetic_ceiling.py", "--data_root", str(tiny_synthetic), "--model", str(saved_models["paper"]),
    )  # fmt: skip
    rows = table_rows(output)
    model_row = next(cells for name, cells in rows.items() if name.endswith("(dense captions: image)"))
    assert 0 <= float(model_row[-1]) <= 600
    counts = [int(rows[kind][0]) for kind in ("position", "pair", "relation")]
    assert sum(counts) == 40  # every test caption (8 images x 5) has exactly one template
    for group in ("the caption is true of", "every colour the caption names", "every shape the caption names"):
        assert 0.0 <= float(rows[group][0]) <= 1.0


def test_bench_demo_trains_each_run_and_records_its_test_recall(tmp_path):
    results = tmp_path / "demo.json"
    tiny = [
        "--synthetic_num_train", "24", "--synthetic_num_dev", "6", "--synthetic_num_test", "6",
        "--synthetic_image_size", "32", "--vision_model", "vit-scratch", "--image_size", "32", "--embed_dim", "16",
        "--per_device_train_batch_size", "8", "--num_train_epochs", "1", "--generate_synthetic",
    ]  # fmt: skip
    output = run_benchmark(
        "bench_demo.py", "--seeds", "3", "--run", "tiny official=--variant official", "--data_root",
        str(tmp_path / "data"), "--output_root", str(tmp_path / "runs"), "--results_file", str(results), "--", *tiny,
    )  # fmt: skip
    rows = table_rows(output)
    record = json.loads(results.read_text())
    (row,) = record["tables"]["main"]["rows"]
    run = tmp_path / "runs" / "0-seed3"
    arguments = json.loads((run / "seps_run.json").read_text())["arguments"]
    assert (arguments["seed"], arguments["variant"]) == (3, "official")
    eval_results = json.loads((run / "eval_results.json").read_text())
    assert row["run"] == "tiny official" and row["rsum"] == [eval_results["rsum"]]  # one value per seed
    assert rows["tiny official"][6] == f"{eval_results['rsum']:.1f}"
    assert record["notes"] == "Mean ± standard deviation over the seeds 3."
