"""Bytes to messages and back, with no IO: framing, the message codec, authentication.

Everything here is sans-IO and fuzzed: :mod:`~crdtcache.wire._framing` cuts a byte
stream into length-prefixed frames, :mod:`~crdtcache.wire._codec` turns frame bodies
into validated messages, and :mod:`~crdtcache.wire._auth` is the ``secret=`` handshake
and frame sealing. The transport feeds them bytes read from its streams.
"""
