"""`python -m cadenza_api`: the API server, uvicorn on the app factory in `api_processes`
processes sharing one listening socket.

Why a module of its own rather than uvicorn's command line: the process count is a setting
(`CADENZA_API_PROCESSES`), read here from the server's own environment, the same way each
process then reads it to size its share of the database slots (`cadenza_api.deps.Database`).
`cadenza.launch.stack.api_command` is the one place that starts it.
"""

from __future__ import annotations

import argparse
import os

import uvicorn

from cadenza.config import get_settings


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m cadenza_api", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--processes", type=int, default=None, help="default: api_processes")
    args = ap.parse_args(argv)
    if args.processes is not None:
        if args.processes < 1:
            ap.error("--processes must be at least 1")
        # The processes size their database slots by it (they read the same setting).
        os.environ["CADENZA_API_PROCESSES"] = str(args.processes)
        get_settings.cache_clear()
    processes = get_settings().api_processes
    uvicorn.run(
        "cadenza_api.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        # One process runs in this one (no supervisor): its pid is the server's, as before.
        workers=processes if processes > 1 else None,
    )


if __name__ == "__main__":
    main()
