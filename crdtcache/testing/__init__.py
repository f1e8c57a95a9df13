"""Testing kit: a seeded, deterministic simulated network for gossip engines.

Use it to test code built on crdtcache without sockets or real time, as
``trio.testing`` does for trio.
"""

from crdtcache.testing._network import NetworkStatistics, SimNode, SimulatedNetwork, Write

__all__ = ["NetworkStatistics", "SimNode", "SimulatedNetwork", "Write"]
