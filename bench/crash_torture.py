"""Crash torture: SIGKILL the runtime again and again; nothing finished may be lost or re-run.

A job of ``--sheets`` sheets on the built-in ``cli`` instrument runs in a child
process. Each sheet appends "<sheet> <attempt>" to a ledger file. The parent
kills the child with SIGKILL at random moments (during attempts and during
commits alike, and one time in four while the restarted child recovers), reads
the checkpoint the child left, and starts the child again with recovery, until
the job completes. Then it checks the ledger against the
checkpoints and prints one JSON line:

    {"sheets", "kills", "kills_in_recovery", "lost", "reruns_of_completed",
     "reruns_in_flight", "counters_exact", "seed"}

- lost: sheets that were completed in one checkpoint and not in a later one, or
  that are not completed at the end.
- reruns_of_completed: ledger entries written for a sheet after a checkpoint
  had recorded it completed. Must be 0.
- reruns_in_flight: sheets run again because they were running when a kill
  came (expected, and harmless for idempotent work).
- counters_exact: every completed sheet's attempt counter equals the attempt
  number its completing run saw, and attempt numbers never repeat.

Exits 1 if anything was lost or a completed sheet ran again.

    python bench/crash_torture.py [--sheets 300] [--kills 20] [--seed N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

JOB_ID = "torture"
CHILD_TIMEOUT_SECONDS = 300.0


def build_score(sheets: int, workspace: Path, ledger: Path) -> dict[str, Any]:
    # Ten interleaved chains: sheet n waits for n-10, so dependencies matter.
    dependencies = {n: [n - 10] for n in range(11, sheets + 1)}
    command = (
        f'sleep 0.0$(( RANDOM % 9 )); echo "{{{{ sheet_num }}}} $ENSEMBLE_ATTEMPT" >> {ledger}'
    )
    return {
        "name": JOB_ID,
        "workspace": str(workspace),
        "instrument": "cli",
        "sheet": {"size": 1, "total_items": sheets, "dependencies": dependencies},
        "prompt": {"template": command},
        "parallel": {"enabled": True, "max_concurrent": 4},
        "retry": {"max_retries": 3, "base_delay_seconds": 0},
        "pause_between_sheets_seconds": 0,
    }


def run_child(state_dir: Path, score_path: Path) -> int:
    """The child: start (or recover) the job and run it to the end."""
    import runtime

    # Tell the parent the imports are done: an "early" kill lands in the recovery.
    (score_path.parent / f"booted-{os.getpid()}").touch()
    with runtime.start(state_dir, max_concurrent_sheets=8, recover=True) as rt:
        if rt.recovery_errors:
            print("\n".join(rt.recovery_errors), file=sys.stderr)
            return 2
        if rt.recovered:
            handle = rt.recovered[0]
        elif (state_dir / "jobs" / JOB_ID).exists():
            print("the job exists but was not recovered", file=sys.stderr)
            return 2
        else:
            handle = rt.submit(json.loads(score_path.read_text()), job_id=JOB_ID)
        # Tell the parent the job runs, so its kill lands in real work, not in imports.
        (score_path.parent / f"started-{os.getpid()}").touch()
        result = handle.wait(timeout=CHILD_TIMEOUT_SECONDS)
    return 0 if result.status is runtime.JobStatus.COMPLETED else 1


def read_checkpoint(state_dir: Path) -> dict[str, Any] | None:
    from runtime.journal import load_checkpoint

    job_dir = state_dir / "jobs" / JOB_ID
    if not (job_dir / "checkpoint.json").exists():
        return None
    return load_checkpoint(job_dir).checkpoint


def completed_sheets(checkpoint: dict[str, Any] | None) -> set[int]:
    if checkpoint is None:
        return set()
    return {sheet["num"] for sheet in checkpoint["sheets"] if sheet["status"] == "completed"}


def read_ledger(ledger: Path) -> list[tuple[int, int]]:
    if not ledger.exists():
        return []
    entries = []
    for line in ledger.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            entries.append((int(parts[0]), int(parts[1])))
    return entries


def kill_orphans(marker: str) -> None:
    """SIGKILL sheet processes that outlived their runtime (they run in their own
    sessions), so none appends to the ledger during the next run."""
    for _ in range(100):
        found = False
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline and int(entry) != os.getpid():
                found = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry), signal.SIGKILL)
        if not found:
            return
        time.sleep(0.02)


def torture(sheets: int, kills: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="ensemble-torture-") as tmp:
        root = Path(tmp)
        state_dir, ledger, score_path = root / "state", root / "ledger.txt", root / "score.json"
        score_path.write_text(json.dumps(build_score(sheets, root / "workspace", ledger)))
        command = [sys.executable, __file__, "--child", str(state_dir), str(score_path)]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

        ever_completed: set[int] = set()
        lost: set[int] = set()
        reruns_of_completed = 0
        kills_done = early_kills = 0
        while True:
            ledger_before = len(read_ledger(ledger))
            completed_before = completed_sheets(read_checkpoint(state_dir))
            with (root / "child.log").open("wb") as log:
                child = subprocess.Popen(command, env=env, stderr=log)
                try:
                    if kills_done < kills:
                        # Most kills land in the work; one in four in the recovery
                        # and the first commits of the restarted runtime.
                        early = rng.random() < 0.25
                        marker = root / f"{'booted' if early else 'started'}-{child.pid}"
                        while child.poll() is None and not marker.exists():
                            time.sleep(0.01)
                        window = rng.uniform(0.0, 0.15) if early else rng.uniform(0.0, 0.3)
                        try:
                            child.wait(timeout=window)
                        except subprocess.TimeoutExpired:
                            child.send_signal(signal.SIGKILL)
                            kills_done += 1
                            early_kills += early
                        child.wait()
                    else:
                        child.wait(timeout=CHILD_TIMEOUT_SECONDS)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
                    raise SystemExit(
                        f"the runtime did not finish the job within {CHILD_TIMEOUT_SECONDS:g} s:\n"
                        + (root / "child.log").read_text(errors="replace")[-2000:]
                    ) from None
            kill_orphans(str(ledger))
            checkpoint = read_checkpoint(state_dir)
            completed_now = completed_sheets(checkpoint)
            lost |= ever_completed - completed_now
            ever_completed |= completed_now
            new_entries = read_ledger(ledger)[ledger_before:]
            reruns_of_completed += sum(1 for num, _ in new_entries if num in completed_before)
            if checkpoint is not None and checkpoint["status"] == "completed":
                break
            if child.returncode not in (0, -signal.SIGKILL):
                raise SystemExit(
                    f"a run failed with exit code {child.returncode}:\n"
                    + (root / "child.log").read_text(errors="replace")[-2000:]
                )

        assert checkpoint is not None
        lost |= {sheet["num"] for sheet in checkpoint["sheets"] if sheet["status"] != "completed"}
        entries = read_ledger(ledger)
        runs: dict[int, list[int]] = {}
        for num, attempt in entries:
            runs.setdefault(num, []).append(attempt)
        counters_exact = all(
            attempts == sorted(set(attempts)) for attempts in runs.values()
        ) and all(
            sheet["attempts"] == runs.get(sheet["num"], [0])[-1] for sheet in checkpoint["sheets"]
        )
        return {
            "sheets": sheets,
            "kills": kills_done,
            "kills_in_recovery": early_kills,
            "lost": len(lost),
            "reruns_of_completed": reruns_of_completed,
            "reruns_in_flight": sum(1 for attempts in runs.values() if len(attempts) > 1),
            "counters_exact": counters_exact,
        }


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["--child"]:
        return run_child(Path(arguments[1]), Path(arguments[2]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sheets", type=int, default=300)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(arguments)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    report = torture(args.sheets, args.kills, seed)
    print(json.dumps({**report, "seed": seed}))
    ok = report["lost"] == 0 and report["reruns_of_completed"] == 0 and report["counters_exact"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
