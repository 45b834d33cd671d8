//! Build claims: `claims/<input digest>` is created with a conditional put by the host that
//! builds that digest; others wait for its result. The claim holds when it was taken and by
//! whom, so a claim left by a host that died is recognised as stale and taken over.

use bytes::Bytes;

use crate::error::Result;
use crate::remote::format;
use crate::store::Store;

/// Who holds a claim and for how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub age_seconds: u64,
    pub owner: String,
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs()
}

impl Store {
    /// Claims `name` for `owner` (a conditional put): true when the claim is ours, false when
    /// another holds it. `steal` overwrites a claim given up as stale.
    pub fn claim(&self, name: &str, owner: &str, steal: bool) -> Result<bool> {
        let remote = self.remote_or_err()?;
        let body = Bytes::from(format!("{} {owner}\n", now()));
        let key = format::claim_key(name);
        if steal {
            remote.wait(remote.put(key, body))?;
            Ok(true)
        } else {
            remote.wait(remote.put_if_absent(key, body))
        }
    }

    /// The claim on `name`, if any.
    pub fn claim_info(&self, name: &str) -> Result<Option<Claim>> {
        let remote = self.remote_or_err()?;
        let Some(b) = remote.wait(remote.get(format::claim_key(name), format::MAX_CLAIM_OBJECT))? else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&b);
        let (t, owner) = text.trim().split_once(' ').unwrap_or(("0", ""));
        Ok(Some(Claim { age_seconds: now().saturating_sub(t.parse().unwrap_or(0)), owner: owner.to_string() }))
    }

    pub fn release(&self, name: &str) -> Result<()> {
        let remote = self.remote_or_err()?;
        remote.wait(remote.delete(format::claim_key(name)))
    }
}
