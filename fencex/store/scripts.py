"""The Lua scripts the Redis store runs in Redis (registered by ``RedisStore.connect()``)."""

# Add each event to its tenant's history once, however often it is delivered.
# KEYS: (de-duplication marker, tenant's history stream) per event; ARGV: maxlen, then each event.
APPEND_EVENTS = """
local added = 0
for i = 1, #KEYS, 2 do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', 86400) then
    redis.call('XADD', KEYS[i + 1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[(i + 1) / 2 + 1])
    added = added + 1
  end
end
return added
"""


# Save one batch's device states, positions and memberships in one atomic step.
# The client sends a single msgpack blob: packing a command of 100,000 arguments
# in redis-py's pure-Python encoder cost more than the rest of the batch.
# d[5] holds the saver's partition generations (key, gen, ...): if any is no longer
# the stored one, another worker owns the partition now and nothing is written (-1).
SAVE_BATCH = """
local d = cmsgpack.unpack(ARGV[1])
local gens = d[5]
for i = 1, #gens, 2 do
  if tonumber(redis.call('GET', gens[i]) or '0') ~= gens[i + 1] then return -1 end
end
local function chunked(cmd, key, flat, width)
  local step = width * math.floor(6000 / width)
  for i = 1, #flat, step do
    if key then
      redis.call(cmd, key, unpack(flat, i, math.min(i + step - 1, #flat)))
    else
      redis.call(cmd, unpack(flat, i, math.min(i + step - 1, #flat)))
    end
  end
end
chunked('MSET', nil, d[1], 2)
for key, flat in pairs(d[2]) do chunked('GEOADD', key, flat, 3) end
for _, z in ipairs(d[3]) do
  if z[1] == 1 then redis.call('ZADD', z[2], z[3], z[4]) else redis.call('ZREM', z[2], z[4]) end
end
for key, members in pairs(d[4]) do chunked('SADD', key, members, 1) end
return #d[1] / 2
"""
