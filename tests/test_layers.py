"""The layers of the code: which package may import which (CONTRIBUTING.md, "Layout").

inference is the recommender core that the worker, the gate and training share; release gets versions to the
workers. Neither imports the worker, training imports no worker code, and serving (all of stream_app) imports
no torch and nothing from training, models or devtools. Imports inside functions count too.
"""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from stream_app.settings import REPO_ROOT

FORBIDDEN = {  # package folder -> module prefixes it must not import
    "stream_app": ("torch", "training", "models", "devtools"),
    "stream_app/inference": ("stream_app.worker", "stream_app.release", "faust", "mode"),
    "stream_app/release": ("stream_app.worker", "faust", "mode"),
    "training": ("stream_app.worker",),
    "models": ("stream_app", "training"),
}


def imported_modules(path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def crossings(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{path.relative_to(REPO_ROOT)} imports {module}"
        for path in (REPO_ROOT / package).rglob("*.py")
        for module in imported_modules(path)
        if any(module == prefix or module.startswith(prefix + ".") for prefix in forbidden)
    )


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_runs_against_the_layers(package: str) -> None:
    assert crossings(package, FORBIDDEN[package]) == []


def test_the_check_sees_an_import_inside_a_function(tmp_path) -> None:
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from stream_app.worker.metrics import WorkerMetrics\n    import torch.nn\n")
    assert imported_modules(module) >= {"stream_app.worker.metrics", "torch.nn"}


def test_loading_every_serving_module_loads_no_torch() -> None:
    """At run time as well: a dependency of a dependency would not show in the source."""
    modules = sorted(
        ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in (REPO_ROOT / "stream_app").rglob("*.py")
    )
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'training', 'models', 'devtools'}))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                            check=True, timeout=120).stdout.strip()
    assert loaded == "[]"
