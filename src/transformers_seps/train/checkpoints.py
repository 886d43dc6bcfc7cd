"""Checkpoints and run folders: atomic `checkpoint-<step>` folders, and the run id and arguments recorded in
`output_dir`, so that no run overwrites or resumes another."""

import json
import os
import re
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from .cli import UsageError, replace_folder

CHECKPOINT_PREFIX = "checkpoint-"


def checkpoint_step(path: Path) -> int | None:
    """The step of a `checkpoint-<step>` folder, None for anything else (temporary folders included)."""
    match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", path.name)
    return int(match.group(1)) if match else None


def checkpoint_run_id(path: Path) -> str | None:
    """The id of the run that wrote a checkpoint folder (from its `RUN_RECORD`), None if it has no record."""
    record = _read_json(path / RUN_RECORD)
    return record.get("run_id") if isinstance(record, dict) else None


def _run_checkpoints(directory: Path, run_id: str | None) -> list[tuple[int, Path]]:
    """(step, path) of the complete checkpoints under `directory`, of run `run_id` only unless it is None."""
    if not directory.is_dir():
        return []
    steps = [(step, path) for path in directory.iterdir() if (step := checkpoint_step(path)) is not None]
    return sorted((step, path) for step, path in steps if run_id is None or checkpoint_run_id(path) == run_id)


def latest_checkpoint(directory: str | os.PathLike, run_id: str | None = None) -> Path | None:
    """The complete checkpoint with the highest step under `directory` (of run `run_id` only, if given), or None."""
    checkpoints = _run_checkpoints(Path(directory), run_id)
    return checkpoints[-1][1] if checkpoints else None


def publish_checkpoint(temporary: Path, final: Path, keep: int = 2, run_id: str | None = None) -> None:
    """Rename a fully written checkpoint folder to its final `checkpoint-<step>` name; keep the newest `keep`
    (of run `run_id` only, if given: another run's checkpoints are neither counted nor deleted).

    Write with `accelerator.save_state(temporary)` on every process, wait for everyone, then call this on the
    main process only. A kill during the write leaves only the temporary folder, which `latest_checkpoint`
    never returns, so a checkpoint that loads is always complete.
    """
    if final.exists() and run_id is not None and checkpoint_run_id(final) != run_id:
        raise FileExistsError(f"{final} belongs to another run; it is not replaced")
    replace_folder(temporary, final)
    checkpoints = _run_checkpoints(final.parent, run_id)
    for _, path in checkpoints[: max(0, len(checkpoints) - keep)]:
        shutil.rmtree(path)


RUN_RECORD = "seps_run.json"
# What a training run writes in its output_dir; `--overwrite_output_dir` deletes these and nothing else.
RUN_OUTPUTS = ("best", "checkpoints", "dev_history.json", "eval_results.json", RUN_RECORD)
# Arguments that may differ when a run is resumed: they change what is logged or reported, not what is trained.
RESUMABLE_ARGUMENTS = frozenset(
    {
        "resume_from_checkpoint",
        "overwrite_output_dir",
        "generate_synthetic",
        "num_workers",
        "logging_steps",
        "report_to",
        "push_to_hub",
        "hub_model_id",
        "eval_test",
        "per_device_eval_batch_size",
    }
)
RESUME_LATEST = "latest"
RESUME_LATEST_IF_ANY = "latest_if_any"


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def run_arguments(*argument_dataclasses: object) -> dict:
    """The arguments that define a run (everything but `RESUMABLE_ARGUMENTS`), as JSON values."""
    merged = {key: value for arguments in argument_dataclasses for key, value in asdict(arguments).items()}
    return json.loads(json.dumps({key: value for key, value in merged.items() if key not in RESUMABLE_ARGUMENTS}))


@dataclass
class RunPlan:
    """What `plan_run` decided for an output folder: the run's id, the checkpoint to resume (or None), whether the
    folder starts a new run (its record is then written) and what `--overwrite_output_dir` deletes first."""

    run_id: str
    resume: Path | None
    new_run: bool
    to_delete: list[Path]


def plan_run(output_dir: Path, arguments: dict, resume: str | None, overwrite: bool) -> RunPlan:
    """Decide, before any work and without writing anything, how a run uses `output_dir`.

    A new run needs an empty (or missing) folder, or `overwrite` (which deletes the previous run's outputs,
    `RUN_OUTPUTS`). `resume` "latest" continues the run recorded in the folder from its newest checkpoint (an error
    if there is none); "latest_if_any" does the same but starts a new run when the folder holds no run yet or
    its run has no checkpoint; a path resumes that checkpoint. A recorded run is only continued with the
    same `arguments`, and only from its own checkpoints.
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"--output_dir {output_dir} is a file, not a folder")
    if overwrite and resume:
        raise UsageError(
            "--overwrite_output_dir starts a new run and --resume_from_checkpoint continues one: pass only one"
        )
    occupied = output_dir.is_dir() and any(output_dir.iterdir())
    record = _read_json(output_dir / RUN_RECORD)
    record = record if isinstance(record, dict) and "run_id" in record else None
    new_run_id = uuid.uuid4().hex
    if not resume:
        if occupied and not overwrite:
            choices = (
                f"it holds run {record['run_id']}: pass --overwrite_output_dir to replace that run, "
                f"--resume_from_checkpoint {RESUME_LATEST} to continue it"
                if record
                else "it holds no training run: pass --overwrite_output_dir to write there anyway"
            )
            raise UsageError(f"--output_dir {output_dir} is not empty ({choices}), or another --output_dir")
        to_delete = [output_dir / name for name in RUN_OUTPUTS if (output_dir / name).exists()] if overwrite else []
        return RunPlan(new_run_id, None, True, to_delete)

    if resume not in (RESUME_LATEST, RESUME_LATEST_IF_ANY):
        checkpoint = Path(resume)
        if checkpoint_step(checkpoint) is None or not checkpoint.is_dir():
            raise UsageError(f"--resume_from_checkpoint {resume}: not a {CHECKPOINT_PREFIX}<step> folder")
    if record is None:
        if occupied:
            raise UsageError(
                f"--resume_from_checkpoint {resume}: --output_dir {output_dir} holds no run record ({RUN_RECORD}), "
                "so its checkpoints cannot be told apart from another run's; pass another --output_dir"
            )
        if resume == RESUME_LATEST:
            raise UsageError(
                f"--resume_from_checkpoint {RESUME_LATEST}: no run in --output_dir {output_dir} to resume; pass "
                f"--resume_from_checkpoint {RESUME_LATEST_IF_ANY} to start one when there is none"
            )
        return RunPlan(new_run_id, None if resume == RESUME_LATEST_IF_ANY else Path(resume), True, [])

    _check_same_arguments(output_dir, record, arguments)
    run_id = record["run_id"]
    if resume in (RESUME_LATEST, RESUME_LATEST_IF_ANY):
        checkpoint = latest_checkpoint(output_dir / "checkpoints", run_id)
        if checkpoint is None and resume == RESUME_LATEST:
            raise UsageError(
                f"--resume_from_checkpoint {RESUME_LATEST}: run {run_id} in {output_dir} has no checkpoint yet; "
                f"pass --resume_from_checkpoint {RESUME_LATEST_IF_ANY} to start it from scratch"
            )
    elif checkpoint_run_id(checkpoint) not in (run_id, None):
        raise UsageError(
            f"--resume_from_checkpoint {resume}: this checkpoint belongs to run {checkpoint_run_id(checkpoint)}, "
            f"not to run {run_id} of --output_dir {output_dir}"
        )
    return RunPlan(run_id, checkpoint, False, [])


def _check_same_arguments(output_dir: Path, record: dict, arguments: dict) -> None:
    recorded = record.get("arguments", {})
    changed = [
        f"--{key} {arguments.get(key)!r} (the run has {recorded.get(key)!r})"
        for key in sorted(set(recorded) | set(arguments))
        if recorded.get(key) != arguments.get(key)
    ]
    if changed:
        raise UsageError(
            f"--output_dir {output_dir} holds run {record['run_id']}, made with other arguments: "
            f"{'; '.join(changed)}. Resume with the run's arguments, or start a new run in another --output_dir"
        )


def start_run_folder(output_dir: Path, plan: RunPlan, arguments: dict) -> None:
    """Main process only: delete what `--overwrite_output_dir` replaces and write a new run's record."""
    try:
        for path in plan.to_delete:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        if plan.new_run:
            output_dir.mkdir(parents=True, exist_ok=True)
            record = {"run_id": plan.run_id, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "arguments": arguments}
            (output_dir / RUN_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    except OSError as error:
        raise UsageError(f"--output_dir {output_dir}: cannot write there ({error.strerror or error})") from error
