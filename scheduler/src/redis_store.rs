//! The Redis store: shared state for several scheduler replicas.
//!
//! Keys (all under the `berth:` prefix, so one Redis can be inspected by hand):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `berth:hosts` | hash | host id → last [`HostReport`] without its ready slots (JSON) |
//! | `berth:host-slot-ids` | hash | host id → every slot id of that report (JSON) |
//! | `berth:host-slots` | hash | host id → every slot of that report (JSON) |
//! | `berth:host-seen` | hash | host id → unix ms of the last report |
//! | `berth:draining` | set | drained host ids |
//! | `berth:templates` | set | templates that have a pool |
//! | `berth:pool:{template}` | list | ready [`WarmSlot`]s (JSON), oldest first |
//! | `berth:ws` | hash | workspace id → [`WorkspaceRecord`] (JSON) |
//! | `berth:conv` | hash | conversation id → workspace id |
//! | `berth:leader`, `berth:leader-epoch` | string | the reconcilers' lease and its fencing epoch |
//! | `berth:state` | string | the state marker: when and by which epoch the state was (re)built |
//!
//! The marker tells a Redis that lost its data (a flush, a failover to an empty
//! replica) from one that holds Berth's state: without it the acquire script binds
//! nothing and answers `rebuilding` until the leader has rebuilt the state from the
//! hosts' inventories and set it. The epoch counter is seeded from Redis's clock
//! when missing, so epochs keep rising across such a loss.
//!
//! The acquire step is one Lua script, so that popping a slot and binding the
//! conversation cannot interleave with another replica's: Redis runs a script with
//! nothing else in between.

use std::collections::BTreeMap;

use berth_wire::HostReport;
use redis::{AsyncCommands, Script, aio::ConnectionManager};

use crate::store::{
    Acquired, BoxFuture, Condition, Fence, HostRecord, StateStore, StoreError, WarmSlot,
    WorkspaceRecord, WorkspaceStatus,
};

const HOSTS: &str = "berth:hosts";
const HOST_SEEN: &str = "berth:host-seen";
const HOST_SLOT_IDS: &str = "berth:host-slot-ids";
const HOST_SLOTS: &str = "berth:host-slots";
const DRAINING: &str = "berth:draining";
const TEMPLATES: &str = "berth:templates";
const WORKSPACES: &str = "berth:ws";
const CONVERSATIONS: &str = "berth:conv";
const LEADER: &str = "berth:leader";
const LEADER_EPOCH: &str = "berth:leader-epoch";
const STATE_MARKER: &str = "berth:state";

/// Entries one `HSCAN` call asks for.
const SCAN_PAGE: usize = 500;

fn pool_key(template: &str) -> String {
    format!("berth:pool:{template}")
}

/// KEYS: conv, ws, pool, state marker. ARGV: conversation id, workspace id, record
/// JSON, dead hosts (JSON array). Returns {"existing", record} | {"warm", slot} |
/// {"cold", ""} | {"rebuilding", ""}.
const ACQUIRE: &str = r#"
if redis.call('EXISTS', KEYS[4]) == 0 then return {'rebuilding', ''} end
local bound = redis.call('HGET', KEYS[1], ARGV[1])
if bound then
  local rec = redis.call('HGET', KEYS[2], bound)
  if rec then return {'existing', rec} end
end
local dead = {}
for _, h in ipairs(cjson.decode(ARGV[4])) do dead[h] = true end
local slot = false
local n = redis.call('LLEN', KEYS[3])
for i = 0, n - 1 do
  local s = redis.call('LINDEX', KEYS[3], i)
  if not dead[cjson.decode(s).host_id] then
    slot = s
    redis.call('LREM', KEYS[3], 1, s)
    break
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if slot then
  -- The binding names the popped slot at once: a replica that dies after this
  -- leaves a record the recovery pass can clean up, not a slot nobody knows.
  local rec = cjson.decode(ARGV[3])
  local s = cjson.decode(slot)
  rec.slot_id = s.slot_id
  rec.workspace.host_id = s.host_id
  rec.workspace.agent_url = s.agent_url
  rec.claim_secret = s.claim_secret
  redis.call('HSET', KEYS[2], ARGV[2], cjson.encode(rec))
  return {'warm', slot}
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return {'cold', ''}
"#;

/// A leader write's script: KEYS[1], KEYS[2] are the lease and its epoch, ARGV[1],
/// ARGV[2] the writer's owner and epoch (an empty owner: not a leader write). A write
/// whose lease has lapsed or changed hands fails with `BERTH_FENCED` before it
/// changes anything; the script's own keys and arguments follow from index 3.
macro_rules! fenced {
    ($body:literal) => {
        concat!(
            r#"
if ARGV[1] ~= '' then
  if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('GET', KEYS[2]) ~= ARGV[2] then
    return redis.error_reply('BERTH_FENCED the lease has lapsed or changed hands')
  end
end
"#,
            $body
        )
    };
}

/// KEYS: …, ws. ARGV: …, workspace id, record JSON, expected status. 1 if replaced.
const REPLACE_WORKSPACE: &str = fenced!(
    r#"
local rec = redis.call('HGET', KEYS[3], ARGV[3])
if not rec then return 0 end
if cjson.decode(rec).status ~= ARGV[5] then return 0 end
redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
return 1
"#
);

/// KEYS: …, ws, conv. ARGV: …, workspace id, expected status (empty: any), expected
/// expires_at (empty: any). Returns the removed record or nil.
const REMOVE_WORKSPACE: &str = fenced!(
    r#"
local rec = redis.call('HGET', KEYS[3], ARGV[3])
if not rec then return false end
local r = cjson.decode(rec)
if ARGV[4] ~= '' and r.status ~= ARGV[4] then return false end
if ARGV[5] ~= '' and tostring(r.workspace.expires_at) ~= ARGV[5] then return false end
redis.call('HDEL', KEYS[3], ARGV[3])
local conv = r.workspace.conversation_id
if redis.call('HGET', KEYS[4], conv) == ARGV[3] then redis.call('HDEL', KEYS[4], conv) end
return rec
"#
);

/// KEYS: …, pool. ARGV: …, host id. Removes and returns the host's slots.
const TAKE_ON_HOST: &str = fenced!(
    r#"
local taken = {}
for _, s in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do
  if cjson.decode(s).host_id == ARGV[3] then
    redis.call('LREM', KEYS[3], 1, s)
    table.insert(taken, s)
  end
end
return taken
"#
);

/// KEYS: …, pool. ARGV: …, slot id. 1 if the slot was in the pool and is taken.
const TAKE_SLOT: &str = fenced!(
    r#"
for _, s in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do
  if cjson.decode(s).slot_id == ARGV[3] then
    return redis.call('LREM', KEYS[3], 1, s)
  end
end
return 0
"#
);

/// KEYS: …, ws, conv. ARGV: …, workspace id, conversation id, record JSON. 1 if put
/// back (neither known).
const RESTORE_WORKSPACE: &str = fenced!(
    r#"
if redis.call('HEXISTS', KEYS[3], ARGV[3]) == 1 then return 0 end
if redis.call('HEXISTS', KEYS[4], ARGV[4]) == 1 then return 0 end
redis.call('HSET', KEYS[3], ARGV[3], ARGV[5])
redis.call('HSET', KEYS[4], ARGV[4], ARGV[3])
return 1
"#
);

/// KEYS: …, marker. ARGV: …, marker JSON.
const MARK_STATE: &str = fenced!(
    r#"
redis.call('SET', KEYS[3], ARGV[3])
return 1
"#
);

/// KEYS: …, hosts, host-seen, draining, slot ids, slots. ARGV: …, host id. 1 if
/// the host was known.
const REMOVE_HOST: &str = fenced!(
    r#"
local n = redis.call('HDEL', KEYS[3], ARGV[3])
redis.call('HDEL', KEYS[4], ARGV[3])
redis.call('SREM', KEYS[5], ARGV[3])
redis.call('HDEL', KEYS[6], ARGV[3])
redis.call('HDEL', KEYS[7], ARGV[3])
return n
"#
);

/// KEYS: leader, epoch. ARGV: owner, ttl ms. Returns the epoch while owner leads, else 0.
const LEAD: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(redis.call('GET', KEYS[2]) or '0')
end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if redis.call('EXISTS', KEYS[2]) == 0 then
  -- Lost with the data: restart from the clock (ms), above any epoch before.
  local t = redis.call('TIME')
  redis.call('SET', KEYS[2], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
end
return redis.call('INCR', KEYS[2])
"#;

/// Each script once, with its SHA-1 (computed at first use, not on every call).
mod scripts {
    use std::sync::LazyLock;

    use redis::Script;

    pub static REMOVE_WORKSPACE: LazyLock<Script> =
        LazyLock::new(|| Script::new(super::REMOVE_WORKSPACE));
    pub static REMOVE_HOST: LazyLock<Script> = LazyLock::new(|| Script::new(super::REMOVE_HOST));
    pub static TAKE_SLOT: LazyLock<Script> = LazyLock::new(|| Script::new(super::TAKE_SLOT));
    pub static TAKE_ON_HOST: LazyLock<Script> = LazyLock::new(|| Script::new(super::TAKE_ON_HOST));
    pub static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(super::ACQUIRE));
    pub static REPLACE_WORKSPACE: LazyLock<Script> =
        LazyLock::new(|| Script::new(super::REPLACE_WORKSPACE));
    pub static MARK_STATE: LazyLock<Script> = LazyLock::new(|| Script::new(super::MARK_STATE));
    pub static RESTORE_WORKSPACE: LazyLock<Script> =
        LazyLock::new(|| Script::new(super::RESTORE_WORKSPACE));
    pub static LEAD: LazyLock<Script> = LazyLock::new(|| Script::new(super::LEAD));
}

/// A connection to the shared Redis; cheap to clone, reconnects by itself.
#[derive(Clone)]
pub struct RedisStore {
    con: ConnectionManager,
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// A fenced script for `fence`: the lease keys and the writer come first.
fn fenced_call<'s>(script: &'s Script, fence: Option<&Fence>) -> redis::ScriptInvocation<'s> {
    let mut call = script.key(LEADER);
    call.key(LEADER_EPOCH)
        .arg(fence.map_or("", |f| f.owner.as_str()))
        .arg(fence.map_or(0, |f| f.epoch));
    call
}

/// A fenced script's error: [`StoreError::Fenced`] when the lease check refused it.
fn refused(fence: Option<&Fence>) -> impl FnOnce(redis::RedisError) -> StoreError + '_ {
    move |e| match fence {
        Some(f) if e.code() == Some("BERTH_FENCED") => StoreError::Fenced {
            owner: f.owner.clone(),
            epoch: f.epoch,
        },
        _ => unavailable(e),
    }
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// A status as records spell it in JSON.
fn status_name(s: WorkspaceStatus) -> &'static str {
    match s {
        WorkspaceStatus::Claiming => "claiming",
        WorkspaceStatus::Ready => "ready",
        WorkspaceStatus::Lost => "lost",
    }
}

fn encode<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

impl RedisStore {
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let con = ConnectionManager::new(client).await.map_err(unavailable)?;
        Ok(Self { con })
    }

    async fn remove_if(
        &self,
        id: &str,
        cond: Condition,
        fence: Option<&Fence>,
    ) -> Result<Option<WorkspaceRecord>, StoreError> {
        let mut con = self.con.clone();
        let script = &*scripts::REMOVE_WORKSPACE;
        let raw: Option<String> = fenced_call(script, fence)
            .key(WORKSPACES)
            .key(CONVERSATIONS)
            .arg(id)
            .arg(cond.status.map_or("", status_name))
            .arg(cond.expires_at.map_or(String::new(), |e| e.to_string()))
            .invoke_async(&mut con)
            .await
            .map_err(refused(fence))?;
        raw.map(|j| decode(WORKSPACES, &j)).transpose()
    }

    async fn templates(&self) -> Result<Vec<String>, StoreError> {
        let mut con = self.con.clone();
        con.smembers(TEMPLATES).await.map_err(unavailable)
    }
}

impl StateStore for RedisStore {
    fn put_host<'a>(
        &'a self,
        report: HostReport,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut con = self.con.clone();
            let (brief, ids, slots) = crate::store::split_report(report);
            let host = &brief.host_id;
            redis::pipe()
                .atomic()
                .hset(HOSTS, host, encode(&brief))
                .hset(HOST_SLOT_IDS, host, encode(&ids))
                .hset(HOST_SLOTS, host, encode(&slots))
                .hset(HOST_SEEN, host, now_ms)
                .query_async::<()>(&mut con)
                .await
                .map_err(unavailable)
        })
    }

    fn remove_host<'a>(
        &'a self,
        host_id: &'a str,
        fence: &'a Fence,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut con = self.con.clone();
            let script = &*scripts::REMOVE_HOST;
            let removed: i64 = fenced_call(script, Some(fence))
                .key(HOSTS)
                .key(HOST_SEEN)
                .key(DRAINING)
                .key(HOST_SLOT_IDS)
                .key(HOST_SLOTS)
                .arg(host_id)
                .invoke_async(&mut con)
                .await
                .map_err(refused(Some(fence)))?;
            Ok(removed == 1)
        })
    }

    fn hosts<'a>(&'a self) -> BoxFuture<'a, Result<Vec<HostRecord>, StoreError>> {
        Box::pin(async move {
            let mut con = self.con.clone();
            type Hosts = (
                BTreeMap<String, String>,
                BTreeMap<String, u64>,
                Vec<String>,
                BTreeMap<String, String>,
            );
            let (reports, seen, draining, ids): Hosts = redis::pipe()
                .hgetall(HOSTS)
                .hgetall(HOST_SEEN)
                .smembers(DRAINING)
                .hgetall(HOST_SLOT_IDS)
                .query_async(&mut con)
                .await
                .map_err(unavailable)?;
            reports
                .into_iter()
                .map(|(id, json)| {
                    Ok(HostRecord {
                        report: decode(HOSTS, &json)?,
                        last_seen_ms: seen.get(&id).copied().unwrap_or(0),
                        draining: draining.contains(&id),
                        slot_ids: match ids.get(&id) {
                            Some(j) => decode(HOST_SLOT_IDS, j)?,
                            None => Vec::new(),
                        },
                    })
                })
                .collect()
        })
    }

    fn host_slots<'a>(
        &'a self,
        host_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<berth_wire::SlotInfo>, StoreError>> {
        Box::pin(async move {
            let mut con = self.con.clone();
            let raw: Option<String> = con.hget(HOST_SLOTS, host_id).await.map_err(unavailable)?;
            raw.map_or(Ok(Vec::new()), |j| decode(HOST_SLOTS, &j))
        })
    }

    fn set_draining<'a>(
        &'a self,
        host_id: &'a str,
        draining: bool,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut con = self.con.clone();
            let known: bool = con.hexists(HOSTS, host_id).await.map_err(unavailable)?;
            if !known {
                return Ok(false);
            }
            if draining {
                con.sadd::<_, _, ()>(DRAINING, host_id)
                    .await
                    .map_err(unavailable)?;
            } else {
                con.srem::<_, _, ()>(DRAINING, host_id)
                    .await
                    .map_err(unavailable)?;
            }
            Ok(true)
        })
    }

    fn push_warm<'a>(&'a self, slot: WarmSlot) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut con = self.con.clone();
            redis::pipe()
                .atomic()
                .sadd(TEMPLATES, &slot.template)
                .rpush(pool_key(&slot.template), encode(&slot))
                .query_async::<()>(&mut con)
                .await
                .map_err(unavailable)
        })
    }

    fn pool_sizes<'a>(&'a self) -> BoxFuture<'a, Result<BTreeMap<String, usize>, StoreError>> {
        Box::pin(async move {
            let templates = self.templates().await?;
            if templates.is_empty() {
                return Ok(BTreeMap::new());
            }
            let mut pipe = redis::pipe();
            for t in &templates {
                pipe.llen(pool_key(t));
            }
            let mut con = self.con.clone();
            let sizes: Vec<usize> = pipe.query_async(&mut con).await.map_err(unavailable)?;
            Ok(templates.into_iter().zip(sizes).collect())
        })
    }

    fn warm_slots<'a>(&'a self) -> BoxFuture<'a, Result<Vec<WarmSlot>, StoreError>> {
        Box::pin(async move {
            let mut slots = Vec::new();
            for t in self.templates().await? {
                let key = pool_key(&t);
                let mut con = self.con.clone();
                let raw: Vec<String> = con.lrange(&key, 0, -1).await.map_err(unavailable)?;
                for s in raw {
                    slots.push(decode(&key, &s)?);
                }
            }
            Ok(slots)
        })
    }

    /// One script: atomic against the acquire script's pop, so a slot is either
    /// handed out or taken here, never both.
    fn take_warm_slot<'a>(
        &'a self,
        slot: &'a WarmSlot,
        fence: &'a Fence,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut con = self.con.clone();
            let script = &*scripts::TAKE_SLOT;
            let removed: i64 = fenced_call(script, Some(fence))
                .key(pool_key(&slot.template))
                .arg(&slot.slot_id)
                .invoke_async(&mut con)
                .await
                .map_err(refused(Some(fence)))?;
            Ok(removed > 0)
        })
    }

    fn take_warm_on_host<'a>(
        &'a self,
        host_id: &'a str,
        fence: Option<&'a Fence>,
    ) -> BoxFuture<'a, Result<Vec<WarmSlot>, StoreError>> {
        Box::pin(async move {
            let script = &*scripts::TAKE_ON_HOST;
            let mut taken = Vec::new();
            for t in self.templates().await? {
                let mut con = self.con.clone();
                let key = pool_key(&t);
                let raw: Vec<String> = fenced_call(script, fence)
                    .key(&key)
                    .arg(host_id)
                    .invoke_async(&mut con)
                    .await
                    .map_err(refused(fence))?;
                for s in raw {
                    taken.push(decode(&key, &s)?);
                }
            }
            Ok(taken)
        })
    }

    fn acquire<'a>(
        &'a self,
        candidate: &'a WorkspaceRecord,
        dead_hosts: &'a [String],
    ) -> BoxFuture<'a, Result<Acquired, StoreError>> {
        Box::pin(async move {
            let mut con = self.con.clone();
            let w = &candidate.workspace;
            let key = pool_key(&w.template);
            let (kind, payload): (String, String) = scripts::ACQUIRE
                .key(CONVERSATIONS)
                .key(WORKSPACES)
                .key(&key)
                .key(STATE_MARKER)
                .arg(&w.conversation_id)
                .arg(&w.id)
                .arg(encode(candidate))
                .arg(encode(&dead_hosts))
                .invoke_async(&mut con)
                .await
                .map_err(unavailable)?;
            match kind.as_str() {
                "existing" => Ok(Acquired::Existing(Box::new(decode(WORKSPACES, &payload)?))),
                "warm" => Ok(Acquired::Warm(decode(&key, &payload)?)),
                "rebuilding" => Ok(Acquired::Rebuilding),
                _ => Ok(Acquired::Cold),
            }
        })
    }

    fn put_workspace<'a>(
        &'a self,
        record: &'a WorkspaceRecord,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut con = self.con.clone();
            con.hset::<_, _, _, ()>(WORKSPACES, &record.workspace.id, encode(record))
                .await
                .map_err(unavailable)
        })
    }

    fn replace_workspace<'a>(
        &'a self,
        record: &'a WorkspaceRecord,
        expect: WorkspaceStatus,
        fence: Option<&'a Fence>,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut con = self.con.clone();
            let script = &*scripts::REPLACE_WORKSPACE;
            let replaced: i64 = fenced_call(script, fence)
                .key(WORKSPACES)
                .arg(&record.workspace.id)
                .arg(encode(record))
                .arg(status_name(expect))
                .invoke_async(&mut con)
                .await
                .map_err(refused(fence))?;
            Ok(replaced == 1)
        })
    }

    fn workspace<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<WorkspaceRecord>, StoreError>> {
        Box::pin(async move {
            let mut con = self.con.clone();
            let raw: Option<String> = con.hget(WORKSPACES, id).await.map_err(unavailable)?;
            raw.map(|j| decode(WORKSPACES, &j)).transpose()
        })
    }

    fn workspace_for_conversation<'a>(
        &'a self,
        conversation_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<WorkspaceRecord>, StoreError>> {
        Box::pin(async move {
            let mut con = self.con.clone();
            let id: Option<String> = con
                .hget(CONVERSATIONS, conversation_id)
                .await
                .map_err(unavailable)?;
            match id {
                Some(id) => self.workspace(&id).await,
                None => Ok(None),
            }
        })
    }

    /// Every record, read in `HSCAN` pages (one `HGETALL` of a large table would hold
    /// Redis, and every acquire behind it, for milliseconds) and decoded off the
    /// async workers.
    fn workspaces<'a>(&'a self) -> BoxFuture<'a, Result<Vec<WorkspaceRecord>, StoreError>> {
        Box::pin(async move {
            let mut con = self.con.clone();
            let mut all: BTreeMap<String, String> = BTreeMap::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, page): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
                    .arg(WORKSPACES)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(SCAN_PAGE)
                    .query_async(&mut con)
                    .await
                    .map_err(unavailable)?;
                // A scan may return an entry twice; the map keeps one.
                all.extend(page);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            tokio::task::spawn_blocking(move || {
                all.values()
                    .map(|j| decode(WORKSPACES, j))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await
            .map_err(|e| StoreError::Unavailable(format!("decoding workspaces: {e}")))?
        })
    }

    fn remove_workspace<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<WorkspaceRecord>, StoreError>> {
        Box::pin(self.remove_if(id, Condition::default(), None))
    }

    fn remove_workspace_if<'a>(
        &'a self,
        id: &'a str,
        cond: Condition,
        fence: &'a Fence,
    ) -> BoxFuture<'a, Result<Option<WorkspaceRecord>, StoreError>> {
        Box::pin(self.remove_if(id, cond, Some(fence)))
    }

    fn state_marked<'a>(&'a self) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut con = self.con.clone();
            con.exists(STATE_MARKER).await.map_err(unavailable)
        })
    }

    fn mark_state<'a>(&'a self, fence: &'a Fence) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut con = self.con.clone();
            let script = &*scripts::MARK_STATE;
            let marker = serde_json::json!({
                "marked_at_ms": crate::now_ms(),
                "by": fence.owner,
                "epoch": fence.epoch,
            });
            fenced_call(script, Some(fence))
                .key(STATE_MARKER)
                .arg(marker.to_string())
                .invoke_async::<i64>(&mut con)
                .await
                .map_err(refused(Some(fence)))?;
            Ok(())
        })
    }

    fn restore_workspace<'a>(
        &'a self,
        record: &'a WorkspaceRecord,
        fence: &'a Fence,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut con = self.con.clone();
            let script = &*scripts::RESTORE_WORKSPACE;
            let put: i64 = fenced_call(script, Some(fence))
                .key(WORKSPACES)
                .key(CONVERSATIONS)
                .arg(&record.workspace.id)
                .arg(&record.workspace.conversation_id)
                .arg(encode(record))
                .invoke_async(&mut con)
                .await
                .map_err(refused(Some(fence)))?;
            Ok(put == 1)
        })
    }

    fn lead<'a>(
        &'a self,
        owner: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        Box::pin(async move {
            let mut con = self.con.clone();
            let epoch: u64 = scripts::LEAD
                .key(LEADER)
                .key(LEADER_EPOCH)
                .arg(owner)
                .arg(ttl_ms)
                .invoke_async(&mut con)
                .await
                .map_err(unavailable)?;
            Ok((epoch > 0).then_some(epoch))
        })
    }
}
