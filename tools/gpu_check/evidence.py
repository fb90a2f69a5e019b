"""What the phases of a run leave, read into verdicts: pytest's JUnit XML, compute-sanitizer's output
around the kernel driver's markers, and per kernel "correct on GPU", "failed" or "not run"."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree

from tools.sanitize_kernels import BEGIN, END, SKIP

SANITIZER_TOOLS = ("memcheck", "racecheck")
SANITIZER_PREFIX = "========= "
# A line of the sanitizer's that reports a finding (not its banner or a zero summary).
FINDING = re.compile(r"^=+ (Invalid |Error|Warning|Program hit|Race reported|Barrier error|Uninitialized|"
                     r"Out-of-range|Misaligned|Malloc|Free|Cuda API failed)")

# Kernel -> the evidence of it: tests ((file, regex the test name must match)) and sanitizer entries.
KERNELS = {
    "correlated_noise (Triton)": ([("tests/test_noise.py", r"^(?!.*add_noise)")], [r"^correlated_noise$"]),
    "add_noise (Triton)": ([("tests/test_noise.py", r"add_noise")], [r"^add_noise$"]),
    "guided_step (CUDA library)": ([("tests/test_cuda_library.py", "")], [r"^guided_step_cuda$"]),
    "guided_step (Triton)": ([("tests/test_guidance.py", "")], [r"^guided_step_triton$"]),
    "frame_attention (Triton, fwd+bwd)": ([("tests/test_frame_attention.py", ""),
                                           ("tests/test_frame_attention_autotune.py", ""),
                                           ("tests/test_real_shapes.py", r"frame_attention")],
                                          [r"^frame_attention_"]),
    "temporal_attention (Triton, fwd+bwd)": ([("tests/test_temporal_attention.py", ""),
                                              ("tests/test_real_shapes.py", r"temporal_attention")],
                                             [r"^temporal_attention_"]),
    "frame_group_norm (Triton, fwd+bwd)": ([("tests/test_frame_group_norm.py", ""),
                                            ("tests/test_real_shapes.py", r"frame_group_norm")],
                                           [r"^frame_group_norm$"]),
    "geglu (Triton)": ([("tests/test_geglu.py", ""), ("tests/test_real_shapes.py", r"geglu")], [r"^geglu$"]),
    "linear_residual (Triton)": ([("tests/test_linear_residual.py", ""),
                                  ("tests/test_real_shapes.py", r"linear_residual")], [r"^linear_residual$"]),
}
CORRECT, FAILED, NOT_RUN = "correct on GPU", "failed", "not run"
OUTCOMES = ("passed", "failed", "errors", "skipped")


def test_file_of(classname: str, name: str) -> str:
    """``tests.test_noise`` (or ``tests.test_noise.TestX``) -> ``tests/test_noise.py``; a collection
    error has an empty classname and the module path as its name."""
    parts = (classname or name).split(".")
    for i, part in enumerate(parts):
        if part.startswith("test_"):
            return "/".join(parts[:i + 1]) + ".py"
    return "/".join(parts) + ".py"


def read_junit(path: str) -> dict | None:
    """{"files": {file: {passed, failed, errors, skipped}}, "totals": {...}, "failed": [ids],
    "cases": [(file, name, outcome)]} from pytest's JUnit XML; None when there is none."""
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    files: dict[str, dict[str, int]] = {}
    cases, failed = [], []
    for case in root.iter("testcase"):
        file = test_file_of(case.get("classname", ""), case.get("name", ""))
        children = {child.tag for child in case}
        outcome = ("errors" if "error" in children else "failed" if "failure" in children
                   else "skipped" if "skipped" in children else "passed")
        counts = files.setdefault(file, dict.fromkeys(OUTCOMES, 0))
        counts[outcome] += 1
        cases.append((file, case.get("name", ""), outcome))
        if outcome in ("failed", "errors"):
            failed.append(f"{file}::{case.get('name', '')}")
    totals = {key: sum(c[key] for c in files.values()) for key in OUTCOMES}
    return {"files": dict(sorted(files.items())), "totals": totals, "failed": failed, "cases": cases}


def read_sanitizer_log(text: str, names: list[str]) -> dict[str, dict]:
    """Per sanitize_kernels entry: {"status": clean | errors | failed | crashed | not run, "findings": n,
    "detail": first finding or message}, from one or more runs' output (later runs fill what
    earlier ones left not run). A finding is attributed to the entry between whose markers it
    appears; findings outside any entry go to ``"(outside entries)"``."""
    results = {name: {"status": "not run", "findings": 0, "detail": ""} for name in names}
    current = None
    for line in text.splitlines():
        if line.startswith(BEGIN):
            current = line[len(BEGIN):].strip()
            results.setdefault(current, {"findings": 0, "detail": ""}).update(status="crashed", detail="")
            results[current]["findings"] = 0
        elif line.startswith(END):
            name, _, verdict = line[len(END):].strip().partition(" ")
            entry = results.setdefault(name, {"findings": 0, "detail": ""})
            if entry["findings"]:
                entry["status"] = "errors"
            elif verdict == "ok":
                entry["status"] = "clean"
            else:
                entry.update(status="failed", detail=verdict.removeprefix("FAILED: "))
            current = None
        elif line.startswith(SKIP):
            name, _, why = line[len(SKIP):].strip().partition(": ")
            results.setdefault(name, {"findings": 0}).update(status="not run", detail=why)
        elif FINDING.match(line):
            entry = results.setdefault(current or "(outside entries)",
                                       {"status": "errors", "findings": 0, "detail": ""})
            entry["findings"] += 1
            entry["status"] = "errors"
            if not entry["detail"]:
                entry["detail"] = line.removeprefix(SANITIZER_PREFIX).strip()
    return results


def _test_counts(junit: dict | None, test_specs: list[tuple[str, str]]) -> dict[str, int]:
    """Outcome counts of the test cases a kernel's ``(file, name regex)`` specs select."""
    counts = dict.fromkeys(OUTCOMES, 0)
    for file, name, outcome in (junit or {}).get("cases", []):
        if any(file == spec_file and re.search(spec, name) for spec_file, spec in test_specs):
            counts[outcome] += 1
    return counts


def kernel_statuses(junit: dict | None, sanitizer: dict[str, dict[str, dict]],
                    tests_finished: bool = True) -> dict[str, dict]:
    """Per kernel: "correct on GPU" when its tests ran (in a test phase that finished, not one
    stopped at its cap) and passed, and each of its kernel-driver entries came back clean under
    both sanitizer tools (and in the plain run, when there was one); "failed" when a test or an
    entry failed; else "not run" (evidence missing)."""
    statuses = {}
    for kernel, (test_specs, entry_patterns) in KERNELS.items():
        counts = _test_counts(junit, test_specs)
        verdicts = {tool: {name: result for name, result in entries.items()
                           if any(re.search(p, name) for p in entry_patterns)}
                    for tool, entries in sanitizer.items()}
        bad_entries = [f"{tool} {name}: {r['status']}" + (f" ({r['detail']})" if r.get("detail") else "")
                       for tool, entries in verdicts.items() for name, r in entries.items()
                       if r["status"] in ("errors", "failed", "crashed")]
        complete = (tests_finished and counts["passed"] > 0
                    and all(verdicts.get(tool) for tool in SANITIZER_TOOLS)
                    and all(r["status"] == "clean" for entries in verdicts.values() for r in entries.values()))
        if counts["failed"] or counts["errors"] or bad_entries:
            status = FAILED
        elif complete:
            status = CORRECT
        else:
            status = NOT_RUN
        statuses[kernel] = {"status": status, "tests": counts,
                            "sanitizer": {tool: {n: r["status"] for n, r in entries.items()}
                                          for tool, entries in verdicts.items()},
                            "problems": bad_entries[:10]}
    return statuses
