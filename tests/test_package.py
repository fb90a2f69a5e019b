"""What an installed vidgen offers a user: type information and a listed public API."""
import importlib.resources
import os
import tomllib

import vidgen

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_py_typed_ships_with_the_package():
    assert importlib.resources.files("vidgen").joinpath("py.typed").is_file()
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        package_data = tomllib.load(f)["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data["vidgen"]  # so wheels and sdists install it, not only checkouts


def test_dir_lists_the_public_api_and_every_name_resolves():
    names = dir(vidgen)
    assert set(vidgen.__all__) <= set(names)
    for name in vidgen.__all__:
        assert getattr(vidgen, name) is not None, name
    assert not [name for name in names if name.startswith("_") and name != "__version__"]


def test_every_methods_section_the_sources_cite_exists():
    import re

    with open(os.path.join(ROOT, "docs", "METHODS.md"), encoding="utf-8") as f:
        headings = {int(n) for n in re.findall(r"^## (\d+)\. ", f.read(), flags=re.M)}
    cited = set()
    for folder in ("vidgen", "kernels"):
        for base, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if name.endswith(".py"):
                    with open(os.path.join(base, name), encoding="utf-8") as f:
                        for match in re.finditer(r"METHODS\.md sections? (\d+)(?:(?: and |-)(\d+))?", f.read()):
                            first, last = int(match.group(1)), int(match.group(2) or match.group(1))
                            cited.update(range(first, last + 1))
    assert cited and cited <= headings, f"cited but missing: {sorted(cited - headings)}"
