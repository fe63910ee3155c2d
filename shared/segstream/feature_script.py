"""The profile's Redis script: one atomic call per user and batch (dedup + apply).

``feature_store.FeatureStore`` sends it; the key layout, the exactly-once argument and the
interest state it keeps are described there. Kept apart because it is the longest piece
of the profile step and reads best on its own.
"""

# One call per user and batch. KEYS: features hash, dedup zset, titles zset, text string,
# interest zset, then the user's other keys (an applied event refreshes every key's TTL;
# key_ttl_s 0: none). ARGV: window_days, category_cap, bot_limit, max_titles,
# dedup_window_ms, dedup_max, key_ttl_s, then a JSON array of the user's events in order, each
# [watermark field, offset (-1: none), ts ms, minute, day, title ('' = none),
# [[field, sub, amount], ...], item id, interest weight], then the interest half-life (ms;
# 0: no decay) and item cap, then the events' 8-byte dedup digests concatenated in the
# same order (raw bytes: one string.sub per event, where hex in the JSON cost a decoding
# loop per event; one JSON argument is far cheaper to send than dozens of separate ones).
# Returns {one status letter per event (A applied,
# R redelivered, D duplicate id, B bot rate, O outside window), the feature hash and the
# titles (ZRANGE WITHSCORES), each flattened into one string joined by \31, the state
# version, the text}. The version (hash field ``_v``) counts the calls that applied an
# event: a text or RFM rendered from version v is written only while the hash is still at
# v (``WRITE_LUA``).
APPLY_LUA = r"""
local fkey, dkey, tkey, xkey, ikey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local win, catcap, botmax = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local maxtitles, dwin = tonumber(ARGV[4]), tonumber(ARGV[5])
local dmax, kttl = tonumber(ARGV[6]), tonumber(ARGV[7])
local events = cjson.decode(ARGV[8])
local hl, imax = tonumber(ARGV[9]), tonumber(ARGV[10])
local digests = ARGV[11]
local meta = redis.call('HMGET', fkey, '_dx', '_rm', '_rn', '_last', '_ia', '_v')
local anchor = tonumber(meta[5])
local oldanchor, rescale, iadds, interested = anchor, 1, {}, false
local dx = tonumber(meta[1]) or -1
local olddx = dx
local rm, rn = tonumber(meta[2]) or -1, tonumber(meta[3]) or 0
local last = tonumber(meta[4]) or -1
local version = tonumber(meta[6]) or 0
local cache, changed, wms, status, titles = {}, {}, {}, {}, {}
local newest, titled, deduped, active = -1, false, false, false
local dcount = redis.call('ZCARD', dkey)

local function bucket(field)
  local t = cache[field]
  if t == nil then
    t = {}
    local raw = redis.call('HGET', fkey, field)
    if raw then
      for k, v in string.gmatch(raw, '([^=;]+)=([^;]+)') do t[k] = tonumber(v) end
    end
    cache[field] = t
  end
  return t
end

for e, ev in ipairs(events) do
  local member = string.sub(digests, e * 8 - 7, e * 8)
  local wmf, off, ts = ev[1], ev[2], ev[3]
  local minute, day, title, adds = ev[4], ev[5], ev[6], ev[7]
  local wm = wms[wmf]
  if wm == nil then wm = tonumber(redis.call('HGET', fkey, wmf)) or -1 end
  if off >= 0 and off <= wm then
    status[e] = 'R'
  else
    if off >= 0 then wms[wmf] = off else wms[wmf] = wm end
    if redis.call('ZADD', dkey, 'NX', string.format('%d', ts), member) == 0 then
      status[e] = 'D'
    else
      deduped = true
      dcount = dcount + 1
      if dcount > dmax then  -- drop the oldest now: the set never outgrows its compact form
        redis.call('ZPOPMIN', dkey)
        dcount = dcount - 1
      end
      if ts > newest then newest = ts end
      if minute == rm then rn = rn + 1 elseif minute > rm then rm, rn = minute, 1 end
      if minute == rm and rn > botmax then
        status[e] = 'B'
      elseif dx >= 0 and day < dx - win + 1 then
        status[e] = 'O'
      else
        for _, add in ipairs(adds) do
          local field, sub = add[1], add[2]
          local t = bucket(field)
          if t[sub] == nil and string.sub(field, 1, 2) == 'k:' then
            local count = 0
            for _ in pairs(t) do count = count + 1 end
            if count >= catcap then sub = '~other' end
          end
          t[sub] = (t[sub] or 0) + add[3]
          changed[field] = true
        end
        if title ~= '' and maxtitles > 0 and (titles[title] or -1) < ts then
          titles[title] = ts
          titled = true
        end
        if ts > last then last = ts end
        if day > dx then dx = day end
        status[e] = 'A'
        active = true
        local w = ev[9]
        if w > 0 and imax > 0 then
          if anchor == nil then anchor = ts end
          local x = 0
          if hl > 0 then x = (ts - anchor) / hl end
          if x > 60 then  -- re-anchor at ts: every weight so far times 2^-x
            local f = 2 ^ (-x)
            rescale = rescale * f
            for item, aw in pairs(iadds) do iadds[item] = aw * f end
            anchor, x = ts, 0
          end
          iadds[ev[8]] = (iadds[ev[8]] or 0) + w * 2 ^ x
          interested = true
        end
      end
    end
  end
end

local oldest = -1  -- the window moved: days before it are dropped
if dx > olddx and olddx >= 0 then
  oldest = dx - win + 1
  for _, field in ipairs(redis.call('HKEYS', fkey)) do
    local d = tonumber(string.match(field, '^%a:(%d+)$'))
    if d and d < oldest then redis.call('HDEL', fkey, field) end
  end
end
local fields = {'_dx', string.format('%d', dx), '_rm', string.format('%d', rm),
                '_rn', string.format('%d', rn), '_last', string.format('%d', last)}
for field in pairs(changed) do  -- every changed bucket in the one HSET below
  if (tonumber(string.match(field, '^%a:(%d+)$')) or oldest) >= oldest then
    local t, keys, parts = cache[field], {}, {}
    for k in pairs(t) do keys[#keys + 1] = k end
    table.sort(keys)
    for j, k in ipairs(keys) do parts[j] = k .. '=' .. string.format('%d', t[k]) end
    fields[#fields + 1] = field
    fields[#fields + 1] = table.concat(parts, ';')
  end
end
for wmf, off in pairs(wms) do
  fields[#fields + 1] = wmf
  fields[#fields + 1] = string.format('%d', off)
end
if active then
  version = version + 1
  fields[#fields + 1] = '_v'
  fields[#fields + 1] = string.format('%d', version)
end
if interested then
  fields[#fields + 1] = '_ia'
  fields[#fields + 1] = string.format('%d', anchor)
end
redis.call('HSET', fkey, unpack(fields))
if kttl > 0 and not active then redis.call('EXPIRE', fkey, kttl) end
if interested then
  if rescale ~= 1 then
    local old = redis.call('ZRANGE', ikey, 0, -1, 'WITHSCORES')
    for j = 1, #old, 2 do
      local aw = tonumber(old[j + 1]) * rescale
      if aw > 0 then redis.call('ZADD', ikey, aw, old[j]) else redis.call('ZREM', ikey, old[j]) end
    end
  end
  -- one ZMSCORE and one ZADD instead of a ZINCRBY per item (the same double sums)
  local items, scores = {}, {}
  for item in pairs(iadds) do items[#items + 1] = item end
  local cur = redis.call('ZMSCORE', ikey, unpack(items))
  for j, item in ipairs(items) do
    scores[#scores + 1] = (tonumber(cur[j]) or 0) + iadds[item]
    scores[#scores + 1] = item
  end
  if redis.call('ZADD', ikey, unpack(scores)) > 0 then
    local over = redis.call('ZCARD', ikey) - imax
    if over > 0 then redis.call('ZPOPMIN', ikey, over) end
  end
end
if deduped then
  local ref = math.max(newest, last)
  redis.call('ZREMRANGEBYSCORE', dkey, '-inf', '(' .. string.format('%d', ref - dwin))
  redis.call('ZREMRANGEBYRANK', dkey, 0, -dmax - 1)
  if kttl > 0 and not active then redis.call('EXPIRE', dkey, kttl) end
end
if titled then
  local args = {}
  for title, ts in pairs(titles) do
    args[#args + 1] = string.format('%d', ts)
    args[#args + 1] = title
  end
  redis.call('ZADD', tkey, 'GT', unpack(args))
  redis.call('ZREMRANGEBYRANK', tkey, 0, -maxtitles - 1)
  if kttl > 0 and not active then redis.call('EXPIRE', tkey, kttl) end
end
if active and kttl > 0 then  -- an applied event: every key of the user lives on
  for j = 1, #KEYS do redis.call('EXPIRE', KEYS[j], kttl) end
end
return {table.concat(status), table.concat(redis.call('HGETALL', fkey), '\31'),
        table.concat(redis.call('ZRANGE', tkey, 0, -1, 'WITHSCORES'), '\31'),
        string.format('%d', version), redis.call('GET', xkey)}
"""

# What ingest derives from one user's state, written only if no later call changed the
# state since (a batch of the same user applied by another consumer after a rebalance, or
# by a zombie, must not be overwritten by this older rendering). KEYS: features hash, rfm
# hash, text string. ARGV: the state version the values were rendered from ('*': write
# unconditionally), key_ttl_s (0: none), the text ('' = unchanged: not written), then the
# RFM hash's field/value pairs (none: not written). Returns 1 if written, 0 if stale.
WRITE_LUA = r"""
local v = ARGV[1]
if v ~= '*' and (redis.call('HGET', KEYS[1], '_v') or '0') ~= v then return 0 end
local ttl = tonumber(ARGV[2])
if #ARGV > 3 then
  redis.call('HSET', KEYS[2], unpack(ARGV, 4))
  if ttl > 0 then redis.call('EXPIRE', KEYS[2], ttl) end
end
if ARGV[3] ~= '' then
  if ttl > 0 then redis.call('SET', KEYS[3], ARGV[3], 'EX', ttl)
  else redis.call('SET', KEYS[3], ARGV[3]) end
end
return 1
"""
