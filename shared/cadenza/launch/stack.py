"""Start the API (uvicorn) and Celery workers as child processes, wait for them, stop them.

`cadenza serve`, `cadenza demo`, the test suite's stacks and the benchmarks all go through
`launch`, so the API and the workers are started one way everywhere. Each child runs in its
own process group: stopping it signals everything it started too (a worker's sandboxed MIDI
parser, tokenizer pools), and a test can kill a worker the way a node dies.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cadenza.launch.processes import (
    LOCALHOST,
    ServiceUnavailableError,
    http_status,
    log_tail,
    stop_process_groups,
)

# Seconds a child gets between SIGTERM and SIGKILL: a worker finishes its current database
# write and acknowledges nothing it has not done.
STOP_TIMEOUT_S = 20.0
# A child that dies is started again after a delay that doubles from the first to the last
# value while it keeps dying; one that ran this long is healthy again and starts at the first.
RESTART_DELAYS_S = (1.0, 30.0)
HEALTHY_AFTER_S = 60.0


def api_command(
    *, host: str = LOCALHOST, port: int = 8000, log_level: str = "info", workers: int | None = None
) -> list[str]:
    """The command line of the REST API: `python -m cadenza_api` (uvicorn on the app factory
    in `workers` processes; default: the `api_processes` setting of its environment).

    The only place the API's server is configured: `cadenza api` execs it and everything else
    starts it through `Launched.start_api`.
    """
    argv = [
        sys.executable,
        "-m",
        "cadenza_api",
        "--host",
        host,
        "--port",
        str(port),
        "--log-level",
        log_level,
    ]
    return argv + (["--processes", str(workers)] if workers is not None else [])


def worker_command(
    queues: str = "cpu,gpu", concurrency: int = 1, loglevel: str = "info", pool: str = "solo"
) -> list[str]:
    """The command line of a Celery worker on QUEUES (comma-separated: cpu, gpu).

    The default `solo` pool runs each job in the worker's main process, which may start child
    processes (the sandboxed MIDI parser, parallel tokenization, DDP); prefork's children are
    daemonic and may not. Run several workers for concurrency.
    """
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "cadenza_worker.app",
        "worker",
        "-Q",
        queues,
        "-P",
        pool,
        "-c",
        str(concurrency),
        "-l",
        loglevel,
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-n",
        f"cadenza-{queues.replace(',', '-')}@%h",
    ]


def cadenza_command(*args: str) -> list[str]:
    """`cadenza ARGS` with this interpreter (works without the console script on PATH)."""
    return [sys.executable, "-m", "cadenza.cli", *args]


def migrate(env: dict[str, str]) -> None:
    """Create or upgrade the schema of the database `env` points at (`cadenza migrate`)."""
    subprocess.run(cadenza_command("migrate"), env=env, check=True)


def create_key(env: dict[str, str], owner: str, *options: str) -> str:
    """A new API key for `owner` in the database `env` points at (`cadenza keys create`, with
    `options` such as `--scopes read`)."""
    res = subprocess.run(
        cadenza_command("keys", "create", "--owner", owner, *options),
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return res.stdout.strip().splitlines()[-1]


@dataclass
class Launched:
    """The API and worker processes started for one environment.

    Output goes to `log_file` (all children, appended), else to `logs/NAME.log`, else to this
    process's own stdout and stderr.
    """

    env: dict[str, str]
    logs: Path | None = None
    log_file: Path | None = None
    api_url: str = ""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    argv: dict[str, list[str]] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    extra_env: dict[str, dict[str, str]] = field(default_factory=dict)

    def start(
        self, name: str, argv: list[str], extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start `argv` as the child called `name`, in a process group of its own."""
        log = self._log(name)
        out = None
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            out = log.open("ab")
        try:
            proc = subprocess.Popen(
                argv,
                env=self.env | (extra_env or {}),
                stdout=out,
                stderr=subprocess.STDOUT if out else None,
                start_new_session=True,
            )
        finally:
            if out is not None:
                out.close()  # the child holds its own copy of the descriptor
        self.procs[name] = proc
        self.argv[name] = list(argv)
        self.extra_env[name] = dict(extra_env or {})
        return proc

    def start_api(self, *, host: str = LOCALHOST, port: int, log_level: str = "warning") -> None:
        self.start("api", api_command(host=host, port=port, log_level=log_level))
        self.api_url = f"http://{host}:{port}"

    def start_worker(
        self,
        queues: str = "cpu,gpu",
        *,
        loglevel: str = "info",
        name: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        workers = sum(1 for n in self.procs if n.startswith("worker"))
        argv = worker_command(queues, loglevel=loglevel)
        return self.start(name or f"worker{workers}", argv, extra_env)

    def start_stack(
        self,
        *,
        port: int,
        host: str = LOCALHOST,
        queues: Sequence[str] = ("cpu,gpu",),
        log_level: str = "warning",
        worker_loglevel: str = "info",
    ) -> None:
        """The API on `host:port` and one worker per entry of `queues`."""
        self.start_api(host=host, port=port, log_level=log_level)
        for q in queues:
            self.start_worker(q, loglevel=worker_loglevel)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the API answers `/healthz`; fail early, with its log, if it exits."""
        deadline = time.monotonic() + timeout
        api = self.procs["api"]
        while http_status(f"{self.api_url}/healthz", timeout=2.0) is None:
            if api.poll() is not None:
                raise ServiceUnavailableError(
                    f"the API exited with code {api.returncode} while starting"
                    + (f"\n--- log tail ---\n{log_tail(log)}" if (log := self._log("api")) else "")
                )
            if time.monotonic() >= deadline:
                raise ServiceUnavailableError(f"{self.api_url} did not answer within {timeout}s")
            time.sleep(0.1)

    def _log(self, name: str) -> Path | None:
        return self.log_file or (self.logs / f"{name}.log" if self.logs else None)

    def exited(self) -> bool:
        """True once any child has exited."""
        return any(p.poll() is not None for p in self.procs.values())

    def supervise(self, until: Callable[[], bool] = lambda: False, poll: float = 0.5) -> None:
        """Keep every child running until `until()` is true: a dead one is started again.

        A worker killed by the OOM killer or a crash must not take the API or the other
        workers with it (`cadenza serve`). Restarts back off (`RESTART_DELAYS_S`) while a
        child keeps dying, so a child that cannot start does not spin.
        """
        started = {name: time.monotonic() for name in self.procs}
        delay = {name: RESTART_DELAYS_S[0] for name in self.procs}
        due: dict[str, float] = {}
        while not until():
            now = time.monotonic()
            for name, proc in list(self.procs.items()):
                if proc.poll() is None:
                    if now - started[name] >= HEALTHY_AFTER_S:
                        delay[name] = RESTART_DELAYS_S[0]
                    continue
                if name not in due:
                    due[name] = now + delay[name]
                    print(
                        f"cadenza: {name} exited with code {proc.returncode}; "
                        f"restarting in {delay[name]:.0f} s",
                        file=sys.stderr,
                        flush=True,
                    )
                elif now >= due[name]:
                    del due[name]
                    self.start(name, self.argv[name], self.extra_env[name])
                    self.restarts[name] = self.restarts.get(name, 0) + 1
                    started[name] = now
                    delay[name] = min(delay[name] * 2, RESTART_DELAYS_S[1])
            time.sleep(poll)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM every child's group (SIGKILL after `timeout`) and reap it."""
        stop_process_groups(self.procs.values(), timeout)

    def exit_code(self) -> int:
        """The largest child exit status if any failed, else 0 (what `cadenza serve` exits with)."""
        codes = [p.returncode or 0 for p in self.procs.values()]
        return max(codes) if any(codes) else 0


@contextlib.contextmanager
def launch(
    env: dict[str, str],
    *,
    port: int,
    host: str = LOCALHOST,
    queues: Sequence[str] = ("cpu,gpu",),
    log_level: str = "warning",
    worker_loglevel: str = "info",
    logs: Path | None = None,
    log_file: Path | None = None,
    ready_timeout: float = 60.0,
) -> Iterator[Launched]:
    """Start the API on `host:port` and one worker per entry of `queues`; yield once the API
    answers; stop them all on exit (also when start-up fails)."""
    launched = Launched(env, logs=logs, log_file=log_file)
    try:
        launched.start_stack(
            port=port,
            host=host,
            queues=queues,
            log_level=log_level,
            worker_loglevel=worker_loglevel,
        )
        launched.wait_ready(ready_timeout)
        yield launched
    finally:
        launched.stop()
