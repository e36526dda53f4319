"""The Lua scripts behind `RedisChannel`: every state change is one atomic script call per batch.

Layout of one channel (all keys share the `{name}` hash tag, so one script may touch them all):

- `payloads`  hash  message id -> packed envelope; one entry per message until it is acked.
- `lane:<p>`  list  ready messages of priority `p`, oldest first.
- `lanes`     zset  the priorities that have a non-empty lane, scored `-p` (highest first).
- `delayed`   zset  messages not due yet, scored by due time (epoch seconds).
- `leases`    zset  leased messages, scored by lease expiry (epoch seconds).
- `seq`       string  counter that numbers messages.

A message id is `<priority>/<sequence>`, so that a message finds its lane again without a lookup.
Lanes and the delayed set hold *elements*: the id of a message never delivered, or `<id>#<n>` for
one already delivered `n` times. A lease member is always `<id>#<n>` for the n-th delivery: it is
the receipt, so an ack, nack or extension from a consumer whose lease already ran out (and whose
message went to someone else) finds no member and changes nothing.
"""

from __future__ import annotations

__all__ = ["ACK", "CLAIM", "NACK", "PURGE", "SEND"]

# Lua's unpack() is bounded by the C stack (about 8000 values); bigger batches go in slices.
_HELPERS = """
local function call_in_slices(command, key, values)
  local total = #values
  for first = 1, total, 4000 do
    redis.call(command, key, unpack(values, first, math.min(first + 3999, total)))
  end
end

local function make_ready(lane_prefix, lanes_key, element)
  local priority = string.match(element, '^(-?%d+)/')
  redis.call('RPUSH', lane_prefix .. priority, element)
  redis.call('ZADD', lanes_key, -tonumber(priority), priority)
end
"""

#: KEYS: payloads, delayed, lanes, seq.
#: ARGV: lane prefix, wake-up topic, then per message: priority, due time ('' if ready), payload.
SEND = (
    _HELPERS
    + """
local count = (#ARGV - 2) / 3
local sequence = redis.call('INCRBY', KEYS[4], count) - count
local fields, delayed, lanes, priorities = {}, {}, {}, {}
for i = 3, #ARGV, 3 do
  sequence = sequence + 1
  local priority = ARGV[i]
  local id = priority .. '/' .. string.format('%d', sequence)
  fields[#fields + 1] = id
  fields[#fields + 1] = ARGV[i + 2]
  local due = ARGV[i + 1]
  if due == '' then
    local lane = lanes[priority]
    if lane == nil then
      lane = {}
      lanes[priority] = lane
      priorities[#priorities + 1] = priority
    end
    lane[#lane + 1] = id
  else
    delayed[#delayed + 1] = due
    delayed[#delayed + 1] = id
  end
end
call_in_slices('HSET', KEYS[1], fields)
if #delayed > 0 then
  call_in_slices('ZADD', KEYS[2], delayed)
end
for _, priority in ipairs(priorities) do
  call_in_slices('RPUSH', ARGV[1] .. priority, lanes[priority])
  redis.call('ZADD', KEYS[3], -tonumber(priority), priority)
end
redis.call('PUBLISH', ARGV[2], '')
return count
"""
)

#: KEYS: payloads, delayed, leases, lanes.
#: ARGV: lane prefix, wake-up channel, now, lease expiry, max messages.
#: Returns a flat array (lease member, payload, delivery count)... or, when nothing is due, the time
#: of the next due message or lease expiry as a string ('' when there is none).
CLAIM = (
    _HELPERS
    + """
local lane_prefix, now, lease_until = ARGV[1], ARGV[3], ARGV[4]
local wanted = tonumber(ARGV[5])

-- Due delayed messages and expired leases become ready first, oldest first, so that a claim
-- always sees everything that is due before it picks by priority.
local released = 0
for _, key in ipairs({KEYS[2], KEYS[3]}) do
  while true do
    local due = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, 1000)
    if #due == 0 then break end
    call_in_slices('ZREM', key, due)
    for _, element in ipairs(due) do
      make_ready(lane_prefix, KEYS[4], element)
    end
    released = released + #due
    if #due < 1000 then break end
  end
end

local ids, members, counts = {}, {}, {}
local priorities = redis.call('ZRANGE', KEYS[4], 0, -1)
for _, priority in ipairs(priorities) do
  local popped = redis.call('LPOP', lane_prefix .. priority, wanted)
  if not popped or #popped < wanted then
    redis.call('ZREM', KEYS[4], priority)
  end
  if popped then
    for _, element in ipairs(popped) do
      local hash = string.find(element, '#', 1, true)
      local id, count = element, 1
      if hash then
        id = string.sub(element, 1, hash - 1)
        count = tonumber(string.sub(element, hash + 1)) + 1
      end
      ids[#ids + 1] = id
      members[#members + 1] = id .. '#' .. count
      counts[#counts + 1] = count
    end
    wanted = wanted - #popped
    if wanted <= 0 then break end
  end
end

if released > 0 and redis.call('EXISTS', KEYS[4]) == 1 then
  -- Messages this claim made ready are left over: wake the other consumers for them.
  redis.call('PUBLISH', ARGV[2], '')
end

if #ids == 0 then
  local next_due = nil
  for _, key in ipairs({KEYS[2], KEYS[3]}) do
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if first[2] and (next_due == nil or tonumber(first[2]) < tonumber(next_due)) then
      next_due = first[2]
    end
  end
  return next_due or ''
end

local reply, leases = {}, {}
for first = 1, #ids, 4000 do
  local last = math.min(first + 3999, #ids)
  local payloads = redis.call('HMGET', KEYS[1], unpack(ids, first, last))
  for i = first, last do
    local payload = payloads[i - first + 1]
    -- A payload can only be missing if someone deleted keys by hand; such a message is dropped.
    if payload then
      reply[#reply + 1] = members[i]
      reply[#reply + 1] = payload
      reply[#reply + 1] = counts[i]
      leases[#leases + 1] = lease_until
      leases[#leases + 1] = members[i]
    end
  end
end
if #leases > 0 then
  call_in_slices('ZADD', KEYS[3], leases)
end
return reply
"""
)

#: KEYS: payloads, leases. ARGV: lease members.
#: Returns how many were still leased (and are now gone).
ACK = (
    _HELPERS
    + """
local members, ids = {}, {}
for first = 1, #ARGV, 4000 do
  local last = math.min(first + 3999, #ARGV)
  local scores = redis.call('ZMSCORE', KEYS[2], unpack(ARGV, first, last))
  for i = first, last do
    if scores[i - first + 1] then
      members[#members + 1] = ARGV[i]
      ids[#ids + 1] = string.match(ARGV[i], '^(.*)#')
    end
  end
end
if #ids > 0 then
  call_in_slices('ZREM', KEYS[2], members)
  call_in_slices('HDEL', KEYS[1], ids)
end
return #ids
"""
)

#: KEYS: delayed, leases, lanes. ARGV: lane prefix, wake-up channel, due time ('' for now), members.
#: Returns how many were still leased (and are now waiting again).
NACK = (
    _HELPERS
    + """
local members, delayed = {}, {}
local due = ARGV[3]
for i = 4, #ARGV do
  if redis.call('ZSCORE', KEYS[2], ARGV[i]) then
    members[#members + 1] = ARGV[i]
    if due == '' then
      make_ready(ARGV[1], KEYS[3], ARGV[i])
    else
      delayed[#delayed + 1] = due
      delayed[#delayed + 1] = ARGV[i]
    end
  end
end
if #members > 0 then
  call_in_slices('ZREM', KEYS[2], members)
  if #delayed > 0 then
    call_in_slices('ZADD', KEYS[1], delayed)
  end
  redis.call('PUBLISH', ARGV[2], '')
end
return #members
"""
)

#: KEYS: payloads, delayed, leases, lanes. ARGV: lane prefix.
PURGE = """
for _, priority in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
  redis.call('DEL', ARGV[1] .. priority)
end
return redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
"""
