-- A GCRA budget. KEYS[1]: its theoretical arrival time (µs, Redis's clock).
-- ARGV: interval (µs), burst, events asked for. Grants as many as the budget
-- holds and spends only those; returns {granted, µs until one more}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local asked = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if tat < now then tat = now end
local room = math.floor((now + burst * interval - tat) / interval)
local granted = math.min(asked, math.max(room, 0))
if granted > 0 then
  tat = tat + granted * interval
  -- Forgotten once full again: a full budget and a missing key are alike.
  redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
end
local wait = 0
if granted < asked then wait = tat + interval - burst * interval - now end
return {granted, wait}
