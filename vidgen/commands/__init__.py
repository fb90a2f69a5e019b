"""Subcommands of the ``vidgen`` CLI, one module each, each with ``main(argv) -> int``."""
