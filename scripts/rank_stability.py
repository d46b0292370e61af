"""Rank stability: how often each claim a notebook makes about time or memory holds.

Every ranking or inequality the notebooks' prose states about timings is a ``cl.claim(...)``
in the notebook (see :mod:`course_lib.claims`). This script executes each notebook ``--runs``
times (default 5) with ``COURSE_CLAIMS_LOG`` set and ``COURSE_CLAIMS_RECORD_ONLY=1``, so a
claim that does not hold is recorded rather than stopping the run, then prints one row per
claim: how many runs it held in. The target is every claim in every run; a claim that is not
stable must leave the prose.

    python scripts/rank_stability.py                  # all notebooks, 5 runs, scale small
    python scripts/rank_stability.py --runs 3 --notebooks 01 03 --load 2

``--load N`` keeps N busy-looping processes running meanwhile (a loaded laptop). Notebooks
run as they are (nothing is written back). ``--nbval`` runs each notebook under strict nbval
instead (``pytest notebooks/NN_*.ipynb``: every checked output compared), so one command
gives both the claims table and "strict nbval passed k of 5 runs".
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def _spin() -> None:  # pragma: no cover - runs in a child process until terminated
    while True:
        pass


def _execute(path: Path, log: Path) -> str | None:
    """Run one notebook with claims logged; the error's first line if a cell failed."""
    os.environ.update(
        COURSE_CLAIMS_LOG=str(log),
        COURSE_CLAIMS_RECORD_ONLY="1",
        COURSE_CLAIMS_NOTEBOOK=path.name,
    )
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    try:
        client.execute()
    except CellExecutionError as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        return lines[-1] if lines else type(exc).__name__
    return None


def _nbval(path: Path, log: Path) -> str | None:
    """Strict nbval on one notebook with claims logged; the summary line if it failed."""
    env = dict(
        os.environ,
        COURSE_CLAIMS_LOG=str(log),
        COURSE_CLAIMS_RECORD_ONLY="1",
        COURSE_CLAIMS_NOTEBOOK=path.name,
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode == 0:
        return None
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    failed = [line for line in lines if line.startswith("FAILED")]
    return "; ".join(failed) or (lines[-1] if lines else f"exit {done.returncode}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--notebooks", nargs="*", default=None, help="prefixes, e.g. 01 03")
    parser.add_argument("--load", type=int, default=0, help="busy processes to run meanwhile")
    parser.add_argument("--nbval", action="store_true", help="strict nbval instead of nbclient")
    args = parser.parse_args(argv)

    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if args.notebooks:
        paths = [p for p in paths if any(p.name.startswith(n) for n in args.notebooks)]
    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.load)]
    for proc in spinners:
        proc.start()
    held: dict[tuple[str, str], list[bool]] = defaultdict(list)
    failures: list[str] = []
    seconds: dict[str, list[float]] = defaultdict(list)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for run in tqdm(range(1, args.runs + 1), desc="runs"):
                for path in paths:
                    log = Path(tmp) / f"{run}-{path.stem}.jsonl"
                    log.touch()
                    start = time.perf_counter()
                    error = _nbval(path, log) if args.nbval else _execute(path, log)
                    seconds[path.name].append(time.perf_counter() - start)
                    if error:
                        failures.append(f"run {run} {path.name}: {error}")
                    seen: dict[str, bool] = {}
                    for line in log.read_text().splitlines():
                        record = json.loads(line)
                        # a claim made several times in one run (e.g. per backend) holds if all do
                        seen[record["claim"]] = seen.get(record["claim"], True) and record["held"]
                    for text, ok in seen.items():
                        held[path.name, text].append(ok)
    finally:
        for proc in spinners:
            proc.terminate()

    mode = "strict nbval" if args.nbval else "nbclient"
    print(
        f"\n{args.runs} runs ({mode}), COURSE_SCALE={os.environ.get('COURSE_SCALE', 'default')}, "
        f"{args.load} busy processes\n"
    )
    print("| notebook | claim | held |")
    print("|---|---|---:|")
    unstable = 0
    for (name, text), results in sorted(held.items()):
        count = sum(results)
        unstable += count < args.runs
        print(f"| {name[:2]} | {text} | {count}/{args.runs} |")
    print("\n| notebook | run time, median (s) | runs passed |")
    print("|---|---:|---:|")
    for name, values in seconds.items():
        bad = sum(1 for f in failures if f" {name}: " in f)
        median = sorted(values)[len(values) // 2]
        print(f"| {name[:2]} | {median:.1f} | {args.runs - bad}/{args.runs} |")
    for failure in failures:
        print(f"FAILED {failure}")
    return 1 if unstable or failures else 0


if __name__ == "__main__":
    sys.exit(main())
