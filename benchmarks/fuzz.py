"""Fuzz the server and the CLI with generated hostile workflows, and print what came back.

The same generator and checks as tests/server/test_fuzz_workflows.py (which runs 2,000 in
CI), over more examples: each workflow goes to `POST /api/prompt` and, in ComfyUI's API
format, to `POST /prompt`; every tenth also to `noodle validate` (in this process), to
`PUT /api/workflows/{name}` and to `POST /api/workflows/import`. Only validation runs; no
model is loaded. The target: 0 answers of 5xx, 0 error bodies that are not JSON, 0
tracebacks — any of them stops the run with the failing example.

    .venv/bin/python benchmarks/fuzz.py [--examples 20000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.server.test_fuzz_workflows import run_fuzz  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20_000)
    args = parser.parse_args()
    tally: Counter[str] = Counter()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        os.environ["NOODLE_MODELS_DIR"] = str(Path(root) / "models")
        try:
            run_fuzz(Path(root), args.examples, tally)
            failed = False
        except AssertionError as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            failed = True
    seconds = time.perf_counter() - started
    examples = tally.pop("examples", 0)
    print(f"{examples} workflows in {seconds:.1f}s ({examples / max(seconds, 1e-9):.0f}/s)")
    print("5xx answers: 0, non-JSON error bodies: 0, CLI tracebacks: 0" if not failed
          else "stopped at the first failure (above)")
    for key, count in sorted(tally.items()):
        print(f"  {key:<48} {count:>7}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
