-- evercache version guard: one atomic write of one key and its metadata.
-- KEYS[1] value key, KEYS[2] metadata hash (same cluster slot).
-- ARGV: 1 action ("put" | "del"), 2 kind ("text" | "hash" | "set" | "zset"),
--       3 position ("" = unknown), 4 kind of write: "0" a change, "1" a snapshot read
--       (applies to unversioned keys and where it is newer than every version the key
--       has; keeps the change version, records its own as `snap`), "cas:N" a repair
--       (applies only while the metadata's write count is still N, "none" = no
--       metadata; keeps the version),
--       5 committed_at_ms, 6 read_at_ms, 7 plugin, 8 pipeline,
--       9 ttl_ms ("0" = none), 10 tombstone_ttl_ms, 11.. the value's members.
-- Returns 0 when stale (nothing written), 1 when stored, 2 when deleted.
local key, meta = KEYS[1], KEYS[2]
local position = ARGV[3]
local stored = redis.call('HGET', meta, 'pos')

local committed_at_ms = ARGV[5]
local snap = nil
if ARGV[4] == '1' then
  -- A snapshot read repairs what a re-snapshot finds changed (changes missed
  -- while a connector was away), so it applies when newer than every version
  -- the key has. It never becomes the change version: a transaction open
  -- across the snapshot is streamed after it with changes ranked below it.
  if redis.call('EXISTS', meta) == 1 then
    local newest = stored or ''
    local seen = redis.call('HGET', meta, 'snap') or ''
    if seen > newest then newest = seen end
    if position == '' or newest == '' or position <= newest then return 0 end
    committed_at_ms = redis.call('HGET', meta, 'committed_at_ms') or '0'
  else
    committed_at_ms = '0'
  end
  snap = position
  position = stored or ''
elseif string.sub(ARGV[4], 1, 4) == 'cas:' then
  -- A fill or resync read the database after observing the write count: any
  -- write since then is at least as new, and any later change outranks the
  -- unchanged version, so the repair never wins against a change.
  local writes = 'none'
  if redis.call('EXISTS', meta) == 1 then writes = redis.call('HGET', meta, 'writes') or '0' end
  if writes ~= string.sub(ARGV[4], 5) then return 0 end
  position = stored or ''
  committed_at_ms = redis.call('HGET', meta, 'committed_at_ms') or '0'
elseif position ~= '' and stored and stored ~= '' and position <= stored then
  return 0
end
-- A change without a position still applies, but never moves the version back.
if position == '' and stored then position = stored end

local function fields(deleted)
  redis.call('HSET', meta, 'pos', position, 'committed_at_ms', committed_at_ms, 'read_at_ms', ARGV[6],
    'plugin', ARGV[7], 'pipeline', ARGV[8], 'deleted', deleted)
  if snap then redis.call('HSET', meta, 'snap', snap) end
  redis.call('HINCRBY', meta, 'writes', 1)
end

if ARGV[1] == 'del' then
  redis.call('DEL', key)
  fields('1')
  redis.call('PEXPIRE', meta, ARGV[10])
  return 2
end

local kind = ARGV[2]
if kind == 'text' then
  redis.call('SET', key, ARGV[11])
else
  redis.call('DEL', key)
  local command = ({hash = 'HSET', set = 'SADD', zset = 'ZADD'})[kind]
  -- unpack() is bounded by Lua's C stack, so large values go in slices.
  local step = 4000
  for first = 11, #ARGV, step do
    redis.call(command, key, unpack(ARGV, first, math.min(first + step - 1, #ARGV)))
  end
end
fields('0')
local ttl = tonumber(ARGV[9])
if ttl > 0 then
  redis.call('PEXPIRE', key, ttl)
  redis.call('PEXPIRE', meta, ttl + tonumber(ARGV[10]))
else
  redis.call('PERSIST', meta)
end
return 1
