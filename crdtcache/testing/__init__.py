"""Testing kit: simulated networks for gossip engines and for real caches.

Use it to test code built on crdtcache without sockets or real time, as
``trio.testing`` does for trio: :class:`SimulatedNetwork` drives bare gossip engines
message by message under loss, delay and partitions; :class:`MemoryNetwork` runs real
``Cache`` objects on in-memory streams in virtual time.
"""

from crdtcache.testing._memory import MemoryNetwork, VirtualTimeLoop
from crdtcache.testing._network import NetworkStatistics, SimNode, SimulatedNetwork, Write

__all__ = [
    "MemoryNetwork",
    "NetworkStatistics",
    "SimNode",
    "SimulatedNetwork",
    "VirtualTimeLoop",
    "Write",
]
