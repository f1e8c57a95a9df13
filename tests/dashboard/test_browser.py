"""The live page in headless Chromium, against a three-node cluster on loopback.

Needs Debian's ``chromium`` (``/usr/bin/chromium``, or ``CRDTCACHE_CHROMIUM``) and
Playwright for Python; never downloads a browser. Outside CI a missing one skips the
test; in CI (``CI=true``) it fails. Screenshots go to ``test-artifacts/``; with
``CRDTCACHE_UPDATE_DOCS=1`` the desktop one is also copied to ``docs/dashboard.png``.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
from asyncio.subprocess import Process
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from crdtcache import Cache
from tests.dashboard.helpers import node_process, p2p_cluster, wait_for

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
UPDATE_DOCS = os.environ.get("CRDTCACHE_UPDATE_DOCS") == "1"
CHROMIUM = os.environ.get("CRDTCACHE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (required in CI)")
    pytest.skip(reason)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:  # pragma: no cover - depends on the machine
        unavailable("playwright is not installed: pip install playwright")
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@dataclass
class Cluster:
    a: Cache  # with the dashboard
    b: Cache
    c: str  # the node in a process of its own, which the test kills
    c_process: Process


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    # Default failure detection: a loaded CI machine must not see a live peer go suspect.
    a, b = await p2p_cluster(2, quick=False, max_size=40)
    try:
        assert a.address is not None
        async with node_process("n2", a.address) as (c, process):
            await wait_for(lambda: len(a._engine.live_peers()) == 2, timeout=10)  # type: ignore[union-attr]
            yield Cluster(a, b, c, process)
    finally:
        await a.close()
        await b.close()


async def some_traffic(caches: tuple[Cache, Cache], seconds: float) -> None:
    """Writes, reads, misses, TTLs, evictions and pattern invalidations, for the charts."""
    loop = asyncio.get_running_loop()
    rng = random.Random(7)
    deadline = loop.time() + seconds
    n = 0
    while True:
        for _ in range(20):
            n += 1
            writer = caches[n % 2]
            await writer.set(f"product:{rng.randrange(80)}", {"id": n, "price": n % 97}, ttl=30)
            for _ in range(3):
                await rng.choice(caches).get(f"product:{rng.randrange(90)}")
        await caches[1].set(f"session:{n}", "x", ttl=0.5)
        if n % 200 == 0:
            await caches[0].invalidate_pattern(f"product:{rng.randrange(10)}*")
        if loop.time() > deadline:
            return
        await asyncio.sleep(0.25)


async def test_live_page_follows_the_cluster(browser: Any, cluster: Cluster) -> None:
    from playwright.async_api import expect

    a, b, c = cluster.a, cluster.b, cluster.c
    assert a.dashboard_url is not None
    page = await browser.new_page(viewport={"width": 1280, "height": 1000})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))

    await page.goto(a.dashboard_url)
    # Three nodes: the drawing and the table (this node and both peers). Waits use
    # selectors: the page's CSP forbids the eval that wait_for_function needs.
    await expect(page.locator("#cluster [data-node]")).to_have_count(3, timeout=10_000)
    ids = await page.eval_on_selector_all(
        "#peers tbody tr", "rows => rows.map(r => [r.dataset.peerId, r.dataset.state])"
    )
    assert sorted(ids) == sorted([[a.node_id, "self"], [b.node_id, "alive"], [c, "alive"]])
    await expect(page.locator("#link")).to_have_text("live")

    # A write on another node reaches the feed and the key count within seconds.
    await b.set("user:42", {"name": "Alice"})
    row = await page.wait_for_selector('#feed li[data-key="user:42"][data-op="set"]', timeout=5_000)
    assert row is not None
    assert b.node_id[:10] in (await row.text_content() or "")
    await expect(page.locator("#stat-keys")).to_have_text("1", timeout=5_000)

    # A few frames of charts (a minute of them for the README's picture).
    await some_traffic((a, b), 60.0 if UPDATE_DOCS else 3.5)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    await page.screenshot(path=str(shot), full_page=True)
    if UPDATE_DOCS:
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copyfile(shot, ROOT / "docs" / "dashboard.png")

    # A node stopped (killed: no goodbye) turns suspect, then dead, in the drawing and
    # the table. (A node that closes cleanly says goodbye and leaves the list.)
    cluster.c_process.kill()
    await page.wait_for_selector(
        f'#cluster [data-node="{c}"]:is([data-state="suspect"], [data-state="dead"])',
        timeout=10_000,
    )
    await page.wait_for_selector(
        f'#peers tr[data-peer-id="{c}"]:is([data-state="suspect"], [data-state="dead"])',
        timeout=5_000,
    )
    await page.wait_for_selector(f'#cluster [data-node="{b.node_id}"][data-state="alive"]')
    await page.screenshot(path=str(ARTIFACTS / "dashboard-node-down.png"), full_page=True)

    # Readable on a phone: nothing wider than the screen.
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.wait_for_timeout(1_200)
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390
    await page.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
    assert problems == []
