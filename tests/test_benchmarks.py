"""The benchmark scripts run, at toy sizes (their numbers are printed, not asserted: the docs quote them from their
results files)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from transformers_seps import SepsConfig
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


def test_bench_two_stage_on_saved_models(saved_models, tiny_synthetic, tmp_path):
    results = tmp_path / "two_stage.json"
    output = run_benchmark(
        "bench_two_stage.py", "--models", str(saved_models["paper"]), str(saved_models["official"]),
        "--data_root", str(tiny_synthetic), "--shortlist_sizes", "3", "5", "100", "--results_file", str(results),
    )  # fmt: skip
    rows = table_rows(output)
    record = json.loads(results.read_text())
    table = {row["search"]: row for row in record["tables"]["main"]["rows"]}
    assert table["exhaustive"]["in_shortlist"] == [100.0, 100.0]  # the exhaustive search holds every image
    # The exhaustive search holds the image in its top 5 as often as its t2i R@5 says.
    assert table["shortlist 5 + re-ranking"]["in_exhaustive_top"] == pytest.approx(table["exhaustive"]["t2i_r5"])
    # The first stage's own R@5: how often its shortlist of 5 holds the image.
    assert table["shortlist 5 + re-ranking"]["in_shortlist"] == pytest.approx(table["first stage alone"]["t2i_r5"])
    assert "shortlist 3 + re-ranking" in rows and "shortlist 100 + re-ranking" not in rows  # 100 >= 8 images
    assert " ± " in rows["exhaustive"][0]  # two models


def test_bench_token_codecs_writes_each_storage_dtype_and_compares_it_with_float32(
    saved_models, tiny_synthetic, tmp_path
):
    results = tmp_path / "token_codecs.json"
    run_benchmark(
        "bench_token_codecs.py", "--models", str(saved_models["paper"]), str(saved_models["official"]), "--data_root",
        str(tiny_synthetic), "--shortlist_size", "3", "--random_images", "12", "--random_captions", "4",
        "--output_dir", str(tmp_path), "--results_file", str(results),
    )  # fmt: skip
    tables = json.loads(results.read_text())["tables"]
    recall = {row["dtype"]: row for row in tables["main"]["rows"]}
    shapes = {row["dtype"]: row for row in tables["shapes"]["rows"]}
    assert recall["float32"]["t2i_r10_change"] == [0.0, 0.0]  # float32 is the reference, for each model
    dtypes = ("float32", "float16", "int8")
    for disk in (
        [sum(recall[dtype]["kb_per_image"]) for dtype in dtypes],
        [shapes[dtype]["kb_per_image"] for dtype in dtypes],
    ):
        float16_saves = disk[0] - disk[1]  # 2 bytes per value
        # int8 saves a byte per value more, less its scale per token (2 bytes), against float16.
        assert float16_saves > 0 and 0.75 * float16_saves / 2 < disk[1] - disk[2] < float16_saves / 2
    assert shapes["float32"]["max_abs_difference"] == 0 < shapes["float16"]["max_abs_difference"]
    assert list(tmp_path.iterdir()) == [results]  # the indexes are deleted


def test_compare_first_stages_finds_the_exact_shortlists_with_each_first_stage(saved_models, tiny_synthetic, tmp_path):
    results = tmp_path / "first_stages.json"
    run_benchmark(
        "compare_first_stages.py", "--models", str(saved_models["paper"]), "--data_root", str(tiny_synthetic),
        "--shortlist_sizes", "2", "4", "100", "--output_dir", str(tmp_path), "--results_file", str(results),
    )  # fmt: skip
    rows = json.loads(results.read_text())["tables"]["main"]["rows"]
    assert {(row["first_stage"], row["size"]) for row in rows} == {
        (kind, size) for kind in ("exact", "hnsw", "qdrant") for size in (2, 4)
    }  # 100 is more than the split's images
    for row in rows:  # a gallery this small: every first stage finds the exact shortlists
        assert row["recall"] == [100.0] and (row["first_stage"] != "exact" or row["same"] == [100.0])
    assert list(tmp_path.iterdir()) == [results]


def test_synthetic_ceiling_matches_a_count_of_fitting_images(tiny_synthetic):
    rows = table_rows(run_benchmark("synthetic_ceiling.py", "--data_root", str(tiny_synthetic), "--split", "test"))
    scenes = read_scenes(tiny_synthetic, "test")
    captions = (tiny_synthetic / "test_caps.txt").read_text().splitlines()
    fitting = [sum(caption_holds(caption, scene) for scene in scenes) for caption in captions]
    # t2i R@1 of the perfect reader: its image is first among the images the caption fits with probability 1/m.
    assert float(rows["perfect reader"][3]) == round(100 * sum(1 / m for m in fitting) / len(fitting), 1)
    assert float(rows["chance"][3]) == round(100 / len(scenes), 1)  # 8 test images
    assert float(rows["chance"][-1]) < float(rows["perfect reader"][-1])


def test_compare_scorers_on_saved_models(saved_models, tiny_synthetic, tmp_path):
    """Two models (the same one twice): every scorer's row, the grounding rows, zero spread, the model's score equal
    to SEPS with dense captions (its first_stage_weight is 0), and the pictures."""
    results = tmp_path / "scorers.json"
    output = run_benchmark(
        "compare_scorers.py", "--models", str(saved_models["paper"]), str(saved_models["paper"]),
        "--data_root", str(tiny_synthetic), "--results_file", str(results), "--pictures", str(tmp_path / "pictures"),
    )  # fmt: skip
    rows = table_rows(output)
    dense, alone = rows["SEPS: S with each image's own dense caption"], rows["SEPS: S without dense captions"]
    assert rows["the model's score: S (dense captions) + w G"] == dense != alone
    assert all(value.endswith(("± 0.0", "± 0.000")) for value in dense)  # the same model twice
    assert "first stage alone: G" in rows
    for name in ("selection with dense captions", "selection without dense captions"):
        assert 0 <= float(rows[name][0].split(" ")[0]) <= 100
    config = SepsConfig.from_pretrained(saved_models["paper"])
    kept_share = 100 * config.num_kept_patches / config.num_patches  # K / N (13 of the 5 x 5 patches)
    assert rows["random, as many patches"][0] == f"{kept_share:.1f} ± 0.0"
    record = json.loads(results.read_text())
    assert set(record["tables"]) == {"main", "grounding"}
    first_row = record["tables"]["main"]["rows"][0]
    assert len(first_row["rsum"]) == 2  # one value per model
    assert sorted(path.name for path in (tmp_path / "pictures").iterdir()) == [
        "selection_pair.png", "selection_position.png", "selection_relation.png"
    ]  # fmt: skip


def test_bench_training_times_the_run_with_and_without_cached_tokens(tmp_path):
    results = tmp_path / "speed.json"
    output = run_benchmark(
        "bench_training.py", "--data_root", str(tmp_path / "data"), "--generate_synthetic",
        "--synthetic_num_train", "24", "--synthetic_num_dev", "8", "--synthetic_num_test", "8",
        "--image_size", "64", "--embed_dim", "32", "--per_device_train_batch_size", "8", "--steps", "2",
        "--results_file", str(results),
    )  # fmt: skip
    rows = table_rows(output)
    assert set(rows) - {"backbone tokens", "---"} == {
        "encoded at every step",
        "cached once (--cache_frozen_features true)",
    }
    for row in json.loads(results.read_text())["tables"]["main"]["rows"]:
        assert row["steps_per_second"] > 0 and row["epoch_seconds"] > row["dev_evaluation_seconds"] > 0


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
    assert row["seps_rsum"] == [eval_results["seps_rsum"]]

    # --split dev: the runs are not tested; the best epoch's dev metrics and the dev rSum of each epoch are recorded.
    output = run_benchmark(
        "bench_demo.py", "--seeds", "3", "--split", "dev", "--run", "tiny=", "--data_root", str(tmp_path / "data"),
        "--output_root", str(tmp_path / "dev-runs"), "--results_file", str(results), "--", *tiny,
    )  # fmt: skip
    record = json.loads(results.read_text())
    (row,) = record["tables"]["main"]["rows"]
    run = tmp_path / "dev-runs" / "0-seed3"
    assert not (run / "eval_results.json").exists() or "rsum" not in json.loads((run / "eval_results.json").read_text())
    history = json.loads((run / "dev_history.json").read_text())
    assert row["rsum"] == [history[0]["rsum"]] and row["first_stage_rsum"] == [history[0]["first_stage_rsum"]]
    assert record["tables"]["epochs"]["rows"] == [{"run": "tiny", "epoch_0": [history[0]["rsum"]]}]
