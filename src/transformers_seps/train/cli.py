"""What the four command lines in `examples/` share: argument parsing, up-front checks and one-line errors.

A user mistake (a bad flag value, a missing input, an output that cannot be written) raises `UsageError` before
any expensive work; `run_cli` prints it as one line, `<script>: error: <message>`, on stderr and exits with
status 2, without a traceback (`--debug` shows it). An unexpected error keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

USAGE_ERROR_STATUS = 2


class UsageError(ValueError):
    """A bad command-line or run argument; the message names the flag (or path) and the value."""


def expected_errors() -> tuple[type[Exception], ...]:
    """Errors that describe the user's input, with the file or flag named: printed as one line by `run_cli`.
    (Imported when a command runs: `--help` needs neither the data loaders nor torch.)"""
    from .data import RetrievalDataError, RetrievalFileNotFoundError

    return UsageError, RetrievalDataError, RetrievalFileNotFoundError


@dataclasses.dataclass
class CliOptions:
    debug: bool = dataclasses.field(
        default=False, metadata={"help": "Show the full traceback of an error instead of its one-line message."}
    )


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Adds '(default: X)' to a flag's help unless the help already states its default or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if action.default in (None, argparse.SUPPRESS) or action.option_strings[0].startswith("--no_"):
            return help_text
        if "default" in help_text.lower() or action.required or action.default is False:
            return help_text
        return f"{help_text} (default: %(default)s)"


def build_parser(
    dataclass_types: Sequence[type], description: str | None = None, prog: str | None = None
) -> argparse.ArgumentParser:
    """An `HfArgumentParser` over `dataclass_types` and `CliOptions`: one-line errors, and a correct help for the
    `--no_<flag>` switch of each boolean that defaults to True."""
    from transformers import HfArgumentParser  # imported here: the package's other users do not need it

    class Parser(HfArgumentParser):
        def error(self, message: str):  # argparse prints the usage first; one line is enough
            self.exit(USAGE_ERROR_STATUS, f"{self.prog}: error: {message} (see --help)\n")

    parser = Parser([*dataclass_types, CliOptions], prog=prog, description=description, formatter_class=_HelpFormatter)
    for action in parser._actions:
        negative = next((option for option in action.option_strings if option.startswith("--no_")), None)
        if negative is not None:
            action.help = f"Turn --{negative.removeprefix('--no_')} off."
    return parser


def run_cli(
    main: Callable[[list[Any]], Any],
    dataclass_types: Sequence[type],
    argv: Sequence[str] | None = None,
    description: str | None = None,
    script: str | None = None,
) -> Any:
    """Parse `argv` into `dataclass_types`, call `main(list_of_dataclasses)` and return its result. An expected error
    (`expected_errors`) becomes a one-line message on stderr and `SystemExit(2)`, unless `--debug` is given.
    Messages start with the name of `script` (the example's `__file__`; default: the running program)."""
    parser = build_parser(dataclass_types, description, Path(script).name if script else None)
    *arguments, options, unknown = parser.parse_args_into_dataclasses(
        args=list(sys.argv[1:] if argv is None else argv), return_remaining_strings=True
    )
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return main(arguments)
    except expected_errors() as error:
        if options.debug:
            raise
        message = " ".join(str(error).split())  # one line, whatever the message's own line breaks
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(USAGE_ERROR_STATUS) from None


# ---------------------------------------------------------------------------------------------------------------
# Checks shared by the command lines
# ---------------------------------------------------------------------------------------------------------------


def check_int(flag: str, value: Any, minimum: int, *, allow_none: bool = False, meaning: str = "") -> None:
    """`value` must be an int (not a bool) >= `minimum` (or None when `allow_none`)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        bound = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise UsageError(f"--{flag} must be {bound}{meaning}, got {value!r}")


def check_float(flag: str, value: Any, low: float, high: float = float("inf"), *, low_inclusive: bool = True) -> None:
    """`value` must be a finite number in [low, high] (or (low, high] when not `low_inclusive`)."""
    number_ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    above = number_ok and (value >= low if low_inclusive else value > low)
    if not (above and value <= high):
        interval = f"{'[' if low_inclusive else '('}{low:g}, {high:g}]"
        raise UsageError(f"--{flag} must be a number in {interval}, got {value!r}")


def check_choice(flag: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise UsageError(f"--{flag} must be one of {', '.join(map(str, choices))}; got {value!r}")


def check_existing(flag: str, value: str | os.PathLike, kind: str = "any") -> Path:
    """`value` must exist (`kind`: "file", "folder" or "any"); returns it as a Path."""
    path = Path(value)
    exists = {"file": path.is_file, "folder": path.is_dir, "any": path.exists}[kind]()
    if not exists:
        what = {"file": "file", "folder": "folder", "any": "path"}[kind]
        problem = "is not a " + what if path.exists() else "does not exist"
        raise UsageError(f"--{flag} {os.fspath(value)}: this {what} {problem}")
    return path


def check_writable_file(flag: str, value: str | os.PathLike) -> Path:
    """`value` must be a file that can be created or replaced: its folder exists (or can be made) and is writable."""
    path = Path(value)
    if path.is_dir():
        raise UsageError(f"--{flag} {os.fspath(value)}: this is a folder; give a file name")
    check_writable_folder(flag, path.parent, of=path)
    return path


def check_writable_folder(flag: str, folder: Path, of: Path | None = None) -> None:
    """`folder` exists and is writable, or can be created under a writable existing ancestor."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    target = os.fspath(of if of is not None else folder)
    if not existing.is_dir():
        raise UsageError(f"--{flag} {target}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--{flag} {target}: cannot write to {existing} (permission denied)")


def replace_folder(new: Path, folder: Path) -> None:
    """Move the complete folder `new` to `folder`, replacing what `folder` held (moved aside, then deleted), so
    that `folder` is always either the old or the new one."""
    old = folder.with_name(f".old-{folder.name}-{os.getpid()}")
    if folder.exists():
        os.replace(folder, old)
    os.replace(new, folder)
    shutil.rmtree(old, ignore_errors=True)


def looks_like_hub_id(name: str) -> bool:
    """'org/name' (and not a relative or absolute path)."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and all(name.split("/"))


# Seconds to wait for the Hub when checking that a model id exists.
HUB_CHECK_TIMEOUT = 10


def check_model_location(flag: str, value: str) -> None:
    """A model argument is an existing folder or a Hub id (org/name) that the local cache or the Hub holds
    (`check_hub_model`)."""
    if Path(value).exists():
        return
    if not looks_like_hub_id(value):
        raise UsageError(f"--{flag} {value}: model not found, neither a folder nor a hub id (org/name)")
    check_hub_model(flag, value)


def check_hub_model(flag: str, repo_id: str) -> None:
    """A Hub model id must be in the local Hugging Face cache (it then loads offline) or on the Hub, asked once
    with a short timeout: a `UsageError` says which, before anything loads (loading an unknown id retried for
    minutes offline, then failed without naming it)."""
    from huggingface_hub import model_info, try_to_load_from_cache
    from huggingface_hub.errors import OfflineModeIsEnabled, RepositoryNotFoundError
    from huggingface_hub.utils import httpx

    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return
    not_cached = f"--{flag} {repo_id}: not in the local Hugging Face cache"
    try:
        model_info(repo_id, timeout=HUB_CHECK_TIMEOUT)
    except OfflineModeIsEnabled:
        raise UsageError(
            f"{not_cached}, and HF_HUB_OFFLINE is set: give a model folder, or download it first "
            f"(hf download {repo_id})"
        ) from None
    except RepositoryNotFoundError:
        raise UsageError(
            f"--{flag} {repo_id}: no such model on the Hugging Face Hub (or a private one: log in with "
            "`hf auth login`); check the id, or give a model folder"
        ) from None
    except (OSError, httpx.HTTPError) as error:
        raise UsageError(
            f"{not_cached}, and the Hugging Face Hub cannot be reached to find it ({type(error).__name__}: "
            f"{error}): check the id and the connection, or give a model folder"
        ) from None
