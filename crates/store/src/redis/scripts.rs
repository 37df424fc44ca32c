//! Lua scripts: the updates of one session that must be atomic (create-if-absent,
//! replace-if-present, touch, delete with its event streams, the byte budget, the
//! compare-and-set of a record that claims its ownership), and the small
//! conditional writes of the shared keys.
//!
//! Key layout (`P` = the store's prefix, `T` = the session's hash tag: `{ID}`, the id with `%`,
//! `{` and `}` percent-escaped so the tag ends where the id does):
//!
//! | key | type | what |
//! |---|---|---|
//! | `P session:T` | hash | `rec`: the record's JSON; `last`: last activity (ms); `up`: the upstream session id |
//! | `P streams:T` | set | names of the session's event streams |
//! | `P events:T:STREAM` | stream | one event stream (entry ids are the event ids) |
//! | `P bytes:T` | string | payload bytes appended since the log was last measured (never less than it holds: it only gates the byte budget's walk) |
//! | `P sessions` | sorted set | every session id (score 0, ordered by id): listings |
//! | `P upstream:UP` | string | the session id whose upstream session id is `UP` |
//! | `P docs:NS` | hash | the documents of namespace `NS` (no TTL) |
//!
//! A session's own keys share the hash tag, so on Redis Cluster they live in one hash slot and
//! every script here touches one slot: the session scripts take the session's keys as `KEYS`
//! and reach its streams through `ARGV[1]` (`P events:T:`, the same tag); the mapping script
//! touches its one key. The index and the mapping live in other slots and are written by the
//! store after the session's script, not inside it (see the store's docs for the order that
//! keeps them consistent). Every session key carries the idle TTL, refreshed together on
//! create/update/touch.

use redis::Script;
use std::sync::LazyLock;

/// Refreshes the TTL of a session's companion keys (`KEYS[2]` streams, `KEYS[3]` bytes, and each
/// stream `ARGV[1] .. name`).
const LIB: &str = r#"
local function refresh(ttl)
  redis.call('PEXPIRE', KEYS[3], ttl)
  if redis.call('PEXPIRE', KEYS[2], ttl) == 1 then
    for _, s in ipairs(redis.call('SMEMBERS', KEYS[2])) do
      redis.call('PEXPIRE', ARGV[1] .. s, ttl)
    end
  end
end
"#;

/// KEYS: session, streams, bytes. ARGV: events prefix, ttl_ms, record JSON, last_active_ms,
/// has_upstream ('1'/'0'), upstream id. Returns `{1, 0, ''}` if created, `{0, 0, ''}` if the
/// id exists (the reply has the shape of [`UPDATE`]'s).
const CREATE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, 0, ''} end
redis.call('HSET', KEYS[1], 'rec', ARGV[3], 'last', ARGV[4])
if ARGV[5] == '1' then redis.call('HSET', KEYS[1], 'up', ARGV[6]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
refresh(ARGV[2])
return {1, 0, ''}
"#;

/// Same KEYS/ARGV as [`CREATE`]. Returns `{0, 0, ''}` if the session does not exist, else
/// `{1, had_upstream, old upstream id}` (the caller drops the old mapping).
const UPDATE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0, ''} end
local old = redis.call('HGET', KEYS[1], 'up')
redis.call('HSET', KEYS[1], 'rec', ARGV[3], 'last', ARGV[4])
if ARGV[5] == '1' then
  redis.call('HSET', KEYS[1], 'up', ARGV[6])
else
  redis.call('HDEL', KEYS[1], 'up')
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
refresh(ARGV[2])
if old then return {1, 1, old} end
return {1, 0, ''}
"#;

/// KEYS: session, streams, bytes. ARGV: events prefix, ttl_ms, last_active_ms. Returns
/// `{0, 0, ''}` if the session does not exist, else `{1, has_upstream, upstream id}` (the
/// caller refreshes the mapping).
const TOUCH: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0, ''} end
redis.call('HSET', KEYS[1], 'last', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
refresh(ARGV[2])
local up = redis.call('HGET', KEYS[1], 'up')
if up then return {1, 1, up} end
return {1, 0, ''}
"#;

/// KEYS: session, streams, bytes. ARGV: events prefix, condition. Deletes the session and its
/// event streams. Condition: `''` none; `'absent'` only if the session key is gone (pruning
/// after a TTL expiry); a number: only if the session's last activity is below it. Returns
/// `{code, had_upstream, upstream id}`, code 1 if a session was deleted, 2 if there was none
/// (its leftovers were still removed), 0 if the condition kept it.
const DELETE: &str = r#"
local exists = redis.call('EXISTS', KEYS[1])
if ARGV[2] == 'absent' then
  if exists == 1 then return {0, 0, ''} end
elseif ARGV[2] ~= '' and exists == 1 then
  local last = tonumber(redis.call('HGET', KEYS[1], 'last'))
  if last and last >= tonumber(ARGV[2]) then return {0, 0, ''} end
end
local up = redis.call('HGET', KEYS[1], 'up')
for _, s in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  redis.call('DEL', ARGV[1] .. s)
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
local code = 2
if exists == 1 then code = 1 end
if up then return {code, 1, up} end
return {code, 0, ''}
"#;

/// KEYS: session. ARGV: the record's JSON as last read, the record's new JSON. Replaces the
/// record only if it is still exactly what was read (a compare-and-set of the whole record, so
/// a check made on what was read — whose owner it names — holds when it is written). Returns
/// 1 if replaced, 0 if the session does not exist, 2 if the record has changed since.
const SWAP: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'rec')
if not cur then return 0 end
if cur ~= ARGV[1] then return 2 end
redis.call('HSET', KEYS[1], 'rec', ARGV[2])
return 1
"#;

/// KEYS: an upstream mapping. ARGV: session id. Deletes the mapping if it still names that
/// session (another session may have taken the upstream id since). Returns 1 if deleted.
const UNMAP: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// KEYS: one event stream. ARGV: max age (ms). Drops the entries older than that by the
/// server's own clock (entry ids carry it). Returns how many were dropped.
const TRIM_AGE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local min = now - tonumber(ARGV[1])
if min < 0 then min = 0 end
return redis.call('XTRIM', KEYS[1], 'MINID', '=', string.format('%.0f', min))
"#;

/// KEYS: bytes, streams. ARGV: events prefix, max_bytes, page size. The session's byte budget:
/// unless the bytes counter says the session may hold more than `max_bytes`, nothing is read.
/// Otherwise its streams are walked from the newest entry back (merged by entry id, a page at
/// a time), the kept payloads summed; the first entry that does not fit is dropped with
/// everything older (`XTRIM MINID` to the oldest kept entry of each stream, `MAXLEN 0` when
/// none is kept, which keeps the stream's last id so ids are never reused). The counter is
/// then set to what is kept. Returns how many entries were dropped.
const TRIM_BYTES: &str = r#"
local max, page = tonumber(ARGV[2]), tonumber(ARGV[3])
if tonumber(redis.call('GET', KEYS[1]) or '0') <= max then return 0 end
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
for _, s in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  table.insert(cursors, {key = ARGV[1] .. s, buf = {}, pos = 1,
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
redis.call('SET', KEYS[1], total, 'KEEPTTL')
return dropped
"#;

fn session_script(body: &str) -> Script {
    Script::new(&format!("{LIB}{body}"))
}

pub(super) static CREATE_SCRIPT: LazyLock<Script> = LazyLock::new(|| session_script(CREATE));
pub(super) static UPDATE_SCRIPT: LazyLock<Script> = LazyLock::new(|| session_script(UPDATE));
pub(super) static TOUCH_SCRIPT: LazyLock<Script> = LazyLock::new(|| session_script(TOUCH));
pub(super) static DELETE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(DELETE));
pub(super) static SWAP_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(SWAP));
pub(super) static UNMAP_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(UNMAP));
pub(super) static TRIM_AGE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(TRIM_AGE));
pub(super) static TRIM_BYTES_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(TRIM_BYTES));

/// Result codes of [`SWAP_SCRIPT`].
pub(super) const SWAPPED: i64 = 1;
pub(super) const CHANGED: i64 = 2;

/// Result codes of [`DELETE_SCRIPT`].
pub(super) const KEPT: i64 = 0;
pub(super) const DELETED: i64 = 1;
pub(super) const ABSENT: i64 = 2;
