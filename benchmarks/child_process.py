"""Run one measurement in a fresh Python process and read its result back (shared by the memory benchmarks).

A fresh process per measurement keeps peaks apart. The child's code prints one line ``RESULT {json}``; it runs
from the repository root with the project's packages importable (the caller's PYTHONPATH kept, so carried
wheels still count) and with the Hub switched off. Not run on its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULT_PREFIX = "RESULT "


def run_child(code: str, *argv: str) -> dict[str, Any] | None:
    """Run ``python -c code *argv``; return the last RESULT line's JSON (None when the child printed none).

    A child that fails ends the benchmark: its stderr's tail and a clear message, exit status non-zero."""
    paths = [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(paths)}
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"error: the child process failed with exit code {proc.returncode} (output above).")
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    return json.loads(lines[-1][len(RESULT_PREFIX):]) if lines else None
