"""Start Cadenza's processes and the local services they talk to, the same way everywhere.

`cadenza serve`, `cadenza demo`, the test suite and the benchmarks all start the API (uvicorn)
and Celery workers through `cadenza.launch.stack`, so a change to how the API is launched (a
uvicorn option, a readiness check) is made once. `processes` holds the plumbing (free ports,
waits, process groups); `postgres` and `redis` find or start the local servers and hand out
scratch namespaces, for the test suite and for benchmarks that run on those servers.

Nothing here is imported by the API or the workers themselves.
"""
