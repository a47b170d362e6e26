"""The import contract (``[tool.importlinter]`` in pyproject.toml, docs/architecture.md) holds.

Runs ``lint-imports`` from the test venv in the repository root: the pure layers (core, alerts,
outputs) import no event loop, network, decoder or runtime, and no layer imports one above it.
``--no-cache`` keeps the run from writing a cache into the working tree.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def test_import_contracts_are_kept() -> None:
    assert LINT_IMPORTS.exists(), (
        f"{LINT_IMPORTS} is missing: import-linter is in the test extra (tools/setup.sh cpu,test)")
    run = subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, f"lint-imports exited {run.returncode}:\n{run.stdout}\n{run.stderr}"
