"""One CUDA fault, one failure: a pytest plugin (conftest.py loads it; no torch import).

A kernel fault (an illegal address, a device-side assert, ...) is sticky: the CUDA context of
the process is lost and every later CUDA call in it fails with the same error. On the first GPU
run one fault in a pytest-xdist worker failed every test that worker ran afterwards. Here the
faulting test fails with its own report, which says so, and then:

* under pytest-xdist its worker process ends, after the report was sent: xdist starts a fresh
  worker (a new context) and hands it the tests that were still to run;
* without xdist the session stops (``pytest.exit``): nothing after the fault could pass.

The faulting test is named on stderr, in a "CUDA faults" section of the summary, and with
``VIDGEN_FAULT_LOG=path`` in one appended line per fault in ``path``.
"""
from __future__ import annotations

import contextlib
import os
import sys

import pytest

# Words of the CUDA errors that lose the context (cudaGetErrorString: torch raises "CUDA error:
# <words>", Triton's launcher "Triton Error [CUDA]: <words>"), and torch's prefix for every CUDA
# runtime error: after a fault, other errors may surface first, and a fresh worker costs seconds
# where a lost context costs every later test.
CONTEXT_FATAL_WORDS = ("CUDA error", "illegal memory access", "unspecified launch failure", "device-side assert",
                       "illegal instruction", "misaligned address", "invalid program counter", "hardware stack error",
                       "uncorrectable ECC error")
PLUGIN_NAME = "vidgen-cuda-faults"
FAULT_PROPERTY = "cuda_context_lost"  # user property of the faulting test's report (it travels to xdist's controller)
HIDDEN = "cuda-fault-duplicate"       # outcome of xdist's crash report for a test that already reported its fault


def is_context_fatal(exc: BaseException | None) -> bool:
    """True when ``exc``, or an exception it was raised from or during, is a RuntimeError (torch's
    AcceleratorError is one) saying the CUDA context is lost."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, RuntimeError) and any(words in str(exc) for words in CONTEXT_FATAL_WORDS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin(PLUGIN_NAME):
        config.pluginmanager.register(CudaFaults(config), PLUGIN_NAME)


class CudaFaults:
    def __init__(self, config: pytest.Config):
        self.config = config
        self.worker = os.environ.get("PYTEST_XDIST_WORKER")  # None: the xdist controller, or no xdist
        self.faulted: list[str] = []  # test ids whose report says they lost the context
        self.errors: dict[str, str] = {}  # this process: test id -> the error that lost its context

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        report = (yield).get_result()
        if call.excinfo is None or not is_context_fatal(call.excinfo.value):
            return
        error = call.excinfo.exconly().splitlines()[0]
        self.errors.setdefault(item.nodeid, error)
        # A new list: the report shares the item's, which later reports of this test copy.
        report.user_properties = [*report.user_properties, (FAULT_PROPERTY, error)]
        ends = "its pytest-xdist worker ends; a fresh one runs the tests still to run" if self.worker else \
            "the session stops"
        report.sections.append(("CUDA context lost",
                                f"{error}\nEvery later CUDA call in this process would fail: {ends}."))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if any(name == FAULT_PROPERTY for name, _ in report.user_properties) and report.nodeid not in self.faulted:
            self.faulted.append(report.nodeid)

    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        """After the faulting test's last report was logged (under xdist: sent to the controller)."""
        error = self.errors.pop(nodeid, None)
        if error is None:
            return
        where = f"[{self.worker}] " if self.worker else ""
        message = f"{where}CUDA context lost in {nodeid}: {error}"
        log = os.environ.get("VIDGEN_FAULT_LOG")
        if log:
            with open(log, "a") as f:
                f.write(message + "\n")
        if self.worker is None:
            pytest.exit(f"{message}. Every later CUDA call in this process would fail; stopping here "
                        "(under pytest-xdist, -n, a fresh worker would run the remaining tests).", returncode=1)
        capture = self.config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            sys.stderr.write(f"\n{message}\nending this worker; pytest-xdist replaces it\n")
            sys.stderr.flush()
        # Before xdist's "runtest_protocol_complete": the controller takes this test as the one the
        # worker crashed in (not the next one, which has not run) and reschedules the rest.
        os._exit(1)

    @pytest.hookimpl(optionalhook=True)
    def pytest_handlecrashitem(self, crashitem: str, report: pytest.TestReport, sched) -> None:
        """xdist's controller: a worker that ended after a reported fault did not crash on its own;
        its "crashed while running" report would count the faulting test a second time."""
        if crashitem in self.faulted:
            report.outcome = HIDDEN

    @pytest.hookimpl(tryfirst=True)
    def pytest_report_teststatus(self, report: pytest.TestReport, config: pytest.Config):
        if report.outcome == HIDDEN:
            return "", "", ""  # no letter, no count (as a passing setup)
        return None

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.faulted:
            terminalreporter.section("CUDA faults")
            for nodeid in self.faulted:
                terminalreporter.write_line(f"{nodeid}: lost its process's CUDA context (its own failure above)")

