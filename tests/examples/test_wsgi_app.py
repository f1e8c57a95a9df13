"""examples/wsgi_app: three Flask instances sharing a p2p SyncCache."""

from __future__ import annotations

from pathlib import Path

from tests.examples.helpers import ROOT, check_shared_cache_and_invalidation, instances, need


def test_three_instances_share_the_cache(tmp_path: Path) -> None:
    need("flask", "aiohttp")
    with instances(ROOT / "examples" / "wsgi_app" / "app.py", tmp_path) as nodes:
        check_shared_cache_and_invalidation(nodes)
