"""`python -m cadenza.cli ARGS`: the `cadenza` command without the console script on PATH."""

from cadenza.cli import main

if __name__ == "__main__":
    main()
