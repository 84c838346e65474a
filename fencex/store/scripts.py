"""The Lua scripts the Redis store runs in Redis (registered by ``RedisStore.connect()``)."""

# Add each event to its tenant's history once, however often it is delivered.
# KEYS: (de-duplication marker, tenant's history stream, marker to forget) per event; ARGV:
# maxlen, then each event. A retract forgets the marker of the event it withdraws (its third
# key; the event's own marker otherwise), so that event, brought back by a later late upload
# with the same id, is in the history again.
APPEND_EVENTS = """
local added = 0
for i = 1, #KEYS, 3 do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', 86400) then
    redis.call('XADD', KEYS[i + 1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[(i + 2) / 3 + 1])
    if KEYS[i + 2] ~= KEYS[i] then redis.call('DEL', KEYS[i + 2]) end
    added = added + 1
  end
end
return added
"""


# Save one batch's device states, positions and memberships in one atomic step.
# The client sends a single msgpack blob: packing a command of 100,000 arguments
# in redis-py's pure-Python encoder cost more than the rest of the batch.
# d[5] holds the saver's partition generations (key, gen, ...): if any stored one is newer,
# another worker owns the partition now and nothing is written ({-1}); else if any is missing
# or older than the saver's (only lost writes make it older: Redis restarted empty, a host
# crash took back the last second, a restore), nothing is written either and the saver claims
# its partitions again ({-2}): no other worker can own them, or it would have raised them.
# d[6] is the save's token: a save that ran already (its reply lost, the client sent it
# again) writes nothing twice ({0}): APPEND and HINCRBY are not idempotent.
# d[7] the tracks: {device id (the key is d[12] .. id), whole (or false), to append, anchor,
# ...}. A track is a list of byte segments read as their concatenation (appending to a string
# would let Redis grow its allocation ahead of its length, to twice it); a track written whole
# replaces the list first; appended to a key that was not there, the bytes are preceded by the
# magic of an orphan track (d[9]) and the anchor (d[13], then int64: the time the first appended fix is
# relative to; -1: none); a key of another type is no track (set by hand): deleted, not failing
# every save. Past 64 segments, a list is joined into one (compact, and its length known).
# Returns {states saved, then each track key joined at least d[10] bytes long and its length}.
# d[8] the grazing: hash key -> {field, ms, ...}, HINCRBY'd, the key kept d[11] seconds.
SAVE_BATCH = """
local d = cmsgpack.unpack(ARGV[1])
local gens = d[5]
local lost = false
for i = 1, #gens, 2 do
  local gen = tonumber(redis.call('GET', gens[i]) or '-1')
  if gen > gens[i + 1] then return {-1} end  -- a newer owner: fenced, whatever else was lost
  if gen < gens[i + 1] then lost = true end  -- gone or behind the saver's own claim
end
if lost then return {-2} end
if d[6] ~= '' and not redis.call('SET', d[6], '1', 'NX', 'EX', 3600) then return {0} end
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
  if z[1] == 1 then redis.call('ZADD', z[2], z[3], z[4])
  elseif z[1] == 2 then redis.call('ZADD', z[2], 'NX', z[3], z[4])
  else redis.call('ZREM', z[2], z[4]) end
end
for key, members in pairs(d[4]) do chunked('SADD', key, members, 1) end
local out = {#d[1] / 2}
local long = d[10]
local tracks = d[7]
for i = 1, #tracks, 4 do
  local key, whole, more = d[12] .. tracks[i], tracks[i + 1], tracks[i + 2]
  local n = 0
  if whole then
    redis.call('DEL', key)
    redis.call('RPUSH', key, whole)
    if #more > 0 then redis.call('RPUSH', key, more) end
  elseif #more > 0 then
    local segments = redis.pcall('RPUSH', key, more)
    if type(segments) == 'table' then  -- a key of another type (set by hand, an old format): as lost
      redis.call('DEL', key)
      segments = redis.call('RPUSH', key, more)
    end
    if segments == 1 then
      local at = tracks[i + 3]
      redis.call('LPUSH', key, at >= 0 and (d[9] .. d[13] .. struct.pack('<i8', at)) or d[9])
    elseif segments >= 64 then
      local all = table.concat(redis.call('LRANGE', key, 0, -1))
      redis.call('DEL', key)
      redis.call('RPUSH', key, all)
      n = #all
    end
  end
  if n >= long then
    out[#out + 1] = tracks[i]
    out[#out + 1] = n
  end
end
for key, flat in pairs(d[8]) do
  for i = 1, #flat, 2 do redis.call('HINCRBY', key, flat[i], flat[i + 1]) end
  redis.call('EXPIRE', key, d[11])
end
return out
"""
