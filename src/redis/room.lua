-- A papo room in Redis: every write to it, atomically.
--
-- KEYS[1] meta:    hash {seq = last number, epoch = the log's name,
--                  hist = the Redis history that last wrote it}
-- KEYS[2] log:     stream of entries {seq, kind, sender, text, ts, epoch}
-- KEYS[3] members: sorted set of "instance:id:name", scored by when the
--                  member's presence expires (ms)
-- ARGV[1] the operation: say | join | leave | tend
-- ARGV[2] entries the log keeps (MAXLEN ~), ARGV[3] the keys' TTL (ms),
-- ARGV[4] '1' when names are verified identities (one member per name),
-- ARGV[5], ARGV[6] the epoch and the highest number the calling instance
-- knows the log gave ('' when it knows none), ARGV[7], ARGV[8] the
-- primary's history (its replication id, and the one it was promoted from),
-- ARGV[9] which new histories keep the log ('p': a promotion, 'r': a
-- restart; see start_anew_if_new_history); the operation's own from ARGV[10]
--
-- Numbers are given here, with the append, so they are gapless and in one
-- order whichever instance appends. The clock is Redis's, for the same reason.

local meta, log, members = KEYS[1], KEYS[2], KEYS[3]
local op, maxlen, ttl, unique = ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1'
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

-- The log's epoch: a new one when the log is new (first use, expired, or
-- Redis lost it).
local known_epoch
local function epoch()
  if known_epoch then return known_epoch end
  local e = redis.call('HGET', meta, 'epoch')
  if not e then
    e = 'r' .. time[1] .. '.' .. time[2]
    redis.call('HSET', meta, 'epoch', e, 'hist', ARGV[7])
  end
  known_epoch = e
  return e
end

-- Starts the log anew: whoever resumes from before is told it is not whole.
local function start_anew()
  redis.call('DEL', log)
  redis.call('HSET', meta, 'epoch', 'r' .. time[1] .. '.' .. time[2], 'seq', 0)
end

-- A log with less than an instance saw given has lost its tail: Redis came
-- back with less than it acknowledged (a replica promoted before it had the
-- last writes, an older dump, an append-only file's lost second). Its
-- numbers must never be given again with other texts: the log starts anew,
-- under a new epoch, and whoever resumes from the old one is told the
-- replay is not whole. (Only an instance's word counts: a client's `since`
-- past the end is answered not whole, and changes nothing.)
local function start_anew_if_short(seen_epoch, seen_seq)
  if seen_epoch == '' or not seen_seq then return end
  if redis.call('HGET', meta, 'epoch') ~= seen_epoch then return end
  local seq = tonumber(redis.call('HGET', meta, 'seq')) or 0
  if seq < seen_seq then start_anew() end
end

-- A log last written by another history of Redis than the primary's now
-- may have lost what that history had last, and the instances that saw it
-- may not be the ones writing now (a SendMessage through an instance with
-- no member in the room). It is kept only when the change cannot have
-- dropped what members were shown: a promotion from the history that
-- wrote it when members are shown only what the replicas confirmed ('p');
-- a restart (a history promoted from none) when every write was on disk
-- before its answer ('r'); anything else (several changes while the room
-- was idle) when both hold. Otherwise the log starts anew.
local function start_anew_if_new_history(replid, promoted_from, keeps)
  if redis.call('EXISTS', meta) == 0 then return end
  local was = redis.call('HGET', meta, 'hist')
  if was == replid then return end
  if was then
    local p, r = string.find(keeps, 'p', 1, true), string.find(keeps, 'r', 1, true)
    local kept
    if was == promoted_from then
      kept = p
    elseif promoted_from == '' then
      kept = r
    else
      kept = p and r
    end
    if not kept then start_anew() end
  end
  redis.call('HSET', meta, 'hist', replid)
end
start_anew_if_new_history(ARGV[7], ARGV[8], ARGV[9])
start_anew_if_short(ARGV[5], tonumber(ARGV[6]))

-- Appends an entry (kind: 0 message, 1 join, 2 leave); returns {seq, id}.
local function append(kind, sender, text)
  local e = epoch()
  local seq = redis.call('HINCRBY', meta, 'seq', 1)
  local id = redis.call('XADD', log, 'MAXLEN', '~', maxlen, '*',
    'seq', seq, 'kind', kind, 'sender', sender, 'text', text, 'ts', now, 'epoch', e)
  return {seq, id}
end

local function keep_alive()
  redis.call('PEXPIRE', meta, ttl)
  redis.call('PEXPIRE', log, ttl)
  redis.call('PEXPIRE', members, ttl)
end

-- The name in a member's "instance:id:name".
local function name_of(member)
  local _, _, name = string.find(member, '^[^:]*:[^:]*:(.*)$')
  return name or ''
end

-- Whether a live member has `name`. With verified identities (tokens), a
-- name with several connections is one member: its JOIN is the first
-- connection's, its LEAVE the last's.
local function present(name)
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', members, now, '+inf')) do
    if name_of(member) == name then return true end
  end
  return false
end

-- Announces `name`'s leaving, unless (`unique`) another connection of it stays.
local function left(name, unique)
  if name ~= '' and not (unique and present(name)) then
    append(2, name, '')
  end
end

-- Members whose instance stopped renewing them leave, announced once: by
-- whichever instance removes them first.
local function reap(unique)
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', members, '-inf', '(' .. now)) do
    if redis.call('ZREM', members, member) == 1 then
      left(name_of(member), unique)
    end
  end
end

if op == 'say' then
  -- ARGV[10], ARGV[11]: a sender and its text; as many pairs as there are
  -- messages. Returns their numbers, then the log's epoch.
  local seqs = {}
  for i = 10, #ARGV - 1, 2 do
    table.insert(seqs, append(0, ARGV[i], ARGV[i + 1])[1])
  end
  table.insert(seqs, epoch())
  keep_alive()
  return seqs
elseif op == 'join' then
  -- ARGV[10] member ("instance:id"), ARGV[11] name, ARGV[12] presence TTL (ms),
  -- ARGV[13] since ('' for live only), ARGV[14] epoch, ARGV[15] most to
  -- replay, ARGV[16] most bytes to replay (what the joiner takes at once).
  -- Returns {seq of the JOIN (or of the next entry, for a nameless member
  -- or another connection of a member here), epoch, names present (once
  -- per connection), entries after since (newest first), id of the entry
  -- before the JOIN, 1 if the JOIN was announced, entries left out of the
  -- replay for its bytes}. The replay is read an entry at a time, newest
  -- first, and stops at its bytes: no run holds more than that.
  reap(unique)
  local name = ARGV[11]
  local announced = name ~= '' and not (unique and present(name))
  redis.call('ZADD', members, now + tonumber(ARGV[12]), ARGV[10] .. ':' .. name)
  local e = epoch()
  local seq, id
  if announced then
    local appended = append(1, name, '')
    seq, id = appended[1], appended[2]
  else
    seq = (tonumber(redis.call('HGET', meta, 'seq')) or 0) + 1
  end
  keep_alive()
  local names = {}
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', members, now, '+inf')) do
    local n = name_of(member)
    if n ~= '' then table.insert(names, n) end
  end
  local entries = {}
  local skipped = 0
  if ARGV[13] ~= '' then
    local since = tonumber(ARGV[13])
    if ARGV[14] ~= e and not (ARGV[14] == '' and since == 0) then since = 0 end
    local count = math.min(seq - 1 - since, tonumber(ARGV[15]))
    local budget = tonumber(ARGV[16])
    local upto = '+'
    if id then upto = '(' .. id end
    local bytes = 0
    while count > 0 do
      local page = redis.call('XREVRANGE', log, upto, '-', 'COUNT', 1)
      local entry = page[1]
      if not entry then break end
      local size = 0
      for _, v in ipairs(entry[2]) do size = size + #v end
      if bytes + size > budget then
        skipped = count
        break
      end
      bytes = bytes + size
      table.insert(entries, entry)
      count = count - 1
      upto = '(' .. entry[1]
    end
  end
  -- The entry before the JOIN: a reader that starts after it reads the JOIN.
  local before
  if id then
    before = redis.call('XREVRANGE', log, '(' .. id, '-', 'COUNT', 1)
  else
    before = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)
  end
  local last = '0-0'
  if before[1] then last = before[1][1] end
  local said = 0
  if announced then said = 1 end
  return {seq, e, names, entries, last, said, skipped}
elseif op == 'leave' then
  -- ARGV[10] member ("instance:id"), ARGV[11] name. Announced only by the
  -- first to remove it (the instance, or another's reaping).
  if redis.call('ZREM', members, ARGV[10] .. ':' .. ARGV[11]) == 1 then
    left(ARGV[11], unique)
  end
  return 0
elseif op == 'tend' then
  -- ARGV[10] presence TTL (ms), ARGV[11..] this instance's members here
  -- ("instance:id:name"): renewed, or put back (after Redis lost them, or
  -- after they were reaped while their instance stalled: their LEAVE was
  -- announced, so their coming back is announced too, unless, with
  -- verified names, another connection of the name stayed);
  -- then the expired are reaped, and the room kept alive while anyone is in it.
  -- A member late but not yet reaped is renewed quietly: it never left.
  local until_ms = now + tonumber(ARGV[10])
  for i = 11, #ARGV do
    local name = name_of(ARGV[i])
    local back = name ~= '' and not (unique and present(name))
    if redis.call('ZADD', members, until_ms, ARGV[i]) == 1 and back then
      append(1, name, '')
    end
  end
  reap(unique)
  keep_alive()
  return 0
end
return redis.error_reply('papo: unknown operation ' .. tostring(op))
