"""Commands under a deadline: every phase gets a cap cut to the time left, so the whole run ends in time."""
from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import threading
import time

from tools import ROOT

REPORT_RESERVE_S = 20   # kept back at every cap for the report and the summary
KILL_GRACE_S = 8        # after SIGINT (pytest writes its JUnit XML), before SIGKILL
MIN_USEFUL_S = 20       # a phase with less time than this left is skipped rather than started


@dataclasses.dataclass
class Phase:
    name: str
    status: str           # ok, failed (rc), timed out, skipped (why)
    seconds: float = 0.0
    cap_s: int = 0
    rc: int | None = None
    log: str = ""


class Runner:
    """Runs the phases of one run in ``work`` (``logs/<phase>.log``, ``run.log``) and records them."""

    def __init__(self, deadline_s: int, work: str, dry_run: bool):
        self.start, self.deadline_s, self.work, self.dry_run = time.monotonic(), deadline_s, work, dry_run
        self.logs = os.path.join(work, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.phases: list[Phase] = []
        self._lock = threading.Lock()
        self._run_log = open(os.path.join(work, "run.log"), "a", encoding="utf-8")
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", TRITON_DEFAULT_FP_FUSION="1")

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.deadline_s - self.elapsed()

    def say(self, text: str) -> None:
        with self._lock:
            print(text, flush=True)
            self._run_log.write(text + "\n")
            self._run_log.flush()

    def record(self, phase: Phase) -> Phase:
        with self._lock:
            self.phases.append(phase)
        detail = f" rc={phase.rc}" if phase.rc not in (None, 0) else ""
        self.say(f"-- {phase.name}: {phase.status}{detail} ({phase.seconds:.0f} s, cap {phase.cap_s} s) "
                 f"at {self.elapsed():.0f} s")
        return phase

    def skip(self, name: str, why: str) -> Phase:
        return self.record(Phase(name, f"skipped ({why})"))

    def run(self, name: str, argv: list[str], want_s: float, env: dict | None = None,
            min_s: float = MIN_USEFUL_S) -> Phase:
        """Runs ``argv`` (its own process group, output to ``logs/<name>.log``) for at most
        ``want_s`` seconds, cut to what the deadline leaves; SIGINT then SIGKILL at the cap."""
        cap = int(min(want_s, self.left() - REPORT_RESERVE_S - KILL_GRACE_S))
        if cap < min(min_s, want_s):
            return self.skip(name, f"{max(self.left(), 0):.0f} s left")
        log = os.path.join(self.logs, f"{name}.log")
        command = " ".join(argv)
        self.say(f"== {name} (cap {cap} s): {command if len(command) < 160 else command[:150] + ' ...'}")
        began = time.monotonic()
        with open(log, "a", encoding="utf-8") as out:
            process = subprocess.Popen(argv, cwd=ROOT, env=env or self.env, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                rc = process.wait(timeout=cap)
                status = "ok" if rc == 0 else "failed"
            except subprocess.TimeoutExpired:
                rc, status = None, "timed out"
                end_group(process)
        return self.record(Phase(name, status, time.monotonic() - began, cap, rc, log))

    def close(self) -> None:
        self._run_log.close()


def end_group(process: subprocess.Popen) -> None:
    """SIGINT to the whole process group (pytest then writes its report; xdist workers stop), then
    SIGKILL to whatever of the group is left, so nothing of a stopped phase holds the GPU."""
    try:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=KILL_GRACE_S)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass


def last_lines(path: str, count: int, pattern: str | None = None) -> list[str]:
    """The last ``count`` lines of a log (of those matching ``pattern``, when given); none if unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read().splitlines()
    except OSError:
        return []
    if pattern:
        text = [line for line in text if re.search(pattern, line)]
    return text[-count:]
