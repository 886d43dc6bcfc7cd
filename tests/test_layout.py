"""The package layout by role (docs/conformance.md, "Layout"): the model library at the top of
`transformers_seps`, the runners under `transformers_seps.train`, the publishing tools under
`transformers_seps.tools`; no import cycles, and a light `import transformers_seps`."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "src" / "transformers_seps"
PACKAGE = PACKAGE_ROOT.name


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE_ROOT.rglob("*.py"))}


def _is_type_checking_block(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _module_level_statements(body: list[ast.stmt]):
    """Statements run when the module is imported: the top level and its if/try blocks, but neither function
    bodies nor `if TYPE_CHECKING:` blocks."""
    for node in body:
        if _is_type_checking_block(node):
            continue
        yield node
        if isinstance(node, (ast.If, ast.Try)):
            nested = [*node.body, *node.orelse, *getattr(node, "finalbody", [])]
            nested += [statement for handler in getattr(node, "handlers", []) for statement in handler.body]
            yield from _module_level_statements(nested)


def imported_modules(name: str) -> set[str]:
    """The modules of this package that module `name` imports when it is imported."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _module_level_statements(ast.parse(path.read_text(encoding="utf-8")).body):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            # `from . import visualization` imports a submodule.
            candidates = [f"{target}.{alias.name}" for alias in node.names] + [target]
            found.update(candidate for candidate in candidates if candidate in MODULES)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in MODULES)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    return {name: imported_modules(name) for name in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a list of modules (the first repeated at the end), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for successor in sorted(graph[node]):
            if state.get(successor) == "open":
                return stack[stack.index(successor) :] + [successor]
            if successor not in state and (cycle := visit(successor)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_and_the_graph_is_parsed():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    graph = import_graph()
    # Known edges, so that a parser that finds nothing cannot pass the tests below.
    assert f"{PACKAGE}.configuration_seps" in graph[f"{PACKAGE}.modeling_seps"]
    assert f"{PACKAGE}.train.data.authors_layout" in graph[f"{PACKAGE}.train.data"]
    assert f"{PACKAGE}.metrics" in graph[f"{PACKAGE}.train.data.authors_layout"]


def test_the_import_graph_has_no_cycle():
    assert find_cycle(import_graph()) is None


def test_the_library_imports_neither_the_runners_nor_the_tools_and_the_runners_not_the_tools():
    graph = import_graph()
    runners, tools = f"{PACKAGE}.train", f"{PACKAGE}.tools"
    for name, targets in graph.items():
        role = runners if name.startswith(runners) else tools if name.startswith(tools) else PACKAGE
        for target in targets:
            if role == PACKAGE:
                assert not target.startswith((runners, tools)), f"the library module {name} imports {target}"
            elif role == runners:
                assert not target.startswith(tools), f"the runner module {name} imports the tool {target}"


def test_the_training_objective_and_the_metrics_need_no_accelerate_nor_torch_for_the_metrics():
    def top_level_imports(name: str) -> set[str]:
        statements = _module_level_statements(ast.parse(MODULES[name].read_text(encoding="utf-8")).body)
        names = set()
        for node in statements:
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names.add(node.module.split(".")[0])
        return names

    assert "accelerate" not in top_level_imports(f"{PACKAGE}.loss")
    assert top_level_imports(f"{PACKAGE}.metrics") <= {"collections", "typing", "numpy"}
    assert not {"torch", "transformers"} & top_level_imports(f"{PACKAGE}.train.arguments")


IMPORT_EACH_MODULE = """
import importlib, json, sys
failures = {}
for name in sys.argv[1:]:
    for loaded in [module for module in sys.modules if module.split(".")[0] == "transformers_seps"]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as error:
        failures[name] = f"{type(error).__name__}: {error}"
print(json.dumps(failures))
"""


@pytest.mark.slow
def test_each_module_imports_first():
    """Each module, imported before any other module of the package, imports (no order-dependent cycle)."""
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_EACH_MODULE, *sorted(MODULES)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1]) == {}


LIGHT_IMPORT = """
import json, sys
import transformers.modeling_utils, transformers.processing_utils  # what Transformers itself imports
before = set(sys.modules)
import transformers_seps
print(json.dumps(sorted(name.split(".")[0] for name in set(sys.modules) - before)))
"""


@pytest.mark.slow
def test_import_transformers_seps_imports_no_data_evaluation_plotting_or_accelerate_of_its_own():
    result = subprocess.run([sys.executable, "-c", LIGHT_IMPORT], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    added = set(json.loads(result.stdout.splitlines()[-1]))
    assert PACKAGE in added  # the check ran after the package's own import
    assert not added & {"datasets", "evaluate", "matplotlib", "accelerate"}


HELP_IMPORTS = """
import runpy, sys
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
print("torch imported" if "torch" in sys.modules else "torch not imported")
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "script",
    ["train_retrieval.py", "evaluate_retrieval.py", "convert_official_checkpoint.py", "generate_dense_captions.py"],
)
def test_help_of_the_runners_does_not_import_torch(script):
    example = Path(__file__).resolve().parents[1] / "examples" / script
    result = subprocess.run(
        [sys.executable, "-c", HELP_IMPORTS, str(example)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"--output_dir", "--data_root", "--image_root"} & set(result.stdout.split())  # the help was printed
    assert result.stdout.splitlines()[-1] == "torch not imported"


AUTO_AFTER_PLAIN_IMPORT = """
import sys
import transformers_seps
assert "torch" not in sys.modules, "import transformers_seps imported torch"
from transformers import AutoConfig, AutoModel, AutoProcessor
folder = sys.argv[1]
print(type(AutoProcessor.from_pretrained(folder)).__name__, type(AutoModel.from_pretrained(folder)).__name__,
      type(AutoConfig.from_pretrained(folder)).__name__)
"""


@pytest.mark.slow
def test_auto_classes_load_a_saved_model_after_a_plain_import(tmp_path):
    """`import transformers_seps` registers nothing yet imports no torch, and the Auto classes still load a saved
    SEPS folder with this package's classes (no `trust_remote_code`)."""
    from conftest import tiny_model_with_processor

    model, processor = tiny_model_with_processor()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", AUTO_AFTER_PLAIN_IMPORT, str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["SepsProcessor", "SepsModel", "SepsConfig"]


RUNNER_REGISTERS = """
import transformers_seps.train.training
from transformers_seps.modeling_seps import SepsModel
from transformers_seps.processing_seps import SepsProcessor
print(SepsModel._auto_class, SepsProcessor._auto_class)
"""


@pytest.mark.slow
def test_the_runners_register_the_auto_classes_so_that_saved_folders_carry_auto_map():
    """The Auto classes are registered on the first use of the package's model names, not on `import
    transformers_seps`: the training runner takes them from the package, so the `best/` it saves has `auto_map`."""
    result = subprocess.run([sys.executable, "-c", RUNNER_REGISTERS], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["AutoModel", "AutoProcessor"]
