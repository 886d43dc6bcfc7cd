"""The training run: kill-and-resume equality, atomic checkpoints, best-by-dev saving, and the epoch order."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from transformers_seps import SepsModel
from transformers_seps.train.checkpoints import CHECKPOINT_PREFIX, latest_checkpoint, publish_checkpoint
from transformers_seps.train.training import epoch_order

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "train_retrieval.py"


def train_command(output_dir: Path, data_root: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(SCRIPT),
        "--output_dir", str(output_dir),
        "--data_root", str(data_root),
        "--synthetic_num_train", "48",
        "--synthetic_num_dev", "12",
        "--synthetic_num_test", "12",
        "--synthetic_image_size", "32",
        "--vision_model", "vit-scratch",
        "--image_size", "32",
        "--embed_dim", "32",
        "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "32",
        "--num_train_epochs", "2",
        "--checkpointing_steps", "2",
        "--generate_synthetic",
        *extra,
    ]  # fmt: skip


def run(command: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]


def weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("training")
    data_root, output = root / "data", root / "uninterrupted"
    run(train_command(output, data_root))
    return output, data_root


@pytest.mark.slow
def test_run_writes_best_model_history_and_test_results(uninterrupted):
    output, _ = uninterrupted
    history = json.loads((output / "dev_history.json").read_text())
    results = json.loads((output / "eval_results.json").read_text())
    assert [entry["epoch"] for entry in history] == [0, 1]
    for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum"):
        assert 0 <= results[key] <= (600 if key == "rsum" else 100)
    best_epoch = max(range(len(history)), key=lambda epoch: history[epoch]["rsum"])
    assert results["best_epoch"] == best_epoch
    assert results["best_dev_rsum"] == history[best_epoch]["rsum"]
    model = SepsModel.from_pretrained(output / "best")  # loadable, model and processor side by side
    assert model.config.embed_dim == 32 and (output / "best" / "processor_config.json").is_file()
    # 48 images, one caption each per epoch, batches of 8: 6 steps an epoch; checkpoints every 2 steps, 2 kept.
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == [
        f"{CHECKPOINT_PREFIX}10",
        f"{CHECKPOINT_PREFIX}12",
    ]


@pytest.mark.slow
def test_killed_and_resumed_run_ends_with_the_same_weights(uninterrupted, tmp_path):
    reference, data_root = uninterrupted
    output = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    process = subprocess.Popen(
        train_command(output, data_root), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while latest_checkpoint(output / "checkpoints") is None or latest_checkpoint(output / "checkpoints").name == (
        f"{CHECKPOINT_PREFIX}2"
    ):
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # mid-epoch 0 or later, possibly while writing a checkpoint
    process.wait()
    killed_at = latest_checkpoint(output / "checkpoints")
    assert killed_at is not None and int(killed_at.name.split("-")[1]) < 12
    run(train_command(output, data_root, "--resume_from_checkpoint", "latest"))

    final, expected = (
        weights(latest_checkpoint(output / "checkpoints")),
        weights(reference / "checkpoints" / "checkpoint-12"),
    )
    assert final.keys() == expected.keys()
    for name, tensor in expected.items():
        assert (final[name] == tensor).all(), name
    assert json.loads((output / "eval_results.json").read_text()) == json.loads(
        (reference / "eval_results.json").read_text()
    )


def test_a_checkpoint_half_written_is_never_resumed_from(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    for step in (2, 4):
        temporary = checkpoints / f".tmp-{CHECKPOINT_PREFIX}{step}"
        temporary.mkdir(parents=True)
        (temporary / "model.safetensors").write_text("complete")
        publish_checkpoint(temporary, checkpoints / f"{CHECKPOINT_PREFIX}{step}", keep=2)
    (checkpoints / f".tmp-{CHECKPOINT_PREFIX}6").mkdir()  # a kill during the next save
    assert latest_checkpoint(checkpoints) == checkpoints / f"{CHECKPOINT_PREFIX}4"
    temporary = checkpoints / f".tmp-{CHECKPOINT_PREFIX}8"
    temporary.mkdir()
    publish_checkpoint(temporary, checkpoints / f"{CHECKPOINT_PREFIX}8", keep=2)
    names = sorted(path.name for path in checkpoints.iterdir())
    assert names == [f".tmp-{CHECKPOINT_PREFIX}6", f"{CHECKPOINT_PREFIX}4", f"{CHECKPOINT_PREFIX}8"]


def test_epoch_order_is_reproducible_and_one_caption_per_image():
    caption_to_image = [image for image in range(10) for _ in range(5)]
    first = epoch_order(caption_to_image, epoch=3, seed=0, one_caption_per_image=True)
    assert first == epoch_order(caption_to_image, epoch=3, seed=0, one_caption_per_image=True)
    assert first != epoch_order(caption_to_image, epoch=4, seed=0, one_caption_per_image=True)
    assert sorted(caption_to_image[row] for row in first) == list(range(10))
    every = epoch_order(caption_to_image, epoch=3, seed=0, one_caption_per_image=False)
    assert sorted(every) == list(range(50))


@pytest.mark.slow
def test_default_run_keeps_the_pretrained_cnn_frozen(tmp_path):
    """The default vision backbone (EfficientNet-Lite0's first five stages, ImageNet weights) on the synthetic
    benchmark: trained around, never changed, BatchNorm statistics included."""
    from transformers_seps.train.arguments import EFFICIENTNET_LITE0_STRIDE16
    from transformers_seps.train.backbones import load_vision_backbone

    command = [
        sys.executable, str(SCRIPT),
        "--output_dir", str(tmp_path / "run"),
        "--data_root", str(tmp_path / "data"),
        "--synthetic_num_train", "24",
        "--synthetic_num_dev", "8",
        "--synthetic_num_test", "8",
        "--image_size", "64",
        "--embed_dim", "32",
        "--per_device_train_batch_size", "8",
        "--num_train_epochs", "2",  # the second epoch follows a dev evaluation (model.eval(), then train())
        "--eval_test", "false",
        "--generate_synthetic",
    ]  # fmt: skip
    run(command)
    trained = SepsModel.from_pretrained(tmp_path / "run" / "best")
    pretrained = load_vision_backbone(EFFICIENTNET_LITE0_STRIDE16, image_size=64).state_dict()
    assert trained.config.num_patches == 16  # 64 px at stride 16
    for name, tensor in trained.vision_model.state_dict().items():
        assert (tensor == pretrained[name]).all(), name
    info = json.loads((tmp_path / "data" / "synthetic_info.json").read_text())
    assert info["config"]["image_size"] == 64  # the benchmark is rendered at the model's input side


def test_freezing_a_backbone_trained_from_scratch_is_refused(tmp_path):
    from transformers_seps.train.arguments import DataArguments, ModelArguments, RetrievalTrainingArguments
    from transformers_seps.train.training import run_training

    with pytest.raises(ValueError, match="random initialisation"):
        run_training(
            ModelArguments(vision_model="vit-scratch", freeze_vision_model=True),
            DataArguments(data_root=str(tmp_path / "data")),
            RetrievalTrainingArguments(output_dir=str(tmp_path / "run")),
        )
    assert not (tmp_path / "data").exists()  # refused before generating anything


@pytest.mark.slow
def test_the_run_writes_the_fusion_weight_and_logit_scale_fit_on_the_dev_split(uninterrupted):
    """After training, best/config.json holds the first_stage_weight that `fit_first_stage_weight` finds on the best
    model's dev scores (with dense captions), and the scale that `fit_logit_scale` finds on its fused dev scores
    without dense captions (as the pipelines score); the test results report the three scorers."""
    from transformers_seps import SepsProcessor
    from transformers_seps.calibration import fit_first_stage_weight, fit_logit_scale
    from transformers_seps.train.data import load_retrieval_split
    from transformers_seps.train.evaluation import encode_split, score_split, scorer_similarities

    output, data_root = uninterrupted
    best = SepsModel.from_pretrained(output / "best")
    processor = SepsProcessor.from_pretrained(output / "best")
    dev = load_retrieval_split(data_root, "synthetic", "dev", dense_captions="required")
    encoded = encode_split(best, processor, dev, 32, progress=False)
    scores = scorer_similarities(best, encoded, "image")
    weight = fit_first_stage_weight(scores["seps"], scores["first_stage"], dev.caption_to_image)
    assert best.config.first_stage_weight == weight
    without_dense = score_split(best, encoded, "none", progress=False)  # the model's score: fused with the weight
    assert best.config.logit_scale != 1.0
    assert best.config.logit_scale == pytest.approx(fit_logit_scale(without_dense, dev.caption_to_image), rel=1e-4)
    results = json.loads((output / "eval_results.json").read_text())
    assert results["first_stage_weight"] == weight
    assert {"rsum", "seps_rsum", "first_stage_rsum"} <= set(results)
