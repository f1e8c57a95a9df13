"""A connected peer cannot wipe a node with sync answers, nor pin its marks in the future.

Each test is a peer on a real loopback socket that sends what a buggy or hostile
peer could: an answer to no request of the node's, marks or a stream claim from the
far future (issue 12, item 1).
"""

from __future__ import annotations

import asyncio
import time

from conftest import make_engine, start_cluster, view, wait_for, write
from rawpeer import RawPeer

from crdtcache.core import Entry, Push, SyncRequest, SyncResponse, pack_ts
from crdtcache.transport import Node

KEYS = 51


def _future() -> int:
    return pack_ts(int((time.time() + 3600) * 1000))


async def test_an_unsolicited_full_answer_wipes_nothing() -> None:
    a, b = await start_cluster(2, prefix="wipe")
    intruder = None
    try:
        for i in range(KEYS):
            write(a, f"k{i}", i)
        await wait_for(lambda: len(view(b)) == KEYS)
        intruder = await RawPeer.join(a)
        # A "full" answer listing nothing, with marks that cover every key a holds:
        # the forget rule would drop them all, and a would never ask for them again.
        marks = dict(a.engine.replica.marks)
        intruder.send(SyncResponse(4242, 0, 1, (), (), marks, True))
        await intruder.barrier()
        assert len(view(a)) == KEYS
        assert a.engine.stats.unsolicited_responses == 1
        write(b, "after", 1)  # the pair still replicates
        await wait_for(lambda: view(a).get("after") == 1)
    finally:
        if intruder is not None:
            intruder.close()
        await asyncio.gather(a.close(), b.close())


async def test_an_answer_with_marks_beyond_max_drift_is_refused() -> None:
    node = Node(make_engine("lone"))
    await node.start()
    intruder = None
    try:
        for i in range(KEYS):
            write(node, f"k{i}", i)
        intruder = await RawPeer.join(node)
        # The node pulls from a new member at once: answer that very exchange.
        request = await intruder.wait_for(lambda m: isinstance(m, SyncRequest))
        assert isinstance(request, SyncRequest)
        future = _future()
        marks = {"lone": future, "intruder": future}
        entry = Entry("v", pack_ts(int(time.time() * 1000)), "intruder")
        intruder.send(SyncResponse(request.exchange, 0, 1, (("new", entry),), (), marks, True))
        await intruder.barrier()
        assert len(view(node)) == KEYS + 1  # the entry merged, nothing forgotten
        assert node.engine.replica.marks.get("intruder", -1) < future
        assert node.engine.replica.marks["lone"] < future
        assert node.engine.stats.refused_drift == 1
    finally:
        if intruder is not None:
            intruder.close()
        await node.close()


async def test_a_stream_claim_beyond_max_drift_raises_no_mark() -> None:
    node = Node(make_engine("lone"))
    await node.start()
    intruder = None
    try:
        intruder = await RawPeer.join(node)
        future = _future()
        entry = Entry("v", pack_ts(int(time.time() * 1000)), "intruder")
        intruder.send(Push((("k", entry),), (), "intruder", -1, future))
        await intruder.barrier()
        assert view(node) == {"k": "v"}
        # A mark in the future would make the node skip every later write of the peer.
        assert node.engine.replica.marks.get("intruder", -1) < future
        assert node.engine.stats.refused_drift == 1
    finally:
        if intruder is not None:
            intruder.close()
        await node.close()
