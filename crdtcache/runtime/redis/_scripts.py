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

__all__ = [
    "ADD",
    "CLEAN",
    "CLEANED",
    "HEARTBEAT",
    "INCR",
    "PATTERN",
    "STAT",
    "TOUCH",
    "WRITE",
    "Script",
    "sharded",
]


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


# ------------------------------------------------------- conditional writes
# add, incr and touch: Redis decides, so they are atomic across instances. Each runs
# on one record and announces itself like a WRITE of one write. Shared helpers: a
# record's live value (it has one, it has not expired by the server's clock, and the
# newest pattern tombstone the caller knows to match the key -- its stamp text in
# ``cover``, "" for none -- does not cover it), the patterns' version check (any
# tombstone the caller has not loaded could cover the record: it must reload first),
# msgpack bin framing of a value blob, and 64-bit integers as two 32-bit halves (Lua
# numbers are doubles: exact to 2^53 only).
_CONDITIONAL: Final = (
    _PRELUDE
    + """
local function live_value(rec, cover, now)
  local r = redis.call('HMGET', rec, 's', 'v', 'x')
  local s, v, x = r[1], r[2], r[3]
  if not s or not v then return s, nil, x end
  if x and tonumber(x) * 1000 <= now then return s, nil, x end
  if cover ~= '' and not lt(cover, s) then return s, nil, x end
  return s, v, x
end
local function unknown_patterns(patterns, known)
  local version = redis.call('HGET', patterns, '#') or '0'
  if redis.call('HEXISTS', patterns, '') == 1 and version ~= known then return version end
  return nil
end
local function bin(blob)
  local n = #blob
  if n < 256 then return struct.pack('>BB', 0xc4, n) .. blob end
  if n < 65536 then return struct.pack('>BI2', 0xc5, n) .. blob end
  return struct.pack('>BI4', 0xc6, n) .. blob
end
"""
)

#: Write one value only if its record holds no live value (SET NX inside the LWW rule).
#: KEYS: patterns hash, record. ARGV: the patterns' version the caller holds, max drift
#: ms, channel, message head (a writes message's header and first three items), stamp,
#: value blob, expiry ("" none), PEXPIREAT ms ("" none), the write's part of the message,
#: cover. Returns {1, receivers} written | {2, stamp} a live value is there | {0, stamp}
#: a newer write is there (dead: retry with a newer stamp) | {-1, version} reload the
#: patterns first | {-2, server ms} the stamp is too far ahead of the server's clock.
ADD: Final = Script(
    "add",
    _CONDITIONAL
    + """
local known, drift, channel, head = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local stamp, blob, x, at, part, cover = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local now = server_ms()
if too_far_ahead(stamp, drift, now) then return {-2, now} end
local unknown = unknown_patterns(KEYS[1], known)
if unknown then return {-1, unknown} end
local current, value = live_value(KEYS[2], cover, now)
if value then return {2, current} end
if current and not lt(current, stamp) then return {0, current} end
redis.call('DEL', KEYS[2])
if x == '' then
  redis.call('HSET', KEYS[2], 's', stamp, 'v', blob)
else
  redis.call('HSET', KEYS[2], 's', stamp, 'v', blob, 'x', x)
end
if at ~= '' then redis.call('PEXPIREAT', KEYS[2], at) end
return {1, redis.call('PUBLISH', channel, head .. '\\145' .. part)}
""",
)

#: Add a 64-bit delta to the int a record holds, keeping its expiry (INCRBY with the
#: record's stamp rule); a record without a live value starts from 0 with the given
#: expiry. KEYS: patterns hash, record. ARGV: version, drift, channel, head, stamp,
#: delta's high 32 bits (signed), its low 32 bits, expiry if new ("" none), PEXPIREAT
#: if new ("" none), the part's start (a 6-array's header, key, ts, origin), cover.
#: Returns {1, value blob, expiry ("" none), receivers} | {0, stamp} | {-1, version} |
#: {-2, ms} as ADD | {-3, ""} the value is not an integer | {-4, ""} it would overflow.
INCR: Final = Script(
    "incr",
    _CONDITIONAL
    + """
local function int_of(b)
  local t, n = string.byte(b, 1), #b
  local v
  if n == 1 and t <= 0x7f then v = t
  elseif n == 1 and t >= 0xe0 then v = t - 256
  elseif n == 2 and t == 0xcc then v = string.byte(b, 2)
  elseif n == 3 and t == 0xcd then v = struct.unpack('>I2', b, 2)
  elseif n == 5 and t == 0xce then v = struct.unpack('>I4', b, 2)
  elseif n == 2 and t == 0xd0 then v = struct.unpack('>i1', b, 2)
  elseif n == 3 and t == 0xd1 then v = struct.unpack('>i2', b, 2)
  elseif n == 5 and t == 0xd2 then v = struct.unpack('>i4', b, 2)
  elseif n == 9 and (t == 0xd3 or t == 0xcf) then
    local h = struct.unpack('>i4', b, 2)
    if t == 0xcf and h < 0 then return nil end
    return h, (struct.unpack('>I4', b, 6))
  else return nil end
  if v < 0 then return -1, v + 4294967296 end
  return 0, v
end
local known, drift, channel, head = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local stamp, hi, lo, x_new, at_new = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local prefix, cover = ARGV[10], ARGV[11]
local now = server_ms()
if too_far_ahead(stamp, drift, now) then return {-2, now} end
local unknown = unknown_patterns(KEYS[1], known)
if unknown then return {-1, unknown} end
local current, value, x = live_value(KEYS[2], cover, now)
if current and not lt(current, stamp) then return {0, current} end
local h, l = 0, 0
if value then
  h, l = int_of(value)
  if not h then return {-3, ''} end
end
l = l + tonumber(lo)
h = h + tonumber(hi)
if l >= 4294967296 then l = l - 4294967296; h = h + 1 end
if h > 2147483647 or h < -2147483648 then return {-4, ''} end
local blob = struct.pack('>Bi4I4', 0xd3, h, l)
if value then
  redis.call('HSET', KEYS[2], 's', stamp, 'v', blob)
else
  redis.call('DEL', KEYS[2])
  x = nil
  if x_new == '' then
    redis.call('HSET', KEYS[2], 's', stamp, 'v', blob)
  else
    x = x_new
    redis.call('HSET', KEYS[2], 's', stamp, 'v', blob, 'x', x)
  end
  if at_new ~= '' then redis.call('PEXPIREAT', KEYS[2], at_new) end
end
local expires = x and struct.pack('>Bd', 0xcb, tonumber(x)) or '\\192'
local message = head .. '\\145' .. prefix .. expires .. '\\194' .. bin(blob)
return {1, blob, x or '', redis.call('PUBLISH', channel, message)}
""",
)

#: Give a record's live value a new expiry and stamp, not rewriting the value. KEYS:
#: patterns hash, record. ARGV: version, drift, channel, head, stamp, expiry ("" none),
#: PEXPIREAT ("" none), the part but its last item (the value, inline if at most
#: ``inline`` bytes), cover, inline. Returns {1, receivers, the stamp it replaced} |
#: {3, ""} no live value | {0, stamp} | {-1, version} | {-2, ms} as ADD.
TOUCH: Final = Script(
    "touch",
    _CONDITIONAL
    + """
local known, drift, channel, head = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local stamp, x, at, prefix, cover = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local now = server_ms()
if too_far_ahead(stamp, drift, now) then return {-2, now} end
local unknown = unknown_patterns(KEYS[1], known)
if unknown then return {-1, unknown} end
local current, value = live_value(KEYS[2], cover, now)
if not value then return {3, ''} end
if not lt(current, stamp) then return {0, current} end
redis.call('HSET', KEYS[2], 's', stamp)
if x == '' then
  redis.call('HDEL', KEYS[2], 'x')
  redis.call('PERSIST', KEYS[2])
else
  redis.call('HSET', KEYS[2], 'x', x)
  redis.call('PEXPIREAT', KEYS[2], at)
end
local inline = '\\192'
if #value <= tonumber(ARGV[10]) then inline = bin(value) end
return {1, redis.call('PUBLISH', channel, head .. '\\145' .. prefix .. inline), current}
""",
)
