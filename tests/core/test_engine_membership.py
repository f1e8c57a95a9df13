"""The membership table: every state change comes from the transition table."""

from __future__ import annotations

import pytest

from crdtcache.core._membership import (
    ALIVE,
    DEAD,
    HEARD,
    LOST,
    QUIET,
    SILENT,
    SUSPECT,
    TRANSITIONS,
    Membership,
    PeerEvent,
)

T0 = 1_700_000_000.0
STATES = (ALIVE, SUSPECT, DEAD)
SIGNALS = (HEARD, LOST, QUIET, SILENT)


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("signal", SIGNALS)
def test_every_signal_in_every_state_follows_the_table(state: str, signal: str) -> None:
    members = Membership("a")
    members.add("b", T0)
    info = members.peers["b"]
    info.state = state
    event = members.signal(info, signal)
    expected = TRANSITIONS.get((state, signal), state)
    assert info.state == expected
    assert event == (None if expected == state else PeerEvent("b", expected, state))


def test_silence_moves_alive_to_suspect_to_dead_and_a_sign_of_life_back() -> None:
    members = Membership("a")
    assert members.add("b", T0) == PeerEvent("b", ALIVE, None)
    assert members.add("b", T0) is None
    assert members.check(T0 + 1, suspect_after=2, dead_after=6) == []
    assert members.check(T0 + 3, 2, 6) == [PeerEvent("b", SUSPECT, ALIVE)]
    # Silent past both thresholds at once: both steps, in order.
    members.add("c", T0)
    assert members.check(T0 + 7, 2, 6) == [
        PeerEvent("b", DEAD, SUSPECT),
        PeerEvent("c", SUSPECT, ALIVE),
        PeerEvent("c", DEAD, SUSPECT),
    ]
    assert members.live() == []
    assert members.heard(members.peers["b"], T0 + 8) == PeerEvent("b", ALIVE, DEAD)
    assert members.live() == ["b"]


def test_a_lost_link_unlinks_until_heard_again() -> None:
    members = Membership("a")
    members.add("b", T0)
    info = members.peers["b"]
    assert members.unlinked(info) == PeerEvent("b", SUSPECT, ALIVE)
    assert members.unlinked(info) is None and members.live() == []
    assert members.heard(info, T0) == PeerEvent("b", ALIVE, SUSPECT)
    assert info.linked and members.live() == ["b"]


def test_pings_are_due_per_heartbeat_and_less_often_for_the_dead() -> None:
    members = Membership("a")
    members.add("b", T0)
    members.add("c", T0)
    members.peers["c"].state = DEAD
    assert members.due_pings(T0 + 0.5, heartbeat=1.0) == []
    assert members.due_pings(T0 + 1.0, 1.0) == ["b"]
    assert members.due_pings(T0 + 4.0, 1.0) == ["b", "c"]


def test_own_id_and_unknown_peers() -> None:
    members = Membership("a")
    with pytest.raises(ValueError, match="own peer"):
        members.add("a", T0)
    assert members.remove("zz") is None and members.get("zz") is None
    members.add("b", T0)
    assert "b" in members and [p.id for p in members] == ["b"]
    assert members.remove("b") == PeerEvent("b", DEAD, ALIVE)
