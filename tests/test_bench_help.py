"""Every benchmark script with a command line parses it with argparse, so `--help` prints
usage and runs nothing (bench_multinode.py used to start its 6-10 minute run on --help and
overwrite results/benchmarks/multinode.json)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
# The scripts that had no argparse; the rest are checked statically (a subprocess each is slow).
ONCE_WITHOUT_ARGPARSE = ("bench_multinode", "bench_bn_layout", "bench_batch_host", "run_reference")


def _runs_as_script(tree: ast.Module) -> bool:
    """True when the module has an `if __name__ == "__main__":` block."""
    for node in tree.body:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            return True
    return False


def _parses_with_argparse(source: str) -> bool:
    # step_args is bench_train_step.py's shared ArgumentParser (bench_train_compile.py uses it)
    return "argparse.ArgumentParser" in source or "step_args(" in source


def _scripts_without_argparse() -> list[str]:
    missing = []
    for path in sorted(BENCH.glob("*.py")):
        source = path.read_text()
        if _runs_as_script(ast.parse(source)) and not _parses_with_argparse(source):
            missing.append(path.name)
    return missing


def _top_level_statements_outside_defs(tree: ast.Module) -> list[str]:
    """Statements that do work at import (beyond imports, defs, constants and sys.path set-up)."""
    allowed = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef, ast.If, ast.Assign, ast.AnnAssign)
    odd = []
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # docstring
        if isinstance(node, ast.Expr) and "sys.path" in ast.unparse(node):
            continue
        if isinstance(node, ast.Expr) and "os.environ" in ast.unparse(node):
            continue
        if not isinstance(node, allowed):
            odd.append(ast.unparse(node)[:60])
    return odd


def test_every_benchmark_script_with_a_main_parses_its_command_line_with_argparse():
    assert _scripts_without_argparse() == []


def test_the_once_argparse_free_scripts_do_no_work_at_import():
    for name in ONCE_WITHOUT_ARGPARSE:
        tree = ast.parse((BENCH / f"{name}.py").read_text())
        assert _runs_as_script(tree), name
        assert _top_level_statements_outside_defs(tree) == [], name


@pytest.mark.parametrize("name", ONCE_WITHOUT_ARGPARSE)
def test_help_prints_usage_and_runs_nothing(name):
    done = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:")
