"""The Lua scripts behind `RedisChannel`: each state change that needs atomicity is one script call.

Layout of one channel (all keys share the `{name}` hash tag, so one script may touch them all):

- `lane:<p>`  list  the members of ready messages of priority `p`, oldest first.
- `lanes`     zset  the priorities that have a non-empty lane, scored `-p` (highest first).
- `delayed`   zset  members of messages not due yet, scored by due time (epoch seconds).
- `leases`    zset  members of leased messages, scored by lease expiry (epoch seconds).
- `wake`      list  at most one token, there while a waiting receiver should look again: pushed when
                    messages become ready or a delayed one arrives, taken by the receiver it wakes.
- `bodies`    hash  each message's entry in a claim's reply, by member.

A member (see `_codec`) is a few dozen bytes: the count of earlier deliveries (a big-endian uint32),
the priority and a unique id. Scripts move members between the lists and sorted sets and leave the
entries in `bodies`, read once by the claim that leases them and deleted by the ack. A lease that
runs out (or a nack) puts the message back under a new member with its count raised, its entry
rewritten for it and moved to that field; an ack, nack or extension from a consumer whose lease
ran out names the old member, so it changes nothing: the message went to someone else with a
higher count.

A batch sent goes to its script as one argument per list, *framed* as a msgpack array of raw
strings, which `cmsgpack.unpack` splits in C; a claimed batch comes back as one msgpack array the
client decodes in one call. Acks and lease extensions need no script: they are plain commands
(`HDEL` on the entries then `ZREM` on the leases; `ZADD XX` on the leases), with each member an
argument of its own, written by the channel as it came (see `_codec`); a nack takes its members the
same way.
"""

from __future__ import annotations

__all__ = ["CLAIM", "DEPTH", "NACK", "PURGE", "SEND"]

_HELPERS = """
local function priority_of(member)
  -- after the 4-byte count, up to the '|' before the id
  return string.sub(member, 5, string.find(member, '|', 5, true) - 1)
end

local function wake_one(wake_key)
  -- One token, however many things changed: the receiver it wakes claims, and wakes the next one
  -- while ready messages are left over.
  if redis.call('LLEN', wake_key) == 0 then
    redis.call('RPUSH', wake_key, '1')
  end
end

local function make_ready(lane_prefix, lanes_key, member)
  local priority = priority_of(member)
  redis.call('RPUSH', lane_prefix .. priority, member)
  redis.call('ZADD', lanes_key, -tonumber(priority), priority)
end

-- The message's member with its count raised, its entry rewritten for it and moved there;
-- nil when it has none (acked already).
local function counted_again(bodies_key, member)
  local stored = redis.call('HGET', bodies_key, member)
  if not stored then
    return nil
  end
  local count = struct.pack('>I4', struct.unpack('>I4', member) + 1)
  local again = count .. string.sub(member, 5)
  local receipt = '$' .. #again .. '\\r\\n' .. again .. '\\r\\n'
  -- what follows the old receipt: the headers and the body
  local payload = string.sub(stored, 8 + string.byte(stored, 8) + 1)
  redis.call('HDEL', bodies_key, member)
  redis.call('HSET', bodies_key, again, string.sub(stored, 1, 2) .. count .. string.sub(stored, 7, 7)
    .. string.char(#receipt) .. receipt .. payload)
  return again
end

-- Lua's unpack() is bounded by the C stack (about 8000 values); bigger batches go in slices
-- (of an even size, so that score-member and field-value pairs stay together).
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

#: KEYS: delayed, leases, lanes, wake, bodies.
#: ARGV: lane prefix, framed (member, entry) pairs, framed (due time, member) pairs for the
#: delayed set ('' for none), then per lane: priority, framed members.
SEND = (
    _HELPERS
    + """
call_in_slices('HSET', KEYS[5], cmsgpack.unpack(ARGV[2]))
if ARGV[3] ~= '' then
  call_in_slices('ZADD', KEYS[1], cmsgpack.unpack(ARGV[3]))
end
for i = 4, #ARGV, 2 do
  local priority = ARGV[i]
  call_in_slices('RPUSH', ARGV[1] .. priority, cmsgpack.unpack(ARGV[i + 1]))
  redis.call('ZADD', KEYS[3], -tonumber(priority), priority)
end
-- A delayed message wakes a receiver too: it may be due before what the receiver waits for.
wake_one(KEYS[4])
return 1
"""
)

#: KEYS: delayed, leases, lanes, wake, bodies.
#: ARGV: lane prefix, now, lease expiry, max messages.
#: Returns the claimed messages as one msgpack array of [count, receipt, headers, body], or, when
#: nothing is ready, a one-item array reply holding the time the next delayed message or lease is
#: due ('' when there is none).
CLAIM = (
    _HELPERS
    + """
local lane_prefix, now, lease_until = ARGV[1], ARGV[2], ARGV[3]
local wanted = tonumber(ARGV[4])

-- Due delayed messages and expired leases become ready first, oldest first, so that a claim
-- sees everything that is due before it picks by priority.
for _, key in ipairs({KEYS[1], KEYS[2]}) do
  while true do
    local due = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, 1000)
    if #due == 0 then break end
    call_in_slices('ZREM', key, due)
    for _, member in ipairs(due) do
      if key == KEYS[2] then
        member = counted_again(KEYS[5], member)
      end
      if member then
        make_ready(lane_prefix, KEYS[3], member)
      end
    end
    if #due < 1000 then break end
  end
end

local claimed = {}
for _, priority in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  local lane = lane_prefix .. priority
  local popped = redis.call('LPOP', lane, wanted)
  if not popped or redis.call('EXISTS', lane) == 0 then
    redis.call('ZREM', KEYS[3], priority)
  end
  if popped then
    for _, member in ipairs(popped) do
      claimed[#claimed + 1] = member
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

local replies, leases = {}, {}
for first = 1, #claimed, 4000 do
  local last = math.min(first + 3999, #claimed)
  local stored = redis.call('HMGET', KEYS[5], unpack(claimed, first, last))
  for i = first, last do
    local reply = stored[i - first + 1]
    if reply then
      replies[#replies + 1] = reply
      leases[#leases + 1] = lease_until
      leases[#leases + 1] = claimed[i]
    end
  end
end

if #leases == 0 then
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
return struct.pack('>BI4', 221, #replies) .. table.concat(replies)
"""
)

#: KEYS: delayed, leases, lanes, wake, bodies. ARGV: lane prefix, due time ('' for now), then the
#: members, one argument each. Returns how many were still leased (and are now waiting again).
NACK = (
    _HELPERS
    + """
local returned, delayed = 0, {}
local due = ARGV[2]
for i = 3, #ARGV do
  local member = ARGV[i]
  if redis.call('ZREM', KEYS[2], member) == 1 then
    returned = returned + 1
    member = counted_again(KEYS[5], member)
    if member and due == '' then
      make_ready(ARGV[1], KEYS[3], member)
    elseif member then
      delayed[#delayed + 1] = due
      delayed[#delayed + 1] = member
    end
  end
end
if #delayed > 0 then
  call_in_slices('ZADD', KEYS[1], delayed)
end
if returned > 0 then
  wake_one(KEYS[4])
end
return returned
"""
)

#: KEYS: delayed, leases, lanes, wake, bodies. ARGV: lane prefix.
DEPTH = """
local total = redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2])
for _, priority in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  total = total + redis.call('LLEN', ARGV[1] .. priority)
end
return total
"""

#: KEYS: delayed, leases, lanes, wake, bodies. ARGV: lane prefix.
PURGE = """
for _, priority in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  redis.call('DEL', ARGV[1] .. priority)
end
return redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
"""
