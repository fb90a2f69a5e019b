"""``python -m vidgen``: the ``vidgen`` command (see :mod:`vidgen.cli`)."""
from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
