//! Per-key token buckets kept in Redis (`--api-key-rate-scope shared`), so that every replica of a
//! service draws on one bucket per API key; a Lua script refills and takes atomically on Redis's clock.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::store::RedisStore;

/// Refills the bucket in `KEYS[1]` to the server's time, takes `ARGV[3]` tokens when it holds that
/// many, and answers `{1, 0}` (taken) or `{0, ms}` (how long until `ARGV[4]` tokens are there).
/// ARGV: rate per second, burst, tokens needed now, tokens the wait is counted for. An absent bucket
/// is full; a bucket is dropped once it would be full again anyway (plus a minute; 31 years at most).
const TAKE_SCRIPT: &str = r"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local need = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens = tonumber(state[1])
local updated = tonumber(state[2])
if tokens == nil or updated == nil then
  tokens = burst
  updated = now
end
if tokens > burst then
  tokens = burst
end
if now < updated then
  -- Redis's clock stepped back (or a failover came to a host behind): count from now.
  updated = now
end
if now > updated then
  tokens = math.min(burst, tokens + (now - updated) * rate)
  updated = now
end
local granted = 0
local wait_ms = 0
if tokens >= need then
  tokens = tokens - need
  granted = 1
else
  wait_ms = math.ceil((want - tokens) / rate * 1000)
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
  'updated', string.format('%.6f', updated))
redis.call('PEXPIRE', KEYS[1],
  string.format('%d', math.min(math.ceil(burst / rate * 1000) + 60000, 1000000000000)))
return {granted, wait_ms}
";

/// After Redis failed, how long the local buckets decide before one request asks Redis again (so an
/// outage costs one request a timeout each second, not every request).
pub(crate) const SHARED_BUCKET_PAUSE: Duration = Duration::from_secs(1);

/// What Redis's bucket said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SharedVerdict {
    /// The tokens were taken.
    Taken,
    /// Too few tokens: how long until there are enough.
    Wait(Duration),
}

/// The buckets of one service in Redis.
pub(crate) struct SharedBuckets {
    store: RedisStore,
    service: &'static str,
    script: redis::Script,
    /// Longest a request waits for Redis before its key's local bucket decides instead.
    timeout: Duration,
    outage: Mutex<Outage>,
}

/// Redis's state as the buckets last saw it.
#[derive(Debug, Default)]
struct Outage {
    /// Until when Redis is not asked (after a failure, or while one request probes it).
    paused_until: Option<Instant>,
    /// The last call failed (logged once per outage, not once a second).
    failing: bool,
    /// Failures so far: a success only ends the outage when no failure came after its call began.
    failures: u64,
}

impl std::fmt::Debug for SharedBuckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBuckets")
            .field("store", &self.store)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl SharedBuckets {
    pub(crate) fn new(store: RedisStore, service: &'static str, timeout: Duration) -> Self {
        // Exists from the start, so the first fallback is an increase.
        metrics::counter!(format!("sentiflow_{service}_api_key_rate_fallbacks_total")).increment(0);
        Self {
            store,
            service,
            script: redis::Script::new(TAKE_SCRIPT),
            timeout,
            outage: Mutex::new(Outage::default()),
        }
    }

    /// The Redis key of the bucket of the key with `digest`: 64 bits of the digest (as in metrics,
    /// only longer: two keys of one file never share a bucket by chance).
    pub(crate) fn bucket_key(&self, digest: &[u8; 32]) -> String {
        self.store
            .key(&["api-key-bucket", self.service, &hex::encode(&digest[..8])])
    }

    /// Takes `need` tokens from the key's shared bucket (the wait, when refused, is counted for
    /// `want`); `None` when Redis did not answer in time or failed, or is paused after a failure:
    /// the caller's local bucket decides then.
    pub(crate) async fn take(
        &self,
        digest: &[u8; 32],
        per_second: f64,
        burst: f64,
        need: f64,
        want: f64,
    ) -> Option<SharedVerdict> {
        let now = Instant::now();
        let failures_before = {
            let mut outage = self.outage();
            if outage.paused_until.is_some_and(|until| now < until) {
                drop(outage);
                self.count_fallback();
                return None;
            }
            if outage.failing {
                // This request probes Redis; the others go on deciding locally meanwhile.
                outage.paused_until = Some(now + self.timeout);
            }
            outage.failures
        };
        let mut connection = self.store.connection();
        let mut invocation = self.script.key(self.bucket_key(digest));
        invocation.arg(per_second).arg(burst).arg(need).arg(want);
        // A call that times out may still have taken its tokens in Redis: the request is then
        // charged twice (there and locally), which errs on the side of the limit.
        let answer = tokio::time::timeout(
            self.timeout,
            invocation.invoke_async::<(i64, i64)>(&mut connection),
        )
        .await;
        let failure = match answer {
            Ok(Ok((granted, wait_ms))) => {
                let mut outage = self.outage();
                if outage.failures == failures_before {
                    if outage.failing {
                        tracing::info!(
                            service = self.service,
                            "the shared API-key buckets in Redis answer again"
                        );
                    }
                    outage.failing = false;
                    outage.paused_until = None;
                }
                return Some(if granted == 1 {
                    SharedVerdict::Taken
                } else {
                    SharedVerdict::Wait(Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0)))
                });
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {} ms", self.timeout.as_millis()),
        };
        let mut outage = self.outage();
        outage.failures += 1;
        outage.paused_until = Some(Instant::now() + SHARED_BUCKET_PAUSE);
        if outage.failing {
            tracing::debug!(service = self.service, %failure, "shared API-key buckets still unusable");
        } else {
            outage.failing = true;
            tracing::warn!(
                service = self.service,
                %failure,
                "the shared API-key buckets in Redis cannot be used: this instance's own buckets \
                 decide until Redis answers (a key may meanwhile send the rate at each replica)"
            );
        }
        drop(outage);
        self.count_fallback();
        None
    }

    fn outage(&self) -> std::sync::MutexGuard<'_, Outage> {
        self.outage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn count_fallback(&self) {
        metrics::counter!(format!(
            "sentiflow_{}_api_key_rate_fallbacks_total",
            self.service
        ))
        .increment(1);
    }
}
