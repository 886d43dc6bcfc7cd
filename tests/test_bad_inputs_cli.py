"""Bad inputs to the command lines in `examples/` and the demo page: each is refused before any work with one line on
stderr that names the flag or the path, and exit status 2. Also: no run is destroyed or resumed by another run, and
--help."""

import json
import os
import runpy
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from conftest import tiny_bert_config
from transformers import AutoTokenizer, BertModel

from transformers_seps.train.arguments import DataArguments, ModelArguments, RetrievalTrainingArguments
from transformers_seps.train.backbones import minilm_path
from transformers_seps.train.checkpoints import (
    CHECKPOINT_PREFIX,
    RUN_RECORD,
    latest_checkpoint,
    plan_run,
    publish_checkpoint,
    run_arguments,
)
from transformers_seps.train.cli import USAGE_ERROR_STATUS, UsageError, check_model_location
from transformers_seps.train.evaluation import infer_dataset
from transformers_seps.train.training import check_global_batch, launched_processes, plan_schedule, run_training

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DEMO_APP = Path(__file__).resolve().parents[1] / "demo" / "app.py"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def example_main(name: str):
    """The `main(argv)` of examples/<name>.py (or of the demo page, "app"), loaded in this process (the heavy imports
    are already done)."""
    return runpy.run_path(str(DEMO_APP if name == DEMO else EXAMPLES / f"{name}.py"))["main"]


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch, tmp_path_factory) -> Path:
    """No test here reaches the network: the Hub is offline (as HF_HUB_OFFLINE=1 makes it), its cache empty."""
    import huggingface_hub.constants

    cache = tmp_path_factory.mktemp("hub_cache")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def places(tmp_path_factory, tiny_synthetic) -> dict[str, str]:
    """Paths the table's rows refer to as {name}."""
    root = tmp_path_factory.mktemp("places")
    (root / "used").mkdir()
    (root / "used" / "notes.txt").write_text("a file of an earlier run")
    (root / "a_file").write_text("not a folder")
    (root / "empty").mkdir()
    (root / "model").mkdir()  # the checks run before the model is loaded
    (root / "checkpoint.pth").write_bytes(b"checked before it is read")
    no_dense = root / "no_dense"
    shutil.copytree(tiny_synthetic, no_dense)
    (no_dense / "synthetic_test.jsonl").unlink()
    return {
        "tmp": str(root),
        "used": str(root / "used"),
        "file": str(root / "a_file"),
        "empty": str(root / "empty"),
        "model": str(root / "model"),
        "checkpoint": str(root / "checkpoint.pth"),
        "synthetic": str(tiny_synthetic),
        "no_dense": str(no_dense),
        "f30k": str(FIXTURES / "f30k_test_subset"),
        "coco": str(FIXTURES / "authors_layout" / "coco"),
    }


TRAIN = "train_retrieval"
EVALUATE = "evaluate_retrieval"
CONVERT = "convert_official_checkpoint"
CAPTION = "generate_dense_captions"
DEMO = "app"
INDEX = "build_index"
EVAL_BASE = "--model {model} --data_root {synthetic}"
CONVERT_BASE = "--checkpoint {checkpoint} --output_dir {tmp}/converted"
CAPTION_BASE = "--image_root {f30k} --output {tmp}/dense.jsonl --model {model}"

# (script, arguments, what the one-line message must contain)
BAD_INPUTS = [
    (TRAIN, "--max_steps 0", "--max_steps must be a positive integer (or -1"),
    (TRAIN, "--max_steps -5", "--max_steps must be a positive integer"),
    (TRAIN, "--max_steps ten", "argument --max_steps/--max-steps: invalid int value: 'ten'"),
    (TRAIN, "--per_device_train_batch_size 0", "--per_device_train_batch_size must be a positive integer, got 0"),
    (TRAIN, "--num_train_epochs 0", "--num_train_epochs must be a positive integer, got 0"),
    (
        TRAIN,
        "--per_device_train_batch_size 1",
        "--per_device_train_batch_size 1 on 1 process is a global batch of 1: the",
    ),
    (
        TRAIN,
        "--data_root {synthetic} --synthetic_num_train 10 --per_device_train_batch_size 16",
        "a global batch of 16, "
        "more than the 10 training pairs of an epoch: use at most --per_device_train_batch_size 10",
    ),
    (
        TRAIN,
        "--synthetic_num_train 10 --one_caption_per_image false --per_device_train_batch_size 64",
        "more than the 50",
    ),
    (TRAIN, "--learning_rate -0.001", "--learning_rate must be a number in (0, inf], got -0.001"),
    (TRAIN, "--first_stage_learning_rate 0", "--first_stage_learning_rate must be a number in (0, inf], got 0"),
    (TRAIN, "--config_overrides beta", "--config_overrides 'beta': 'beta' is not name=value"),
    (TRAIN, "--config_overrides betta=0.3", "--config_overrides 'betta=0.3': key betta isn't in the original config"),
    (TRAIN, "--config_overrides beta=0.9", "--config_overrides 'beta=0.9': beta must be in [0, 0.5]"),
    (TRAIN, "--config_overrides variant=official", "set variant with its own flag (--variant)"),
    (TRAIN, "--max_grad_norm nan", "--max_grad_norm must be a number in [0, inf], got nan"),
    (TRAIN, "--checkpointing_steps often", "--checkpointing_steps must be a positive number of steps or 'epoch'"),
    (TRAIN, "--dataset f31k", "--dataset must be one of synthetic, f30k, coco; got 'f31k'"),
    (TRAIN, "--use_dense_captions maybe", "argument --use_dense_captions/--use-dense-captions: Truthy value"),
    (TRAIN, "--synthetic_image_size 16", "--synthetic_image_size must be an integer >= 32, got 16"),
    (TRAIN, "--data_root {tmp}/data/synthtic", "--data_root {tmp}/data/synthtic: no such folder"),
    (TRAIN, "--dataset f30k --data_root {tmp}/f30k", "--data_root {tmp}/f30k: no such folder"),
    (TRAIN, "--dataset f30k --data_root {f30k}", "--data_root {f30k} has no train_caps.txt (the train split)"),
    (TRAIN, "--data_root {no_dense}", "--use_dense_captions needs {no_dense}/synthetic_test.jsonl, which does not"),
    (TRAIN, "--output_dir {used}", "--output_dir {used} is not empty"),
    (TRAIN, "--output_dir {file}", "--output_dir {file}: {file} is a file, not a folder"),
    (TRAIN, "--output_dir {file}/run", "--output_dir {file}/run: {file} is a file"),
    (TRAIN, "--output_dir {empty} --resume_from_checkpoint latest", "--resume_from_checkpoint latest_if_any"),
    (TRAIN, "--output_dir {empty} --resume_from_checkpoint {tmp}/nothing", "--resume_from_checkpoint {tmp}/nothing"),
    (TRAIN, "--overwrite_output_dir --resume_from_checkpoint latest", "pass only one"),
    (TRAIN, "--push_to_hub", "--push_to_hub needs --hub_model_id"),
    (TRAIN, "--vision_model vit-scratch --freeze_vision_model true", "--freeze_vision_model true would keep"),
    (EVALUATE, "--model {tmp}/no-model --data_root {synthetic}", "--model {tmp}/no-model: model not found"),
    (EVALUATE, "--model {model} --data_root {tmp}/no-data", "--data_root {tmp}/no-data: this folder does not exist"),
    (EVALUATE, "--model {model} --data_root {empty}", "cannot tell its dataset; pass --dataset"),
    (EVALUATE, EVAL_BASE + " --dataset imagenet", "argument --dataset: invalid choice: 'imagenet'"),
    (EVALUATE, EVAL_BASE + " --dataset coco", "--dataset coco, but --data_root {synthetic} holds a synthetic"),
    (EVALUATE, EVAL_BASE + " --dense_pairing leaky", "argument --dense_pairing/--dense-pairing: invalid choice"),
    (EVALUATE, EVAL_BASE + " --split testall", "--split testall: --data_root {synthetic} has no testall_caps.txt"),
    (EVALUATE, EVAL_BASE + " --batch_size 0", "--batch_size must be a positive integer, got 0"),
    (EVALUATE, EVAL_BASE + " --output_json {empty}", "--output_json {empty}: this is a folder"),
    (EVALUATE, EVAL_BASE + " --save_sims {file}/sims.npy", "--save_sims {file}/sims.npy: {file} is a file"),
    (EVALUATE, "--model {model} --data_root {no_dense}", "--dense_pairing none to evaluate without dense captions"),
    (CONVERT, "--checkpoint {tmp}/model_best.pth --output_dir {tmp}/out", "--checkpoint {tmp}/model_best.pth: this"),
    (CONVERT, "--checkpoint {checkpoint} --output_dir {used}", "--output_dir {used} is not empty; pass --overwrite"),
    (CONVERT, "--checkpoint {checkpoint} --output_dir {file}", "--output_dir {file} is a file"),
    (CONVERT, CONVERT_BASE + " --method clip", "argument --method: invalid choice: 'clip'"),
    (CONVERT, CONVERT_BASE + " --push_to_hub my model", "unrecognized arguments: model"),
    (CONVERT, CONVERT_BASE + " --push_to_hub a/b/c", "--push_to_hub a/b/c: expected a Hub repository id"),
    (CONVERT, CONVERT_BASE + " --vision_config {tmp}/vit.json", "--vision_config {tmp}/vit.json: this path does"),
    (CAPTION, "--image_root {tmp}/photos --output {tmp}/d.jsonl", "--image_root {tmp}/photos: this folder does not"),
    (CAPTION, CAPTION_BASE + " --top_p 1.5", "--top_p must be a number in (0, 1], got 1.5"),
    (CAPTION, CAPTION_BASE + " --temperature hot", "argument --temperature: invalid float value: 'hot'"),
    (CAPTION, CAPTION_BASE + " --batch_size 0", "--batch_size must be a positive integer, got 0"),
    (CAPTION, CAPTION_BASE + " --max_new_tokens -1", "--max_new_tokens must be a positive integer, got -1"),
    (CAPTION, CAPTION_BASE + " --dtype float8", "argument --dtype: invalid choice: 'float8'"),
    (CAPTION, "--image_root {f30k} --output {empty} --model {model}", "--output {empty}: this is a folder"),
    (CAPTION, "--image_root {f30k} --output {tmp}/d.jsonl --model ./no-llava", "--model ./no-llava: model not"),
    (CAPTION, CAPTION_BASE + " --ids_file {tmp}/ids.txt", "--ids_file {tmp}/ids.txt: this file does not exist"),
    (
        CAPTION,
        "--image_root {f30k} --output {tmp}/d.jsonl --model no-org/no-such-captioner",
        "--model no-org/no-such"
        "-captioner: not in the local Hugging Face cache, and HF_HUB_OFFLINE is set: give a model folder, or download",
    ),
    (EVALUATE, "--model no-org/no-such-seps --data_root {synthetic}", "--model no-org/no-such-seps: not in the local"),
    (
        INDEX,
        "--model {model} --image_root {f30k} --output_dir {used} --overwrite_output_dir",
        "--output_dir {used} "
        "holds files that are not an index's (notes.txt): --overwrite_output_dir replaces an index only",
    ),
    (DEMO, "--gallery {synthetic}/images", "--model runs/demo/best: model not found, neither a folder nor a hub id"),
    (DEMO, "--model {model} --gallery {tmp}/photos", "--gallery {tmp}/photos: this folder does not exist"),
    (DEMO, "--model {model} --gallery {empty}", "--gallery {empty} holds no image file matching --pattern '**/*'"),
    (DEMO, "--model {model} --gallery {synthetic}/images --max_images 0", "--max_images must be a positive integer"),
]


@pytest.mark.parametrize(("script", "arguments", "expected"), BAD_INPUTS)
def test_bad_input_is_one_clear_line_and_status_2(script, arguments, expected, places, capsys, monkeypatch):
    monkeypatch.chdir(places["tmp"])  # the default --output_dir and --data_root land in a scratch folder
    before = sorted(Path(places["tmp"]).rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        example_main(script)(arguments.format(**places).split())
    assert exit_info.value.code == USAGE_ERROR_STATUS
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{script}.py: error: ")
    assert expected.format(**places) in lines[0]
    assert sorted(Path(places["tmp"]).rglob("*")) == before  # nothing was written


def test_the_global_batch_counts_every_process_and_datasets_read_later_are_checked_too(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun / accelerate launch with 2 processes
    assert launched_processes() == 2
    check_global_batch(1, launched_processes())  # 2 pairs: each has a negative
    args = RetrievalTrainingArguments(output_dir="unused", per_device_train_batch_size=8)
    caption_to_image = [image for image in range(6) for _ in range(5)]  # a small f30k-layout folder: 30 captions
    assert plan_schedule(args, caption_to_image, 1, 2, one_caption_per_image=False).steps_per_epoch == 3
    with pytest.raises(UsageError, match="8 on 2 processes is a global batch of 16, more than the 6 training pairs"):
        plan_schedule(args, caption_to_image, 2, 2, one_caption_per_image=True)


def test_a_hub_id_is_looked_up_in_the_cache_then_asked_of_the_hub_once(offline_hub, monkeypatch):
    """Issue 24: an id that does not exist took minutes offline, then a traceback without the id."""
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError
    from huggingface_hub.utils import httpx

    snapshot = offline_hub / "models--org--cached" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (offline_hub / "models--org--cached" / "refs").mkdir()
    (offline_hub / "models--org--cached" / "refs" / "main").write_text("0" * 40)
    check_model_location("model", "org/cached")  # cached: loads offline, the Hub is not asked

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    asked = []

    def missing(repo_id, timeout):
        asked.append((repo_id, timeout))
        request = httpx.Request("GET", f"https://huggingface.co/api/models/{repo_id}")
        raise RepositoryNotFoundError("404", response=httpx.Response(404, request=request))

    monkeypatch.setattr(huggingface_hub, "model_info", missing)
    with pytest.raises(UsageError, match="--model org/typo: no such model on the Hugging Face Hub"):
        check_model_location("model", "org/typo")
    assert asked == [("org/typo", 10)]

    def unreachable(repo_id, timeout):
        raise httpx.ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    with pytest.raises(UsageError, match=r"the Hugging Face Hub cannot be reached to find it \(ConnectError: "):
        check_model_location("model", "org/typo")


def test_debug_shows_the_traceback(places):
    with pytest.raises(SystemExit):
        example_main(EVALUATE)(["--model", places["model"], "--data_root", places["synthetic"], "--batch_size", "0"])
    with pytest.raises(UsageError, match="--batch_size must be a positive integer"):
        example_main(EVALUATE)(
            ["--model", places["model"], "--data_root", places["synthetic"], "--batch_size", "0", "--debug"]
        )


def test_evaluation_infers_the_dataset_from_the_authors_files(places):
    assert infer_dataset(places["f30k"]) == ("f30k", "f30k_test.jsonl")
    assert infer_dataset(places["coco"]) == ("coco", "testall_caps.txt")
    assert infer_dataset(places["synthetic"]) == ("synthetic", "synthetic_info.json")
    assert infer_dataset(places["empty"]) is None


def test_the_leak_warning_comes_once_from_the_callers_line(saved_models, tiny_synthetic, tmp_path):
    main = example_main(EVALUATE)
    arguments = ["--model", str(saved_models["official"]), "--data_root", str(tiny_synthetic)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main([*arguments, "--dense_pairing", "query_ground_truth", "--output_json", str(tmp_path / "audit.json")])
    leaks = [warning for warning in caught if "label leak" in str(warning.message)]
    assert len(leaks) == 1 and Path(leaks[0].filename).name == "evaluation.py"  # run_evaluation's call, not torch
    assert json.loads((tmp_path / "audit.json").read_text())["difference"]  # inferred: --dataset synthetic


# ---------------------------------------------------------------------------------------------- run folders


@pytest.fixture(scope="module")
def tiny_text_model(tmp_path_factory) -> str:
    """A one-layer BERT with all-MiniLM-L6-v2's tokenizer, saved as a `--text_model` folder."""
    folder = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    BertModel(tiny_bert_config(vocab_size=30522), add_pooling_layer=False).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(folder)
    return str(folder)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared: more threads only slow a tiny run down
    yield
    torch.set_num_threads(threads)


def tiny_run_arguments(data_root: Path, output_dir: Path, text_model: str = "", **training) -> tuple:
    """A run of a few seconds on the tiny synthetic benchmark: 10 images, 2 steps an epoch, 2 epochs."""
    return (
        ModelArguments(
            vision_model="vit-scratch",
            text_model=text_model or ModelArguments.text_model,
            image_size=32,
            embed_dim=16,
            max_violation_warmup_epochs=1,
        ),
        DataArguments(
            data_root=str(data_root),
            synthetic_num_train=10,
            synthetic_num_dev=6,
            synthetic_num_test=8,
            synthetic_image_size=32,
            synthetic_seed=1,
        ),
        RetrievalTrainingArguments(
            output_dir=str(output_dir),
            per_device_train_batch_size=5,
            per_device_eval_batch_size=8,
            num_train_epochs=2,
            checkpointing_steps="1",
            **training,
        ),
    )


def record(output_dir: Path) -> dict:
    return json.loads((output_dir / RUN_RECORD).read_text())


@pytest.mark.slow
def test_a_used_output_dir_is_refused_and_overwrite_starts_a_new_run(
    tiny_synthetic, tiny_text_model, tmp_path, capsys, one_thread
):
    output = tmp_path / "run"
    run_training(*tiny_run_arguments(tiny_synthetic, output, tiny_text_model))
    printed = capsys.readouterr().out
    assert "epoch 1: the triplet loss switches from the sum over all negatives to the hardest negative" in printed
    first = record(output)
    assert sorted(path.name for path in (output / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-4"]
    results = (output / "eval_results.json").read_text()
    best = (output / "best" / "model.safetensors").read_bytes()

    with pytest.raises(UsageError, match="is not empty .*--overwrite_output_dir"):
        run_training(*tiny_run_arguments(tiny_synthetic, output, tiny_text_model, learning_rate=3e-4))
    assert record(output) == first and (output / "eval_results.json").read_text() == results
    assert (output / "best" / "model.safetensors").read_bytes() == best

    with pytest.raises(UsageError, match=r"--learning_rate 0.0003 \(the run has None\)"):
        run_training(
            *tiny_run_arguments(
                tiny_synthetic, output, tiny_text_model, learning_rate=3e-4, resume_from_checkpoint="latest"
            )
        )

    (output / "notes.txt").write_text("kept")  # another lr than the synthetic default (1e-3): another model
    run_training(
        *tiny_run_arguments(tiny_synthetic, output, tiny_text_model, learning_rate=3e-4, overwrite_output_dir=True)
    )
    second = record(output)
    assert second["run_id"] != first["run_id"] and second["arguments"]["learning_rate"] == 3e-4
    assert {path.name for path in (output / "checkpoints").iterdir()} == {"checkpoint-3", "checkpoint-4"}
    assert latest_checkpoint(output / "checkpoints", first["run_id"]) is None  # the old run's checkpoints are gone
    assert (output / "best" / "model.safetensors").read_bytes() != best
    assert (output / "notes.txt").read_text() == "kept"


def fake_checkpoint(checkpoints: Path, step: int, run_id: str) -> Path:
    folder = checkpoints / f"{CHECKPOINT_PREFIX}{step}"
    folder.mkdir(parents=True)
    (folder / RUN_RECORD).write_text(json.dumps({"run_id": run_id, "step": step}))
    return folder


def started_run(output_dir: Path, run_id: str, arguments: dict) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / RUN_RECORD).write_text(json.dumps({"run_id": run_id, "arguments": arguments}))


def test_latest_never_resumes_another_runs_checkpoint(tmp_path):
    arguments = run_arguments(*tiny_run_arguments(tmp_path / "data", tmp_path / "run"))
    started_run(tmp_path / "run", "ours", arguments)
    checkpoints = tmp_path / "run" / "checkpoints"
    ours = fake_checkpoint(checkpoints, 4, "ours")
    fake_checkpoint(checkpoints, 9, "theirs")  # newer, but another run's
    (checkpoints / f"{CHECKPOINT_PREFIX}12").mkdir()  # no record at all
    for resume in ("latest", "latest_if_any"):
        plan = plan_run(tmp_path / "run", arguments, resume, overwrite=False)
        assert (plan.run_id, plan.resume, plan.new_run) == ("ours", ours, False)
    with pytest.raises(UsageError, match="belongs to run theirs, not to run ours"):
        plan_run(tmp_path / "run", arguments, str(checkpoints / f"{CHECKPOINT_PREFIX}9"), overwrite=False)


def test_latest_without_a_checkpoint_is_an_error_unless_latest_if_any(tmp_path):
    arguments = run_arguments(*tiny_run_arguments(tmp_path / "data", tmp_path / "run"))
    with pytest.raises(UsageError, match="no run in --output_dir .* pass --resume_from_checkpoint latest_if_any"):
        plan_run(tmp_path / "run", arguments, "latest", overwrite=False)
    fresh = plan_run(tmp_path / "run", arguments, "latest_if_any", overwrite=False)
    assert fresh.new_run and fresh.resume is None
    started_run(tmp_path / "run", "ours", arguments)
    fake_checkpoint(tmp_path / "run" / "checkpoints", 9, "theirs")
    with pytest.raises(UsageError, match="run ours in .* has no checkpoint yet"):
        plan_run(tmp_path / "run", arguments, "latest", overwrite=False)
    plan = plan_run(tmp_path / "run", arguments, "latest_if_any", overwrite=False)
    assert (plan.run_id, plan.resume, plan.new_run) == ("ours", None, False)


def test_rotation_counts_and_deletes_only_this_runs_checkpoints(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    theirs = [fake_checkpoint(checkpoints, step, "theirs") for step in (20, 30)]
    for step in (2, 4, 6):
        temporary = fake_checkpoint(tmp_path / "staging", step, "ours")
        publish_checkpoint(temporary, checkpoints / f"{CHECKPOINT_PREFIX}{step}", keep=2, run_id="ours")
    names = sorted(path.name for path in checkpoints.iterdir())
    assert names == ["checkpoint-20", "checkpoint-30", "checkpoint-4", "checkpoint-6"]
    assert all(folder.is_dir() for folder in theirs)
    with pytest.raises(FileExistsError, match="belongs to another run"):
        publish_checkpoint(fake_checkpoint(tmp_path / "staging", 30, "ours"), theirs[1], run_id="ours")


def test_a_synthetic_benchmark_of_another_size_names_the_flags_that_fit_it(tiny_synthetic, tiny_text_model, tmp_path):
    model_args, data_args, training_args = tiny_run_arguments(tiny_synthetic, tmp_path / "run", tiny_text_model)
    data_args.synthetic_num_train = 6000
    with pytest.raises(UsageError) as error:
        run_training(model_args, data_args, training_args)
    message = str(error.value)
    assert "to train on it, pass --synthetic_num_train 10 --synthetic_num_dev 6 --synthetic_num_test 8" in message
    assert "--synthetic_image_size 32 --synthetic_seed 1" in message and "--overwrite " not in message
    assert not (tmp_path / "run").exists()  # a refused run leaves no trace


# ---------------------------------------------------------------------------------------------- converter


def test_converter_replaces_a_used_folder_only_when_asked_and_keeps_no_old_file(tmp_path, monkeypatch):
    import transformers_seps.tools.publish as publish

    def fake_conversion(checkpoint, output_dir, **_):
        (Path(output_dir) / "model.safetensors").write_text(f"converted from {checkpoint}")

    monkeypatch.setattr(publish, "convert_official_checkpoint", fake_conversion)
    checkpoint = tmp_path / "model_best.pth"
    checkpoint.write_text("weights")
    output = tmp_path / "seps"
    output.mkdir()
    (output / "unrelated.bin").write_text("must not be uploaded")
    convert = example_main(CONVERT)
    with pytest.raises(SystemExit):
        convert(["--checkpoint", str(checkpoint), "--output_dir", str(output)])
    assert sorted(path.name for path in output.iterdir()) == ["unrelated.bin"]
    convert(["--checkpoint", str(checkpoint), "--output_dir", str(output), "--overwrite_output_dir"])
    assert sorted(path.name for path in output.iterdir()) == ["model.safetensors"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model_best.pth", "seps"]  # no temporary left


# ---------------------------------------------------------------------------------------------- subprocesses


@pytest.mark.slow
def test_the_command_line_prints_one_line_without_traceback(places):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(EXAMPLES / f"{TRAIN}.py"), "--output_dir", places["used"]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == USAGE_ERROR_STATUS
    assert result.stderr.strip().splitlines() == [
        f"{TRAIN}.py: error: --output_dir {places['used']} is not empty (it holds no training run: pass "
        "--overwrite_output_dir to write there anyway), or another --output_dir"
    ]
    debug = subprocess.run([*command, "--debug"], capture_output=True, text=True, timeout=300, env=env)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "UsageError" in debug.stderr


@pytest.mark.slow
def test_help_is_correct_and_timed(capsys):
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{TRAIN}.py"), "--help"], capture_output=True, text=True, timeout=300
    )
    elapsed = time.perf_counter() - start
    assert result.returncode == 0
    help_text = " ".join(result.stdout.split())
    assert "--no_use_dense_captions, --no-use-dense-captions Turn --use_dense_captions off." in help_text
    assert "(default: yes on the synthetic benchmark only). (default" not in help_text  # no repeated default
    assert "--overwrite_output_dir" in help_text and "latest_if_any" in help_text
    with capsys.disabled():
        print(f"\ntrain_retrieval.py --help: {elapsed:.1f} s")
