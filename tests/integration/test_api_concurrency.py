"""A burst of concurrent authenticated requests must neither wedge the API nor fail any request.

The API used to deadlock at about 64 concurrent requests and stay stuck after the load was
gone: sessions opened in a sync `yield` dependency held pooled connections while waiting for a
worker thread to close them, and every worker thread waited for a connection. The burst comes
from a second process (threads, one connection each) so that the client's own scheduling
cannot throttle it, against the real `uvicorn` API on both deployments.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest

from tests.support.stack import Stack

pytestmark = pytest.mark.integration

CONCURRENCY = 128
REQUESTS = 512
DEADLINE_S = 40  # the wedged API never answers; a healthy one needs a few seconds here

# Runs in a subprocess: fire REQUESTS GETs from CONCURRENCY threads released together, stop
# sending at the deadline, and print {status: count} plus the slowest request's seconds.
LOAD_SCRIPT = """
import collections, json, sys, threading, time, urllib.error, urllib.request
url, key, concurrency, total = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
deadline = time.monotonic() + float(sys.argv[5])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
statuses, slowest, lock = collections.Counter(), [0.0], threading.Lock()
barrier = threading.Barrier(concurrency)

def worker(n):
    barrier.wait()
    for _ in range(n):
        if time.monotonic() > deadline:
            with lock:
                statuses["not sent: deadline"] += 1
            continue
        req = urllib.request.Request(url, headers={"Authorization": "Bearer " + key})
        t = time.monotonic()
        try:
            with opener.open(req, timeout=15) as resp:
                resp.read()
                status = str(resp.status)
        except urllib.error.HTTPError as exc:
            status = str(exc.code)
        except Exception as exc:
            status = type(exc).__name__
        with lock:
            statuses[status] += 1
            slowest[0] = max(slowest[0], time.monotonic() - t)

threads = [
    threading.Thread(target=worker, args=(total // concurrency,)) for _ in range(concurrency)
]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"statuses": statuses, "slowest_s": slowest[0]}))
"""


def test_burst_of_concurrent_requests_completes_and_api_stays_responsive(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=30) as c:
        dataset = c.post("/v1/datasets", json={"name": "burst"}).json()["id"]
    url = f"{stack.api_url}/v1/datasets/{dataset}"

    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, url, stack.api_key, str(CONCURRENCY), str(REQUESTS)]
        + [str(DEADLINE_S)],
        capture_output=True,
        text=True,
        timeout=DEADLINE_S + 60,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["statuses"] == {"200": REQUESTS}, result
    assert elapsed < DEADLINE_S, f"{REQUESTS} requests took {elapsed:.1f}s"

    # Right after the burst, one request answers promptly (checks completion, not speed).
    t = time.monotonic()
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=10) as c:
        assert c.get(f"/v1/datasets/{dataset}").status_code == 200
    assert time.monotonic() - t < 10
