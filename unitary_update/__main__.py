"""``python -m unitary_update``: see :mod:`unitary_update.cli`."""

from unitary_update.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
