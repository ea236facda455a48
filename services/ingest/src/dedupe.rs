//! Redis dedupe by event id and by normalised-text fingerprint, safe under at-least-once redelivery.
//!
//! Each key stores the source coordinate (topic/partition/offset) of the message that first claimed it.
//! A redelivery of that same message (after a crash before its offset was committed) finds its own
//! coordinate and is processed again instead of being mistaken for a duplicate, so a crash between
//! "claimed" and "produced" never loses a review.

use redis::aio::ConnectionManager;

/// Outcome of the dedupe check of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// First sighting (or a redelivery of the first sighting): process it.
    New,
    /// Another message already carried this event id.
    DuplicateEvent,
    /// Another message already carried this normalised text.
    DuplicateText,
}

impl Verdict {
    /// Metric label of a duplicate kind.
    pub fn kind(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::DuplicateEvent => "event_id",
            Self::DuplicateText => "text",
        }
    }
}

/// Claims KEYS[1] (event id) and, when given, KEYS[2] (text fingerprint) for the coordinate ARGV[1] with
/// TTL ARGV[2] seconds. Returns 0 new, 1 duplicate event, 2 duplicate text. Atomic per message.
const CLAIM_SCRIPT: &str = r"
local function claim(key)
  if redis.call('SET', key, ARGV[1], 'NX', 'EX', ARGV[2]) then return true end
  return redis.call('GET', key) == ARGV[1]
end
if not claim(KEYS[1]) then return 1 end
if #KEYS >= 2 and not claim(KEYS[2]) then return 2 end
return 0
";

/// One message to check.
#[derive(Debug)]
pub struct Claim {
    /// Redis key of the event id.
    pub event_key: String,
    /// Redis key of the text fingerprint, when text dedupe is on.
    pub text_key: Option<String>,
    /// `topic/partition/offset` of the message.
    pub coordinate: String,
}

/// Checks a batch of claims in one round trip, in order (so two copies inside one batch are caught too).
pub async fn check_batch(
    connection: &mut ConnectionManager,
    claims: &[Claim],
    ttl_secs: u64,
) -> redis::RedisResult<Vec<Verdict>> {
    if claims.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for claim in claims {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(CLAIM_SCRIPT);
        match &claim.text_key {
            Some(text_key) => cmd.arg(2).arg(&claim.event_key).arg(text_key),
            None => cmd.arg(1).arg(&claim.event_key),
        };
        cmd.arg(&claim.coordinate).arg(ttl_secs);
        pipe.add_command(cmd);
    }
    let codes: Vec<i64> = pipe.query_async(connection).await?;
    Ok(codes
        .into_iter()
        .map(|code| match code {
            1 => Verdict::DuplicateEvent,
            2 => Verdict::DuplicateText,
            _ => Verdict::New,
        })
        .collect())
}
