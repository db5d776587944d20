"""The inference side (loading, encoding, decoding, sampling, metrics) never imports the training stack (Lightning),
and a tool's --help imports neither Lightning nor torchvision (each costs seconds): checked in fresh interpreters."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INFERENCE = ["taming", "taming.tokenizer", "taming.generator", "taming.provenance", "taming.inference",
             "taming.checkpoints", "taming.data", "taming.data.tokens", "taming.metrics.evaluator",
             "taming.metrics.generation", "taming.models.schedules", "taming.probe", "taming.cli.common", "taming.cli.sample",
             "taming.cli.encode_tokens", "taming.cli.decode_tokens", "taming.cli.reconstruct", "taming.cli.ar_val_loss"]


def imported_modules(code: str) -> set:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print('\\n'.join(sys.modules))"], cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(out.stdout.split())


def test_inference_modules_do_not_import_lightning():
    modules = imported_modules("\n".join(f"import {m}" for m in INFERENCE))
    assert not {m for m in modules if m.split(".")[0] in ("lightning", "pytorch_lightning")}


@pytest.mark.parametrize("tool", ["evaluation.py", "evaluation_gen.py", "scripts/sample.py", "scripts/encode_tokens.py",
                                  "scripts/decode_tokens.py", "scripts/reconstruct.py"])
def test_help_skips_the_heavy_imports(tool):
    out = subprocess.run([sys.executable, "-X", "importtime", tool, "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0 and "usage:" in out.stdout
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert not {m for m in imported if m.split(".")[0] in ("lightning", "torchvision")}


def package_import_graph() -> dict:
    """module -> the taming modules it imports anywhere in its file (top level or inside functions)."""
    import ast

    modules = {}
    for path in (REPO / "taming").rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def test_no_import_cycle_inside_the_package():
    """No cycle among taming's modules, counting imports inside functions (they hide cycles from the interpreter).
    A package's __init__ re-exporting its own modules is not a cycle of interest: edges into a package are
    followed only for modules outside it."""
    graph = package_import_graph()
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module)
    assert "taming.models.ar" not in graph["taming.callbacks"]  # the cycle this test was written for


def entry_points() -> list:
    """The files a user runs that are not benchmarks: the top-level commands and scripts/ minus benchmark_*/gpu_check."""
    scripts = [p for p in sorted((REPO / "scripts").glob("*.py"))
               if not p.name.startswith(("benchmark_", "gpu_check", "__init__"))]
    return [*sorted(REPO.glob("*.py")), *scripts]


def test_entry_points_are_thin_and_need_no_path_plumbing():
    """Every command lives in taming/cli/<name>.py; its entry point imports main from there and calls it, nothing
    else (no sys.path edits, no imports of other scripts). Benchmarks import the package only."""
    import ast

    commands = {p.stem for p in (REPO / "taming" / "cli").glob("*.py")} - {"__init__", "common", "plots", "timing"}
    assert {p.stem for p in entry_points()} == commands
    for path in entry_points():
        tree = ast.parse(path.read_text())
        imports = [node for node in tree.body if isinstance(node, ast.ImportFrom)]
        assert [node.module for node in imports if node.module != "taming.cli.common"] == [f"taming.cli.{path.stem}"]
        assert len(tree.body) == len(imports) + 2, f"{path.name}: docstring, imports and the __main__ call only"
    for path in (REPO / "scripts").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            assert not (isinstance(node, ast.Attribute) and node.attr == "path"
                        and getattr(node.value, "id", None) == "sys"), f"{path.name} edits sys.path"
            if isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] not in ("scripts", "main", "evaluation"), path.name


def test_a_tool_runs_from_another_folder_without_pythonpath(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "decode_tokens.py"), "--help"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0 and "usage: decode_tokens.py" in out.stdout
