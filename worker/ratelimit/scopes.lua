--[[ Mark one rate-limiter scope as used in the index of scopes (what `buttoncast limits` lists).

Kept out of gcra.lua on purpose: the index is one key for every scope, so on Redis Cluster it lives
in another slot than a scope's {tag}ged keys, and one script may only touch keys of one slot.

KEYS[1] scopes index  zset  scope -> last use (unix seconds)
ARGV[1] now or "" (= the server's TIME), ARGV[2] scope, ARGV[3] SCOPES_TTL_S: older entries drop out
]]

if redis.replicate_commands then pcall(redis.replicate_commands) end  -- TIME before writes on Redis < 5

local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1e6
end
local ttl = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('EXPIRE', KEYS[1], ttl)
return 1
