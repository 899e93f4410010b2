"""`python -m cadenza_api`: the API server (`cadenza_api.server`, where the processes' entry
point lives: a spawned process cannot import it from a `__main__` module)."""

from cadenza_api.server import main

if __name__ == "__main__":
    main()
