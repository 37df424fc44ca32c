//! Lua scripts: the multi-key updates that must be atomic (create-if-absent, replace-if-present,
//! touch, delete with mapping and event streams).
//!
//! Key layout (`P` = the store's prefix): `P session:ID` hash {rec: JSON record, last:
//! last_active_ms, up: upstream session id}; `P sessions` sorted set of ids (score 0, ordered by
//! id); `P upstream:UP` → id; `P streams:ID` set of stream names; `P events:ID:STREAM` Redis
//! Stream. Every key has a TTL (the idle TTL), refreshed together on create/update/touch.
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
redis.call('DEL', skey, KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
if exists == 1 then return 1 end
return 2
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{LIB}{body}"))
}

pub(super) static CREATE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(CREATE));
pub(super) static UPDATE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(UPDATE));
pub(super) static TOUCH_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(TOUCH));
pub(super) static DELETE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(DELETE));

/// Result codes of [`DELETE_SCRIPT`].
pub(super) const DELETED: i64 = 1;
pub(super) const ABSENT: i64 = 2;
