"""python -m missrec_recbole.bench ... (see the package docstring)."""

from missrec_recbole.bench.cli import main

if __name__ == "__main__":
    main()
