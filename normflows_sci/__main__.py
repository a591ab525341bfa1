"""``python -m normflows_sci``: the ``normflows-sci`` command line."""

from normflows_sci.cli import main

__all__: list[str] = []

if __name__ == "__main__":  # guarded: pytest --doctest-modules imports this module
    raise SystemExit(main())
