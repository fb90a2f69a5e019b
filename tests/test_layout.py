"""The package's bands, read from its imports (docs/DEVELOPING.md, "Layout"):
kernels/ <- vidgen/ops/ <- vidgen/integration/ <- sampling, training, commands.

Each rule is about where a dependency may be imported from, so that a change to the kernels, the
ops or the diffusers integration lands in one place.
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "vidgen"
KERNELS = ROOT / "kernels"  # installed as vidgen.kernels


def _imports(path: pathlib.Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved against its package)."""
    relative_to = PACKAGE if path.is_relative_to(PACKAGE) else KERNELS
    package = ["vidgen"] if relative_to == PACKAGE else ["vidgen", "kernels"]
    package += path.relative_to(relative_to).parent.parts
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # "from . import x" imports x
    return names


def _files(folder: pathlib.Path):
    return sorted(folder.rglob("*.py"))


def _offenders(files, forbidden) -> list[str]:
    return [f"{p.relative_to(ROOT)} imports {name}" for p in files for name in sorted(_imports(p))
            if forbidden(name)]


def _is(name: str, module: str) -> bool:
    return name == module or name.startswith(module + ".")


def test_only_the_ops_import_the_kernels():
    outside_ops = [p for p in _files(PACKAGE) if not p.is_relative_to(PACKAGE / "ops")]
    assert not _offenders(outside_ops, lambda n: _is(n, "vidgen.kernels"))


def test_the_kernels_import_nothing_of_vidgen_above_them_nor_diffusers():
    assert not _offenders(_files(KERNELS), lambda n: (_is(n, "vidgen") and not _is(n, "vidgen.kernels"))
                          or _is(n, "diffusers"))


def test_the_ops_import_only_kernels_and_themselves():
    assert not _offenders(_files(PACKAGE / "ops"), lambda n: (_is(n, "vidgen") and not _is(n, "vidgen.ops")
                                                              and not _is(n, "vidgen.kernels"))
                          or _is(n, "diffusers") or _is(n, "transformers"))


def test_the_integration_imports_only_the_ops_below_it():
    assert not _offenders(_files(PACKAGE / "integration"),
                          lambda n: _is(n, "vidgen") and not _is(n, "vidgen.ops") and not _is(n, "vidgen.integration"))


def _module_name(path: pathlib.Path) -> str:
    root, prefix = (PACKAGE, ["vidgen"]) if path.is_relative_to(PACKAGE) else (KERNELS, ["vidgen", "kernels"])
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(prefix + (parts[:-1] if parts[-1] == "__init__" else parts))


def test_no_two_modules_import_each_other():
    # A cycle (even through an import inside a function) means two files share one purpose. Edges
    # into a package's __init__ do not count: ``from . import x`` names the package to reach x.
    files = [p for p in _files(PACKAGE) + _files(KERNELS) if p.name != "__init__.py"]
    modules = {_module_name(p): p for p in files}
    imports = {name: sorted(m for m in _imports(path) if m in modules and m != name) for name, path in modules.items()}
    cycles, state = [], {}

    def visit(name, trail):
        state[name] = "open"
        for other in imports[name]:
            if state.get(other) == "open":
                cycles.append(" -> ".join(trail[trail.index(other):] + [name, other]))
            elif other not in state:
                visit(other, trail + [name])
        state[name] = "done"

    for name in sorted(modules):
        if name not in state:
            visit(name, [])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("model_module", ["diffusers.models", "diffusers.schedulers"])
def test_only_the_integration_reaches_into_diffusers_models_and_schedulers(model_module):
    # Sampling, training and the command line load pipelines and models with diffusers' public
    # constructors; what reaches into diffusers' modules to replace parts of them lives in integration/.
    outside = [p for p in _files(PACKAGE) if not p.is_relative_to(PACKAGE / "integration")]
    assert not _offenders(outside, lambda n: _is(n, model_module))
