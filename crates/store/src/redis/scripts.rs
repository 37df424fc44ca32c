//! Lua scripts: the multi-key updates that must be atomic (create-if-absent, replace-if-present,
//! touch, delete with mapping and event streams).
//!
//! Key layout (`P` = the store's prefix): `P session:ID` hash {rec: JSON record, last:
//! last_active_ms, up: upstream session id}; `P sessions` sorted set of ids (score 0, ordered by
//! id); `P upstream:UP` → id; `P streams:ID` set of stream names; `P events:ID:STREAM` Redis
//! Stream; `P bytes:ID` payload bytes appended to the session's streams since its log was last
//! measured (never less than what they hold: it only gates the byte budget's walk). Every key
//! has a TTL (the idle TTL), refreshed together on create/update/touch.
//! Scripts build the companion key names from the prefix, so the store targets a standalone
//! Redis (not Cluster).

use redis::Script;
use std::sync::LazyLock;

/// Helpers prepended to every script.
const LIB: &str = r#"
local function unmap(prefix, id, up)
  local mk = prefix .. 'upstream:' .. up
  if redis.call('GET', mk) == id then redis.call('DEL', mk) end
end
local function refresh(prefix, id, ttl)
  local skey = prefix .. 'streams:' .. id
  redis.call('PEXPIRE', prefix .. 'bytes:' .. id, ttl)
  if redis.call('PEXPIRE', skey, ttl) == 1 then
    for _, s in ipairs(redis.call('SMEMBERS', skey)) do
      redis.call('PEXPIRE', prefix .. 'events:' .. id .. ':' .. s, ttl)
    end
  end
  redis.call('PEXPIRE', prefix .. 'sessions', ttl)
end
"#;

/// KEYS: session key, index. ARGV: prefix, id, ttl_ms, record JSON, last_active_ms,
/// has_upstream ('1'/'0'), upstream id. Returns 1 if created, 0 if the id exists.
const CREATE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'rec', ARGV[4], 'last', ARGV[5])
if ARGV[6] == '1' then
  redis.call('HSET', KEYS[1], 'up', ARGV[7])
  redis.call('SET', ARGV[1] .. 'upstream:' .. ARGV[7], ARGV[2], 'PX', ARGV[3])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], 0, ARGV[2])
refresh(ARGV[1], ARGV[2], ARGV[3])
return 1
"#;

/// Same KEYS/ARGV as [`CREATE`]. Returns 1 if replaced, 0 if the session does not exist.
const UPDATE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local old = redis.call('HGET', KEYS[1], 'up')
if old and (ARGV[6] ~= '1' or old ~= ARGV[7]) then unmap(ARGV[1], ARGV[2], old) end
redis.call('HSET', KEYS[1], 'rec', ARGV[4], 'last', ARGV[5])
if ARGV[6] == '1' then
  redis.call('HSET', KEYS[1], 'up', ARGV[7])
  redis.call('SET', ARGV[1] .. 'upstream:' .. ARGV[7], ARGV[2], 'PX', ARGV[3])
else
  redis.call('HDEL', KEYS[1], 'up')
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], 0, ARGV[2])
refresh(ARGV[1], ARGV[2], ARGV[3])
return 1
"#;

/// KEYS: none. ARGV: prefix, ttl_ms, then pairs of (id, last_active_ms). Returns how many
/// sessions existed (and were touched).
const TOUCH: &str = r#"
local n = 0
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local key = ARGV[1] .. 'session:' .. id
  if redis.call('EXISTS', key) == 1 then
    redis.call('HSET', key, 'last', ARGV[i + 1])
    redis.call('PEXPIRE', key, ARGV[2])
    local up = redis.call('HGET', key, 'up')
    if up then
      local mk = ARGV[1] .. 'upstream:' .. up
      if redis.call('GET', mk) == id then redis.call('PEXPIRE', mk, ARGV[2]) end
    end
    refresh(ARGV[1], id, ARGV[2])
    n = n + 1
  end
end
return n
"#;

/// KEYS: session key, index. ARGV: prefix, id, condition. Deletes the session, its mapping, its
/// event streams and its index entry. Condition: `''` none; `'absent'` only if the session key
/// is gone (pruning after a TTL expiry); a number: only if the session's last activity is below
/// it. Returns 1 if a session was deleted, 2 if there was no session (its leftovers were still
/// removed), 0 if the condition kept it.
const DELETE: &str = r#"
local exists = redis.call('EXISTS', KEYS[1])
if ARGV[3] == 'absent' then
  if exists == 1 then return 0 end
elseif ARGV[3] ~= '' and exists == 1 then
  local last = tonumber(redis.call('HGET', KEYS[1], 'last'))
  if last and last >= tonumber(ARGV[3]) then return 0 end
end
local up = redis.call('HGET', KEYS[1], 'up')
if up then unmap(ARGV[1], ARGV[2], up) end
local skey = ARGV[1] .. 'streams:' .. ARGV[2]
for _, s in ipairs(redis.call('SMEMBERS', skey)) do
  redis.call('DEL', ARGV[1] .. 'events:' .. ARGV[2] .. ':' .. s)
end
redis.call('DEL', skey, KEYS[1], ARGV[1] .. 'bytes:' .. ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[2])
if exists == 1 then return 1 end
return 2
"#;

/// KEYS: none. ARGV: prefix, id, max_bytes, page size. The session's byte budget: unless the
/// `bytes:` counter says the session may hold more than `max_bytes`, nothing is read. Otherwise
/// its streams are walked from the newest entry back (merged by entry id, a page at a time),
/// the kept payloads summed; the first entry that does not fit is dropped with everything older
/// (`XTRIM MINID` to the oldest kept entry of each stream, `MAXLEN 0` when none is kept, which
/// keeps the stream's last id so ids are never reused). The counter is then set to what is kept.
/// Returns how many entries were dropped.
const TRIM_BYTES: &str = r#"
local prefix, id = ARGV[1], ARGV[2]
local max, page = tonumber(ARGV[3]), tonumber(ARGV[4])
local bkey = prefix .. 'bytes:' .. id
if tonumber(redis.call('GET', bkey) or '0') <= max then return 0 end
local function key_of(e)
  local dash = string.find(e, '-', 1, true)
  return tonumber(string.sub(e, 1, dash - 1)), tonumber(string.sub(e, dash + 1))
end
local function size_of(entry)
  local f = entry[2]
  for i = 1, #f, 2 do
    if f[i] == 'data' then return #f[i + 1] end
  end
  return 0
end
local cursors = {}
for _, s in ipairs(redis.call('SMEMBERS', prefix .. 'streams:' .. id)) do
  table.insert(cursors, {key = prefix .. 'events:' .. id .. ':' .. s, buf = {}, pos = 1,
    upper = '+', done = false, kept = nil})
end
local function head(c)
  if c.pos > #c.buf then
    if c.done then return nil end
    c.buf = redis.call('XREVRANGE', c.key, c.upper, '-', 'COUNT', page)
    c.pos = 1
    if #c.buf < page then c.done = true end
    if #c.buf == 0 then return nil end
    c.upper = '(' .. c.buf[#c.buf][1]
  end
  return c.buf[c.pos]
end
local total = 0
while true do
  local best, bms, bseq = nil, 0, 0
  for _, c in ipairs(cursors) do
    local e = head(c)
    if e then
      local ms, seq = key_of(e[1])
      if best == nil or ms > bms or (ms == bms and seq > bseq) then
        best, bms, bseq = c, ms, seq
      end
    end
  end
  if best == nil then break end
  local e = head(best)
  local size = size_of(e)
  if total + size > max then break end
  total = total + size
  best.kept = e[1]
  best.pos = best.pos + 1
end
local dropped = 0
for _, c in ipairs(cursors) do
  if head(c) then
    if c.kept then
      dropped = dropped + redis.call('XTRIM', c.key, 'MINID', '=', c.kept)
    else
      dropped = dropped + redis.call('XTRIM', c.key, 'MAXLEN', '=', 0)
    end
  end
end
redis.call('SET', bkey, total, 'KEEPTTL')
return dropped
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{LIB}{body}"))
}

pub(super) static CREATE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(CREATE));
pub(super) static UPDATE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(UPDATE));
pub(super) static TOUCH_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(TOUCH));
pub(super) static DELETE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(DELETE));
pub(super) static TRIM_BYTES_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(TRIM_BYTES));

/// Result codes of [`DELETE_SCRIPT`].
pub(super) const DELETED: i64 = 1;
pub(super) const ABSENT: i64 = 2;
