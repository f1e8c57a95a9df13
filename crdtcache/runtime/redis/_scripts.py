"""The Lua scripts of redis mode: every change to the shared tier is one of them.

Each script runs atomically in Redis, so a record's value, stamp and expiry and the
invalidation announcing them are written together or not at all. Stamps travel as
*stamp text*: the packed HLC ``ts`` as 16 lowercase hex digits followed by the origin
node id. Compared byte by byte, stamp texts order exactly like ``(ts, origin)`` tuples
(fixed-width hex orders like the number; UTF-8 bytes order like code points), which
is the order every replica uses. Lua's own ``<`` on strings goes through ``strcoll``
and so depends on the server's locale: the scripts compare with ``lt`` instead.
Numbers stay below 2^53 (the milliseconds of a stamp are its first 12 hex digits), so
Lua's doubles hold them exactly.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Final

__all__ = ["CLEAN", "CLEANED", "HEARTBEAT", "PATTERN", "STAT", "WRITE", "Script", "sharded"]


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script and its SHA1 (what EVALSHA names it by)."""

    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


# Byte-wise "a < b" (see the module doc for why not Lua's "<"), and the server's
# clock in milliseconds: stamps are checked against it, not against the writer's.
_PRELUDE: Final = """
local function lt(a, b)
  if a == b then return false end
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function too_far_ahead(stamp, drift_ms, now)
  return tonumber(string.sub(stamp, 1, 12), 16) - now > tonumber(drift_ms)
end
"""

#: A batch of writes (values or tombstones), each last-writer-wins by stamp, announced
#: together in one message. KEYS: patterns hash, then one record per write. ARGV:
#: the version of the pattern tombstones the writer holds all of, max drift ms, channel, the
#: message's head (msgpack: a 4-array's header and its first three items), then the
#: writes, one msgpack array (of str only: Redis's cmsgpack reads no bin type) of six
#: per write: stamp, value blob, "1" for a tombstone, expiry ("" none), PEXPIREAT ms
#: ("" none), the write's part of the message (a msgpack item). (Six arguments per
#: write cost the client more than the script: packing one is C work on both sides.)
#: Returns one {code, detail} per write, then the number of receivers: {1, 0} applied |
#: {0, current stamp} an equal or newer write is there | {-1, version} a pattern
#: tombstone the writer does not hold may cover the write (the versions differ and
#: the newest tombstone is not older than the write): it must load the patterns and
#: decide | {-2, server ms} the stamp is further ahead of the server's
#: clock than the drift allowed. The message lists the applied writes only.
WRITE: Final = Script(
    "write",
    _PRELUDE
    + """
local known, drift, channel, head = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local writes = cmsgpack.unpack(ARGV[5])
local now = server_ms()
local newest = redis.call('HGET', KEYS[1], '')
local version = redis.call('HGET', KEYS[1], '#') or '0'
local unknown = newest and version ~= known
local out, applied = {}, {}
for i = 2, #KEYS do
  local w, rec = writes[i - 1], KEYS[i]
  local s = w[1]
  local current = redis.call('HGET', rec, 's')
  if too_far_ahead(s, drift, now) then
    out[i - 1] = {-2, now}
  elseif current and not lt(current, s) then
    out[i - 1] = {0, current}
  elseif unknown and not lt(newest, s) then
    out[i - 1] = {-1, version}
  else
    if current then redis.call('DEL', rec) end  -- its fields and expiry go
    if w[3] == '1' then
      redis.call('HSET', rec, 's', s)
    elseif w[4] == '' then
      redis.call('HSET', rec, 's', s, 'v', w[2])
    else
      redis.call('HSET', rec, 's', s, 'v', w[2], 'x', w[4])
    end
    if w[5] ~= '' then redis.call('PEXPIREAT', rec, w[5]) end
    applied[#applied + 1] = w[6]
    out[i - 1] = {1, 0}
  end
end
local receivers = 0
local n = #applied
if n > 0 then
  local array = n < 16 and string.char(0x90 + n) or struct.pack('>BI2', 0xdc, n)
  receivers = redis.call('PUBLISH', channel, head .. array .. table.concat(applied))
end
out[#out + 1] = receivers
return out
""",
)

#: A pattern tombstone ("every key matching the glob stamped at or before S is gone").
#: Each one recorded raises the patterns' version ("#"), which the message carries.
#: KEYS: patterns hash. ARGV: glob, stamp, max drift ms, channel, message head
#: (msgpack: a 7-array's header and its first six items), horizon stamp (clean
#: tombstones older than it are collected). Returns {1, receivers, version} |
#: {0, current} (an equal or newer tombstone of the same glob is there) | {-2, ms}.
PATTERN: Final = Script(
    "pattern",
    _PRELUDE
    + """
local now = server_ms()
if too_far_ahead(ARGV[2], ARGV[3], now) then return {-2, now} end
local field = 'p:' .. ARGV[1]
local current = redis.call('HGET', KEYS[1], field)
if current and not lt(current, ARGV[2]) then return {0, current} end
redis.call('HSET', KEYS[1], field, ARGV[2])
local version = redis.call('HINCRBY', KEYS[1], '#', 1)
local newest = redis.call('HGET', KEYS[1], '')
if not newest or lt(newest, ARGV[2]) then redis.call('HSET', KEYS[1], '', ARGV[2]) end
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local f, v = all[i], all[i + 1]
  if string.sub(f, 1, 2) == 'p:' and lt(v, ARGV[6]) then
    local c = 'c:' .. string.sub(f, 3)
    local cleaned = redis.call('HGET', KEYS[1], c)
    if cleaned and not lt(cleaned, v) then redis.call('HDEL', KEYS[1], f, c) end
  end
end
local message = ARGV[5] .. struct.pack('>BI4', 0xce, version)
return {1, redis.call('PUBLISH', ARGV[4], message), version}
""",
)

#: Delete the records a pattern tombstone covers. KEYS: records (already matched
#: against the glob by the caller). ARGV: the tombstone's stamp. Returns how many went.
CLEAN: Final = Script(
    "clean",
    _PRELUDE
    + """
local n = 0
for _, k in ipairs(KEYS) do
  local s = redis.call('HGET', k, 's')
  if s and not lt(ARGV[1], s) then
    redis.call('DEL', k)
    n = n + 1
  end
end
return n
""",
)

#: Record that a pattern tombstone's records are gone (it may then be collected).
#: KEYS: patterns hash. ARGV: glob, stamp.
CLEANED: Final = Script(
    "cleaned",
    _PRELUDE
    + """
local c = 'c:' .. ARGV[1]
local cleaned = redis.call('HGET', KEYS[1], c)
local live = redis.call('HEXISTS', KEYS[1], 'p:' .. ARGV[1]) == 1
if live and (not cleaned or lt(cleaned, ARGV[2])) then redis.call('HSET', KEYS[1], c, ARGV[2]) end
return 1
""",
)

#: Stamp, expiry and "holds a value" of each record, without the values.
#: KEYS: records. Returns one {stamp, expiry, 0 | 1} per key (nil fields when absent).
STAT: Final = Script(
    "stat",
    """
local out = {}
for i, k in ipairs(KEYS) do
  local r = redis.call('HMGET', k, 's', 'x')
  out[i] = {r[1], r[2], redis.call('HEXISTS', k, 'v')}
end
return out
""",
)

#: Renew (or with ARGV[4] == "1", remove) an instance's heartbeat.
#: KEYS: instance key, instances zset, patterns hash. ARGV: node id, info, ttl ms,
#: leave flag. Returns {live node ids, the patterns' version or nil, server ms, each
#: live one's heartbeat expiry in server ms}.
HEARTBEAT: Final = Script(
    "heartbeat",
    _PRELUDE
    + """
local now = server_ms()
if ARGV[4] == '1' then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  return {{}, false, now}
end
local ttl = tonumber(ARGV[3])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
local listed, members, expiries = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES'), {}, {}
for i = 1, #listed, 2 do
  members[#members + 1] = listed[i]
  expiries[#expiries + 1] = listed[i + 1]
end
return {members, redis.call('HGET', KEYS[3], '#'), now, expiries}
""",
)


def sharded(script: Script) -> Script:
    """``script`` announcing with ``SPUBLISH`` (Redis Cluster's sharded pub/sub).

    In a cluster every key and channel of one cache cluster carries the hash tag
    ``{C}``, so a script's channel lies in the slot of its keys and ``SPUBLISH``
    reaches exactly the subscribers of that shard (classic ``PUBLISH`` would be
    broadcast to every node of the Redis Cluster). The same script otherwise: a
    script without ``PUBLISH`` comes back as it is.
    """
    source = script.source.replace("redis.call('PUBLISH',", "redis.call('SPUBLISH',")
    return script if source == script.source else Script(script.name, source)
