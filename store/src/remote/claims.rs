//! Build claims: `claims/<input digest>` is created with a conditional put by the host that
//! builds that digest; others wait for its result. The claim holds when it was taken and by
//! whom, so a claim left by a host that died is recognised as stale and taken over. A host that
//! signs signs its claims; a host that requires signatures takes over a claim no accepted key
//! signed (an untrusted host cannot hold a trusted builder off).

use bytes::Bytes;

use crate::error::Result;
use crate::remote::format;
use crate::remote::trust::{Sig, claim_statement, now};
use crate::store::Store;

/// Who holds a claim and for how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub age_seconds: u64,
    pub owner: String,
    /// Signed by an accepted key, or signatures are not required here: worth waiting for.
    pub trusted: bool,
}

impl Store {
    /// Claims `name` for `owner` (a conditional put): true when the claim is ours, false when
    /// another holds it. `steal` overwrites a claim given up as stale.
    pub fn claim(&self, name: &str, owner: &str, steal: bool) -> Result<bool> {
        let remote = self.remote_or_err()?;
        let time = now();
        let mut body = format!("{time} {owner}\n");
        if let Some(k) = &self.opts.trust.signer {
            body.push_str(&format!("sig {}\n", k.sign(&claim_statement(name, owner, &k.name, time), time).encode()));
        }
        let body = Bytes::from(body);
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
        let mut lines = text.lines();
        let (t, owner) = lines.next().unwrap_or("").split_once(' ').unwrap_or(("0", ""));
        let time = t.parse().unwrap_or(0);
        let sigs: Vec<Sig> = lines.filter_map(|l| Sig::parse(l.strip_prefix("sig ")?)).collect();
        let trust = &self.opts.trust;
        let signed = trust.trusted_signer(&sigs, |k, _| claim_statement(name, owner, k, time)).is_some();
        Ok(Some(Claim {
            age_seconds: now().saturating_sub(time),
            owner: owner.to_string(),
            trusted: signed || !trust.required(),
        }))
    }

    pub fn release(&self, name: &str) -> Result<()> {
        let remote = self.remote_or_err()?;
        remote.wait(remote.delete(format::claim_key(name)))
    }
}
