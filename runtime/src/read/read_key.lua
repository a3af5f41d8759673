-- evercache read path: a key's value, metadata and TTL in one atomic read.
-- KEYS[1] the key, KEYS[2] its metadata hash (same cluster slot).
-- Returns {type, value (false when none), metadata field/value pairs, pttl}.
local kind = redis.call('TYPE', KEYS[1])['ok']
local value = false
if kind == 'string' then
  value = redis.call('GET', KEYS[1])
elseif kind == 'hash' then
  value = redis.call('HGETALL', KEYS[1])
elseif kind == 'set' then
  value = redis.call('SMEMBERS', KEYS[1])
elseif kind == 'zset' then
  value = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
elseif kind == 'list' then
  value = redis.call('LRANGE', KEYS[1], 0, -1)
end
return {kind, value, redis.call('HGETALL', KEYS[2]), redis.call('PTTL', KEYS[1])}
