"""The studio's page weight and time to first render on loopback, in Debian's headless chromium.

Runs the real API process (uvicorn, embedded default, no worker) with one dataset of one
chorale, and loads `/studio/` signed in (the key preset in session storage) in a fresh browser
context each time, so nothing comes from a cache. Measured per load:
- first contentful paint (the browser's own `first-contentful-paint` entry);
- ready: the Datasets page drawn from the API's answers (`main[data-ready=true]`, which needs
  `GET /v1/keys` and `GET /v1/datasets`), from navigation start;
- bytes of every studio asset as transferred (Resource Timing), and as the files are on disk.
The reference in the same run is `GET /healthz` in the same browser (a one-line JSON document:
the floor of a page load on this machine).

    .venv/bin/python bench/studio.py [--loads 20]
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import statistics
import tempfile
from pathlib import Path

import httpx
from playwright.sync_api import Browser, sync_playwright

from cadenza.datasets import export_bach_chorales
from cadenza.launch.processes import free_port
from cadenza.launch.stack import create_key, launch, migrate
from cadenza_api.studio import STATIC_DIR

CHROMIUM = "/usr/bin/chromium"


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _load(browser: Browser, url: str, key: str, *, studio: bool) -> dict[str, float]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.add_init_script(f"sessionStorage.setItem('cadenza.apiKey', {key!r})")
    page = context.new_page()
    page.goto(url)
    if studio:
        page.wait_for_function(
            "() => performance.getEntriesByName('studio-ready:datasets').length > 0"
        )
    page.wait_for_function(
        "() => performance.getEntriesByName('first-contentful-paint').length > 0"
    )
    out = page.evaluate(
        """() => {
            const fcp = performance.getEntriesByName('first-contentful-paint')[0].startTime;
            const studio = performance.getEntriesByType('resource')
                .filter(r => new URL(r.name).pathname.startsWith('/studio/'));
            const nav = performance.getEntriesByType('navigation')[0];
            const ready = performance.getEntriesByName('studio-ready:datasets')[0];
            return {fcp, ready: ready ? ready.startTime : null,
                    bytes: nav.transferSize + studio.reduce((s, r) => s + r.transferSize, 0),
                    files: studio.length + 1};
        }"""
    )
    context.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=20)
    args = parser.parse_args()
    disk = {p.name: p.read_bytes() for p in sorted(STATIC_DIR.iterdir()) if p.is_file()}
    raw = sum(len(b) for b in disk.values())
    gz = sum(len(gzip.compress(b, 9)) for b in disk.values())
    root = Path(__file__).resolve().parent.parent
    chorale = export_bach_chorales(root / ".cache" / "bach-midi", 1)[0]
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CADENZA_")} | {
            "CADENZA_DATA_DIR": tmp
        }
        migrate(env)
        key = create_key(env, "bench")
        with launch(env, port=free_port(), queues=()) as api:
            with httpx.Client(
                base_url=api.api_url, headers={"Authorization": f"Bearer {key}"}
            ) as c:
                ds = c.post("/v1/datasets", json={"name": "bench"}).json()["id"]
                c.post(
                    f"/v1/datasets/{ds}/files",
                    files=[("files", (chorale.name, chorale.read_bytes()))],
                ).raise_for_status()
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path=CHROMIUM,
                    headless=True,
                    args=["--no-sandbox", "--disable-background-networking"],
                )
                studio_url = f"{api.api_url}/studio/#/datasets"
                ref_url = f"{api.api_url}/healthz"
                for _ in range(3):  # warm-up: the server's first answers, the browser's start
                    _load(browser, studio_url, key, studio=True)
                    _load(browser, ref_url, key, studio=False)
                studio_runs, ref_runs = [], []
                for _ in range(args.loads):  # interleaved, so load on the machine hits both
                    studio_runs.append(_load(browser, studio_url, key, studio=True))
                    ref_runs.append(_load(browser, ref_url, key, studio=False))
                browser.close()
    med = statistics.median
    fcp = med(r["fcp"] for r in studio_runs)
    ready = med(r["ready"] for r in studio_runs)
    ref = med(r["fcp"] for r in ref_runs)
    print(f"machine: {_cpu()}, {os.cpu_count()} cores, chromium headless ({CHROMIUM})")
    print(
        f"assets on disk: {len(disk)} files, {raw / 1024:.1f} KB "
        f"({gz / 1024:.1f} KB if gzipped; the API sends them uncompressed)"
    )
    print(
        f"transferred for the signed-in Datasets page: {studio_runs[0]['files']} studio files, "
        f"{med(r['bytes'] for r in studio_runs) / 1024:.1f} KB (HTTP headers included)"
    )
    print(f"{args.loads} cold loads each, medians:")
    print(f"  studio first contentful paint: {fcp:.0f} ms")
    print(f"  studio Datasets page ready (API answers drawn): {ready:.0f} ms")
    print(f"  reference GET /healthz first contentful paint: {ref:.0f} ms")
    print(f"  ratio studio FCP / reference FCP: {fcp / ref:.2f}x")


if __name__ == "__main__":
    main()
