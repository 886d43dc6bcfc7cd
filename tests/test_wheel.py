"""The package as users get it: `python -m build` makes an sdist and a wheel, and the wheel installed into a fresh
virtual environment (no editable install, no source tree on the path) imports, scores a pair with a tiny model as
this checkout does, loads a saved folder with `trust_remote_code` without importing the package, and runs
`examples/train_retrieval.py --help` from outside the repository.

The environment is made by `python -m venv` (no system site-packages) and filled by `pip install -c
constraints.txt <wheel>`: torch 2.13.0 is the CPU wheel on the build machines' local disk, the other dependencies
come from the package index. About 1.5 to 3 minutes on the 2-core machine, most of it pip installing torch.
"""

import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import tiny_model_with_processor
from PIL import Image

import transformers_seps

ROOT = Path(__file__).resolve().parents[1]

SCORE = """
import json, sys
import torch
from PIL import Image
import transformers_seps
from transformers_seps import SepsModel, SepsProcessor

model = SepsModel.from_pretrained(sys.argv[1]).eval()
processor = SepsProcessor.from_pretrained(sys.argv[1])
inputs = processor(images=[Image.new("RGB", (40, 40), "red")], text=["a red square"], return_tensors="pt")
with torch.no_grad():
    score = model(**inputs).logits_per_image
print(json.dumps({"file": transformers_seps.__file__, "version": transformers_seps.__version__,
                  "shape": list(score.shape), "score": score.item()}))
"""

REMOTE_CODE = """
import json, sys
from transformers import AutoModel
model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)
print(json.dumps({"class": type(model).__module__ + "." + type(model).__name__,
                  "package_imported": "transformers_seps" in sys.modules}))
"""


def test_the_version_is_the_changelogs_latest_release():
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert releases and transformers_seps.__version__ == releases[0]


def run(command: list, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PIP_NO_INPUT="1")
    result = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)  # fmt: skip
    assert result.returncode == 0, f"{command}: {result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_the_wheel_installs_and_works_in_a_fresh_environment(tmp_path):
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--outdir", dist, ROOT], cwd=ROOT)
    version = transformers_seps.__version__
    wheel, sdist = dist / f"transformers_seps-{version}-py3-none-any.whl", dist / f"transformers_seps-{version}.tar.gz"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "transformers_seps/py.typed" in names and "transformers_seps/modeling_seps.py" in names
    assert not [name for name in names if name.startswith(("tests/", "benchmarks/", "examples/"))]
    with tarfile.open(sdist) as archive:
        members = set(archive.getnames())
    top = f"transformers_seps-{version}"
    assert {f"{top}/setup.cfg", f"{top}/README.md", f"{top}/src/transformers_seps/py.typed"} <= members

    outside = tmp_path / "elsewhere"  # the working directory of every command below: not the repository
    outside.mkdir()
    run([sys.executable, "-m", "venv", tmp_path / "venv"], cwd=outside)
    python = tmp_path / "venv" / "bin" / "python"
    run([python, "-m", "pip", "install", "--quiet", "-c", ROOT / "constraints.txt", wheel], cwd=outside, timeout=1500)

    model, processor = tiny_model_with_processor("paper")
    folder = tmp_path / "tiny-seps"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    inputs = processor(images=[Image.new("RGB", (40, 40), "red")], text=["a red square"], return_tensors="pt")
    with torch.no_grad():
        expected = model(**inputs).logits_per_image.item()

    scored = json.loads(run([python, "-c", SCORE, folder], cwd=outside).stdout)
    assert Path(scored["file"]).is_relative_to(tmp_path / "venv")  # the installed wheel, not this checkout
    assert scored["version"] == version and scored["shape"] == [1, 1]
    assert scored["score"] == pytest.approx(expected, abs=1e-5)

    loaded = json.loads(run([python, "-c", REMOTE_CODE, folder], cwd=outside).stdout)
    assert not loaded["package_imported"]  # the folder's own code, copied by save_pretrained
    assert loaded["class"].endswith(".SepsModel") and not loaded["class"].startswith("transformers_seps")

    help_text = run([python, ROOT / "examples" / "train_retrieval.py", "--help"], cwd=outside).stdout
    assert "--output_dir" in help_text and "--dataset" in help_text
