"""Every Python snippet of README.md and of the docs pages runs as printed, extracted from the page by this test.

The snippets are read as a reader runs them, in order: a snippet that defines every name it uses starts a fresh
Python process (as a new session would: the pipelines snippet imports Transformers before this package), and a
snippet that uses names of the snippets above continues their process. They run in a temporary working directory
holding what `make demo` makes at the paths the README uses, at toy size: `runs/demo/best` (a tiny model saved with
its processor) and `data/synthetic` (a small generated benchmark); the Hub ids they name resolve, offline, to tiny
models placed in a Hugging Face cache. A snippet preceded by an HTML comment saying that this test does not run it
is left out, with the comment's reason.
"""

import ast
import builtins
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import place_in_hub_cache, tiny_bert_config, tiny_model_with_processor, tiny_vit_config
from transformers import BertModel, ViTModel

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# The pages whose snippets run: the README and every docs page with a Python snippet.
DOCUMENTS = [README, *(page for page in sorted((ROOT / "docs").glob("*.md")) if "```python" in page.read_text())]
NOT_RUN = re.compile(r"<!-- tests/test_readme.py does not run the next snippet: (?P<reason>.+?) -->")
FENCE = re.compile(r"^(?P<indent> *)```python\n(?P<code>.*?)^(?P=indent)```", re.S | re.M)
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Snippet:
    line: int  # of the README, where the code starts
    code: str
    not_run: str | None  # the reason the README gives, or None


def readme_snippets(text: str) -> list[Snippet]:
    snippets = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip().splitlines()
        reason = NOT_RUN.fullmatch(before[-1].strip()) if before else None
        code = textwrap.dedent(match.group("code"))
        line = text[: match.start()].count("\n") + 2
        snippets.append(Snippet(line, code, reason.group("reason") if reason else None))
    return snippets


def free_names(code: str) -> set[str]:
    """Names the code reads but neither assigns, imports nor takes from the builtins."""
    tree = ast.parse(code)
    defined, used = set(dir(builtins)), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (defined if isinstance(node.ctx, ast.Store) else used).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            defined.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
        elif isinstance(node, ast.comprehension):
            defined.update(name.id for name in ast.walk(node.target) if isinstance(name, ast.Name))
    return used - defined


def sessions(snippets: list[Snippet]) -> list[list[Snippet]]:
    """The snippets to run, grouped by process: a self-contained snippet starts a new one."""
    groups: list[list[Snippet]] = []
    for snippet in snippets:
        if snippet.not_run is not None:
            continue
        if not groups or not free_names(snippet.code):
            groups.append([])
        groups[-1].append(snippet)
    return groups


RUNNER = """
import json, sys
namespace = {"__name__": "__main__"}
for line, code in json.load(open(sys.argv[1])):
    exec(compile(code, f"README.md, snippet of line {line}", "exec"), namespace)
    print(f"ran the snippet of line {line}", flush=True)
"""


def test_the_snippets_are_found_and_grouped_as_a_reader_runs_them():
    snippets = readme_snippets(README.read_text())
    assert len(snippets) >= 4
    first = snippets[0]
    assert 'SepsModel.from_pretrained("runs/demo/best")' in first.code and not free_names(first.code)
    assert free_names("from a import b\nc = [x for x in b]\nprint(c, d)") == {"d"}
    assert not [snippet for snippet in snippets if snippet.not_run]  # the README's snippets all run
    every = [snippet for page in DOCUMENTS for snippet in readme_snippets(page.read_text())]
    not_run = [snippet.not_run for snippet in every if snippet.not_run]
    assert not_run == ["it needs timm and a timm checkpoint from the Hub"]  # docs/backbones.md
    assert {page.name for page in DOCUMENTS} >= {"README.md", "retrieval.md", "pipelines.md", "backbones.md"}
    groups = sessions(snippets)
    assert [len(group) for group in groups][0] >= 3  # the first session goes on through the gallery snippets
    pipelines = next(group for group in groups if "zero-shot-image-classification" in group[0].code)
    assert pipelines[0].code.startswith("from transformers import pipeline\nimport transformers_seps.pipelines")


@pytest.fixture(scope="module")
def demo_workdir(tmp_path_factory, tiny_synthetic) -> Path:
    """What `make demo` leaves, at toy size, and a Hub cache holding tiny models under the README's Hub ids."""
    root = tmp_path_factory.mktemp("readme")
    model, processor = tiny_model_with_processor("paper")
    model.save_pretrained(root / "runs" / "demo" / "best")
    processor.save_pretrained(root / "runs" / "demo" / "best")
    shutil.copytree(tiny_synthetic, root / "data" / "synthetic")
    hub_models = root / "hub_models"
    torch.manual_seed(0)
    vit = hub_models / "vit"
    ViTModel(tiny_vit_config(image_size=224, patch_size=16), add_pooling_layer=False).save_pretrained(vit)
    bert = hub_models / "bert"
    BertModel(tiny_bert_config(vocab_size=30522), add_pooling_layer=False).save_pretrained(bert)
    processor.tokenizer.save_pretrained(bert)  # an uncased BERT vocabulary
    cache = root / "hf_home" / "hub"
    place_in_hub_cache(vit, cache, "google/vit-base-patch16-224-in21k", COMMIT)
    place_in_hub_cache(bert, cache, "bert-base-uncased", COMMIT)
    return root


LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


def heading_anchors(page: Path) -> set[str]:
    """The anchors of a page's headings, as GitHub and MkDocs make them."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).strip().replace(" ", "-") for heading in headings}


def test_the_readmes_links_lead_to_files_and_headings_that_exist():
    for target in LINK.findall(README.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        page = ROOT / path if path else README
        assert page.exists(), f"README.md links to {target}: no such file"
        if anchor:
            assert anchor in heading_anchors(page), f"README.md links to {target}: no such heading"


def printed_results(code: str) -> list[str]:
    """What a snippet says it prints: the comment lines right after each of its `print(...)` lines."""
    lines, expected = code.splitlines(), []
    for number, line in enumerate(lines):
        if line.startswith("print("):
            for comment in lines[number + 1 :]:
                if not comment.startswith("# "):
                    break
                expected.append(comment[2:])
    return expected


def test_printed_results_are_read_from_the_comments_under_print():
    assert printed_results("x = 1\nprint(x)\n# 1\ny = 2  # not printed\nprint(x, y)\n# 1 2\n") == ["1", "1 2"]


@pytest.mark.slow
@pytest.mark.parametrize("page", DOCUMENTS, ids=lambda page: page.name)
def test_every_python_snippet_runs_and_prints_what_the_page_says(page, demo_workdir, tmp_path):
    workdir = tmp_path / "work"
    shutil.copytree(demo_workdir, workdir)
    env = {**os.environ, "HF_HOME": str(workdir / "hf_home"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HF_HUB_CACHE", None)
    for index, group in enumerate(sessions(readme_snippets(page.read_text()))):
        snippets = tmp_path / f"session-{index}.json"
        snippets.write_text(json.dumps([(snippet.line, snippet.code) for snippet in group]))
        command = [sys.executable, "-c", RUNNER, str(snippets)]
        result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{page.name}, session {index}: {result.stderr[-3000:]}"
        ran = [line for line in result.stdout.splitlines() if line.startswith("ran the snippet of line ")]
        assert ran == [f"ran the snippet of line {snippet.line}" for snippet in group]
        printed = [line for line in result.stdout.splitlines() if not line.startswith("ran the snippet of line ")]
        assert printed == [line for snippet in group for line in printed_results(snippet.code)]
    if page == README:
        assert (workdir / "gallery.index" / "manifest.json").is_file()  # the index snippet saved it there
