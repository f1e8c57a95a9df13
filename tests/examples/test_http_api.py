"""examples/http_api: three FastAPI instances sharing a p2p cache."""

from __future__ import annotations

from pathlib import Path

from tests.examples.helpers import ROOT, check_shared_cache_and_invalidation, instances, need


def test_three_instances_share_the_cache(tmp_path: Path) -> None:
    need("fastapi", "uvicorn", "aiohttp")
    with instances(ROOT / "examples" / "http_api" / "app.py", tmp_path) as nodes:
        check_shared_cache_and_invalidation(nodes)
