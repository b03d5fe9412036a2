-- Shared by the presence scripts (prepended to each).
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function live_fields(conns, replicas)
  local now = now_ms()
  local raw = redis.call('HGETALL', conns)
  local alive, live = {}, {}
  for i = 1, #raw, 2 do
    local field, count = raw[i], tonumber(raw[i + 1])
    local replica = string.match(field, '^([^|]*)|')
    local ok = alive[replica]
    if ok == nil then
      local until_ms = redis.call('ZSCORE', replicas, replica)
      ok = until_ms ~= false and tonumber(until_ms) > now
      alive[replica] = ok
    end
    if ok and count > 0 then
      table.insert(live, {field, count})
    else
      redis.call('HDEL', conns, field)
    end
  end
  return live
end
local function total(live)
  local n = 0
  for _, f in ipairs(live) do n = n + f[2] end
  return n
end
-- The user's sighting {addr = "{ip} {port}", seen = ms, until_ms = lease end},
-- or nil.
local function sighting(sightings, user)
  local v = redis.call('HGET', sightings, user)
  if not v then return nil end
  local addr, seen, until_ms = string.match(v, '^(%S+ %S+) (%S+) (%S+)$')
  return {addr = addr, seen = seen, until_ms = tonumber(until_ms)}
end
-- Records a sighting, and its lease in the online set.
local function put(sightings, online, user, addr, seen, until_ms)
  until_ms = string.format('%d', until_ms)
  redis.call('HSET', sightings, user, addr .. ' ' .. seen .. ' ' .. until_ms)
  redis.call('ZADD', online, until_ms, user)
end
-- Records that the user was seen, where it has a sighting.
local function seen(sightings, user, at_ms)
  local s = sighting(sightings, user)
  if s then
    redis.call('HSET', sightings, user, s.addr .. ' ' .. at_ms .. ' ' .. string.format('%d', s.until_ms))
  end
end
