"""``vidgen info``: versions, GPU, the CUDA library's state, and which backend each op would use."""
from __future__ import annotations

import platform

import torch

from . import __version__
from .ops import _backend, _cuda_lib
from . import ops as _ops  # noqa: F401  (declares every op)


def _versions() -> dict[str, str]:
    versions = {"vidgen": __version__, "python": platform.python_version(), "torch": torch.__version__,
                "torch CUDA": str(torch.version.cuda)}
    for name in ("triton", "diffusers", "transformers"):
        try:
            versions[name] = __import__(name).__version__
        except Exception as exc:
            versions[name] = f"not importable ({type(exc).__name__})"
    return versions


def _gpus() -> list[str]:
    try:
        import pynvml

        pynvml.nvmlInit()
        driver = pynvml.nvmlSystemGetDriverVersion()
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            cc = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h).total / 2**30
            gpus.append(f"{i}: {pynvml.nvmlDeviceGetName(h)}, sm_{cc[0]}{cc[1]}, {mem:.0f} GiB, driver {driver}")
        return gpus or ["none (NVML sees no device)"]
    except Exception as exc:
        return [f"none ({type(exc).__name__}: {exc})"]


def _backend_for(op: _backend.OpInfo, device: torch.device) -> str:
    try:
        return _backend.select(op, device)
    except _backend.BackendUnavailable as exc:
        return f"error: {exc}"


def report() -> str:
    lines = ["vidgen info", ""]
    lines += [f"  {k:<13} {v}" for k, v in _versions().items()]
    lines += ["", "GPU (nvidia-ml-py):"] + [f"  {g}" for g in _gpus()]
    reason = _cuda_lib.load_error()
    lines += ["", "CUDA library:", f"  {'loaded from ' + str(_cuda_lib.path()) if reason is None else 'not loaded: ' + reason}"]
    lines += ["", f"Backends (VIDGEN_BACKEND={_backend.requested()}, "
                  f"TRITON_INTERPRET={'1' if _backend.interpreter_enabled() else '0'}):",
              f"  {'op':<22} {'CUDA tensor':<12} {'CPU tensor':<12} priority"]
    for op in _backend.REGISTRY.values():
        lines.append(f"  {op.name:<22} {_backend_for(op, torch.device('cuda')):<12} "
                     f"{_backend_for(op, torch.device('cpu')):<12} {' > '.join(op.backends)}")
    return "\n".join(lines)


def build_parser():
    from .commands import _args

    return _args.parser("vidgen info", __doc__)


def main(argv=None) -> int:
    from .commands import _args

    parser = build_parser()
    parser.parse_args(argv)  # no options: a misspelt one is refused, not ignored
    try:
        _args.check_backend()
    except _args.UsageError as exc:
        return _args.fail(parser, exc)
    print(report())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
