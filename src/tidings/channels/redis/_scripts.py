"""The Lua scripts behind `RedisChannel`: each state change that needs atomicity is one script call.

Layout of one channel (all keys share the `{name}` hash tag, so one script may touch them all):

- `lane:<p>`  list  ready messages of priority `p`, oldest first.
- `lanes`     zset  the priorities that have a non-empty lane, scored `-p` (highest first).
- `delayed`   zset  messages not due yet, scored by due time (epoch seconds).
- `leases`    zset  leased messages, scored by lease expiry (epoch seconds).
- `wake`      list  at most one token, there while a waiting receiver should look again: pushed when
                    messages become ready or a delayed one arrives, taken by the receiver it wakes.

A message is stored as one self-contained *element* (see `_codec`), a msgpack array whose first field
is a fixed-width count of earlier deliveries and whose second is the priority, so that a script can
read the priority and raise the count without decoding the rest. The element itself is the lease
member and the receipt: a claim moves it unchanged from its lane into `leases`, an ack removes it
from `leases` (a plain ZREM), and a lease that runs out (or a nack) puts it back with its count
raised. An ack, nack or extension from a consumer whose lease already ran out finds no member, so it
changes nothing: the message went to someone else with a higher count.

A batch sent goes to its script as one argument, *framed* as a msgpack array of raw strings, which
`cmsgpack.unpack` splits in C; a claimed batch comes back as a msgpack array header followed by the
elements, which the client decodes in one call. Acks and lease extensions need no script: they are
plain `ZREM` and `ZADD XX` commands on the leases, with each element an argument of its own,
written by the channel as it came (see `_codec`); a nack takes its elements the same way. Moving an
element between Redis and Lua costs the server about a microsecond, so only what needs atomicity
goes through Lua.
"""

from __future__ import annotations

__all__ = ["CLAIM", "DEPTH", "NACK", "PURGE", "SEND"]

_HELPERS = """
local function priority_of(element)
  -- byte 7 is a msgpack fixstr header (0xa0 + length) before the priority's digits
  return string.sub(element, 8, 7 + string.byte(element, 7) - 160)
end

local function wake_one(wake_key)
  -- One token, however many things changed: the receiver it wakes claims, and wakes the next one
  -- while ready messages are left over.
  if redis.call('LLEN', wake_key) == 0 then
    redis.call('RPUSH', wake_key, '1')
  end
end

local function make_ready(lane_prefix, lanes_key, element)
  local priority = priority_of(element)
  redis.call('RPUSH', lane_prefix .. priority, element)
  redis.call('ZADD', lanes_key, -tonumber(priority), priority)
end

local function delivered_once_more(element)
  -- bytes 3-6 are the big-endian uint32 count of earlier deliveries
  local count = struct.unpack('>I4', element, 3)
  return string.sub(element, 1, 2) .. struct.pack('>I4', count + 1) .. string.sub(element, 7)
end

-- Lua's unpack() is bounded by the C stack (about 8000 values); bigger batches go in slices
-- (of an even size, so that score-member pairs stay together).
local function call_in_slices(command, key, values, option)
  local total, done = #values, 0
  for first = 1, total, 4000 do
    local last = math.min(first + 3999, total)
    if option then
      done = done + redis.call(command, key, option, unpack(values, first, last))
    else
      done = done + redis.call(command, key, unpack(values, first, last))
    end
  end
  return done
end
"""

#: KEYS: delayed, leases, lanes, wake.
#: ARGV: lane prefix, framed (due time, element) pairs for the delayed set ('' for none), then per
#: lane: priority, framed elements.
SEND = (
    _HELPERS
    + """
if ARGV[2] ~= '' then
  call_in_slices('ZADD', KEYS[1], cmsgpack.unpack(ARGV[2]))
end
for i = 3, #ARGV, 2 do
  local priority = ARGV[i]
  call_in_slices('RPUSH', ARGV[1] .. priority, cmsgpack.unpack(ARGV[i + 1]))
  redis.call('ZADD', KEYS[3], -tonumber(priority), priority)
end
-- A delayed message wakes a receiver too: it may be due before what the receiver waits for.
wake_one(KEYS[4])
return 1
"""
)

#: KEYS: delayed, leases, lanes, wake.
#: ARGV: lane prefix, now, lease expiry, max messages.
#: Returns the claimed elements as one msgpack array, or, when nothing is ready, a one-item array
#: reply holding the time the next delayed message or lease is due ('' when there is none).
CLAIM = (
    _HELPERS
    + """
local lane_prefix, now, lease_until = ARGV[1], ARGV[2], ARGV[3]
local wanted = tonumber(ARGV[4])

-- Due delayed messages and expired leases become ready first, oldest first, so that a claim
-- sees everything that is due before it picks by priority.
local released = 0
for _, key in ipairs({KEYS[1], KEYS[2]}) do
  while true do
    local due = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, 1000)
    if #due == 0 then break end
    call_in_slices('ZREM', key, due)
    for _, element in ipairs(due) do
      if key == KEYS[2] then
        element = delivered_once_more(element)
      end
      make_ready(lane_prefix, KEYS[3], element)
    end
    released = released + #due
    if #due < 1000 then break end
  end
end

local claimed, leases = {}, {}
for _, priority in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  local lane = lane_prefix .. priority
  local popped = redis.call('LPOP', lane, wanted)
  if not popped or redis.call('EXISTS', lane) == 0 then
    redis.call('ZREM', KEYS[3], priority)
  end
  if popped then
    for _, element in ipairs(popped) do
      claimed[#claimed + 1] = element
      leases[#leases + 1] = lease_until
      leases[#leases + 1] = element
    end
    wanted = wanted - #popped
    if wanted <= 0 then break end
  end
end

if redis.call('EXISTS', KEYS[3]) == 1 then
  -- Ready messages are left over: wake another receiver for them.
  wake_one(KEYS[4])
else
  redis.call('DEL', KEYS[4])
end

if #claimed == 0 then
  local next_due = nil
  for _, key in ipairs({KEYS[1], KEYS[2]}) do
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if first[2] and (next_due == nil or tonumber(first[2]) < tonumber(next_due)) then
      next_due = first[2]
    end
  end
  return {next_due or ''}
end

call_in_slices('ZADD', KEYS[2], leases)
-- 0xdd: msgpack array with a 32-bit length
return struct.pack('>BI4', 221, #claimed) .. table.concat(claimed)
"""
)

#: KEYS: delayed, leases, lanes, wake. ARGV: lane prefix, due time ('' for now), then the elements,
#: one argument each. Returns how many were still leased (and are now waiting again).
NACK = (
    _HELPERS
    + """
local members, delayed = {}, {}
local due = ARGV[2]
for i = 3, #ARGV do
  local element = ARGV[i]
  if redis.call('ZREM', KEYS[2], element) == 1 then
    members[#members + 1] = element
    element = delivered_once_more(element)
    if due == '' then
      make_ready(ARGV[1], KEYS[3], element)
    else
      delayed[#delayed + 1] = due
      delayed[#delayed + 1] = element
    end
  end
end
if #delayed > 0 then
  call_in_slices('ZADD', KEYS[1], delayed)
end
if #members > 0 then
  wake_one(KEYS[4])
end
return #members
"""
)

#: KEYS: delayed, leases, lanes, wake. ARGV: lane prefix.
DEPTH = """
local total = redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2])
for _, priority in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  total = total + redis.call('LLEN', ARGV[1] .. priority)
end
return total
"""

#: KEYS: delayed, leases, lanes, wake. ARGV: lane prefix.
PURGE = """
for _, priority in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  redis.call('DEL', ARGV[1] .. priority)
end
return redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
"""
