"""``python -m medseg``: the same command line as the ``medseg`` command."""

from __future__ import annotations

from medseg.cli.main import main

if __name__ == "__main__":  # importing this module (pytest collecting doctests, tools) must not run the CLI
    main()
