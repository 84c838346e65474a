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


# A worker's save is one call of SAVE_PART per partition (the slot {p<n>}), then, once every one of
# them is done, one call of SAVE_FARM per farm group (the slot {g<k>}): see fencex.store.devices.
# Each call gets a single msgpack blob: packing a command of 100,000 arguments in redis-py's
# pure-Python encoder cost more than the rest of the batch. KEYS[1] is the call's token key: it names
# the slot, so that a cluster client sends the call to the node that holds it; every key the script
# touches is in that slot.

# The partition's part of a save: device states, tracks and the devices first seen on the partition.
# d[1] the saver's generation of the partition (key, gen): if the stored one is newer, another worker
# owns the partition now and nothing is written ({-1}); if it is missing or older than the saver's
# (only lost writes make it older: Redis restarted empty, a host crash took back the last second, a
# restore), nothing is written either and the saver claims its partitions again ({-2}): no other
# worker can own it, or it would have raised it. An empty list: no check (a save by hand).
# KEYS[1] is the call's token: a call that ran already (its reply lost, the client sent it again)
# writes nothing twice ({0}): APPEND is not idempotent.
# d[2] states {key, JSON, ...}; d[3] the partition's set of devices and the new ones {key, {id, ...}}
# or {}; d[4] the tracks: {device id (the key is d[5] .. id), whole (or false), to append, anchor,
# ...}. A track is a list of byte segments read as their concatenation (appending to a string
# would let Redis grow its allocation ahead of its length, to twice it); a track written whole
# replaces the list first; appended to a key that was not there, the bytes are preceded by the
# magic of an orphan track (d[6]) and the anchor (d[8], then int64: the time the first appended fix is
# relative to; -1: none); a key of another type is no track (set by hand): deleted, not failing
# every save. Past 64 segments, a list is joined into one (compact, and its length known).
# Returns {states saved, then each track key joined at least d[7] bytes long and its length}.
_PART_BODY = """
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
local function save_part(d, out)
  chunked('MSET', nil, d[2], 2)
  if #d[3] > 0 then chunked('SADD', d[3][1], d[3][2], 1) end
  local long = d[7]
  local tracks = d[4]
  for i = 1, #tracks, 4 do
    local key, whole, more = d[5] .. tracks[i], tracks[i + 1], tracks[i + 2]
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
        redis.call('LPUSH', key, at >= 0 and (d[6] .. d[8] .. struct.pack('<i8', at)) or d[6])
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
  return out
end
"""
# On a cluster, KEYS[2] is a second key of the slot (so that Redis refuses the call, TRYAGAIN, while the
# slot moves between nodes, instead of running it on the importing node: fencex.store.base.step_keys),
# or the partition's outbox (a hash in its slot, fencex.store.outbox): then, with the states, in the same
# atomic call, the entry ARGV[2] is filed there under the save's token ARGV[3]: the farm steps this save
# still owes, which the partition's next owner replays if the saver dies before them.
SAVE_PART = (
    _PART_BODY
    + """
local d = cmsgpack.unpack(ARGV[1])
local gens = d[1]
if #gens > 0 then
  local gen = tonumber(redis.call('GET', gens[1]) or '-1')
  if gen > gens[2] then return {-1} end  -- a newer owner: fenced
  if gen < gens[2] then return {-2} end  -- gone or behind the saver's own claim: lost writes
end
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', 3600) then return {0} end
if ARGV[2] then redis.call('HSET', KEYS[2], ARGV[3], ARGV[2]) end  -- KEYS[2] alone: only the slot's second name
return save_part(d, {#d[2] / 2})
"""
)


# The farms' part of a save, for the farms of one group: positions, fence memberships and alert
# lists, grazing. KEYS[1] the call's token (as SAVE_PART's: HINCRBY is not idempotent; {0} when it
# ran already, else {1}). d[1] GEO sets {key -> {lon, lat, id, ...}}; d[2] membership and alert-list
# rows in order {op (1 ZADD, 2 ZADD NX, 0 ZREM), key, score, device}; d[3] the grazing: hash key ->
# {field, ms, ...}, HINCRBY'd, the key kept d[4] seconds.
_FARM_BODY = """
local function save_farm(d)
  for key, flat in pairs(d[1]) do
    for i = 1, #flat, 5997 do redis.call('GEOADD', key, unpack(flat, i, math.min(i + 5996, #flat))) end
  end
  for _, z in ipairs(d[2]) do
    if z[1] == 1 then redis.call('ZADD', z[2], z[3], z[4])
    elseif z[1] == 2 then redis.call('ZADD', z[2], 'NX', z[3], z[4])
    else redis.call('ZREM', z[2], z[4]) end
  end
  for key, flat in pairs(d[3]) do
    for i = 1, #flat, 2 do redis.call('HINCRBY', key, flat[i], flat[i + 1]) end
    redis.call('EXPIRE', key, d[4])
  end
end
"""
SAVE_FARM = (
    _FARM_BODY
    + """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', 3600) then return {0} end
save_farm(cmsgpack.unpack(ARGV[1]))
return {1}
"""
)


# On one Redis (no slots) the whole save is one call, atomic as one script is: ARGV[1] the packed save
# (fencex.store.save: {generations {{key, gen}, ...}, where-pointers {hash key -> {id, partition, ...}},
# the partitions' calls {{token key, SAVE_PART's blob}, ...}, the farms' calls {{token key, SAVE_FARM's
# blob}, ...}}). The generations are checked once, up front ({-1} a newer owner of any, else {-2} any gone
# or behind the saver's: nothing written); the first call's token makes a call sent again write nothing
# twice ({0}). Then the pointers, each partition's step and each farm's step, as the cluster's calls do.
# Returns {1, then each track key joined at least the save's long bytes long and its length, ...}.
SAVE_ALL = (
    _PART_BODY
    + _FARM_BODY
    + """
local s = cmsgpack.unpack(ARGV[1])
local gens, pointers, parts, farms = s[1], s[2], s[3], s[4]
local stored = {}
for i, g in ipairs(gens) do
  stored[i] = tonumber(redis.call('GET', g[1]) or '-1')
  if stored[i] > g[2] then return {-1} end  -- a newer owner of any partition: fenced
end
for i, g in ipairs(gens) do
  if stored[i] < g[2] then return {-2} end  -- gone or behind the saver's own claim: lost writes
end
local first = parts[1] or farms[1]
if first and not redis.call('SET', first[1], '1', 'NX', 'EX', 3600) then return {0} end
for key, flat in pairs(pointers) do chunked('HSET', key, flat, 2) end
local out = {1}
for _, call in ipairs(parts) do save_part(cmsgpack.unpack(call[2]), out) end
for _, call in ipairs(farms) do save_farm(cmsgpack.unpack(call[2])) end
return out
"""
)
