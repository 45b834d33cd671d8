//! Trust across hosts: ed25519 keys, and signatures over what a root object in S3 says.
//!
//! A host that signs (`signing-key`) adds to every root object it pushes a signature over a
//! canonical *statement*: the kind (`root`, a name a person gave; `result`, a build result named
//! by its input digest, which is the digest of its recipe), the name, the tree it names, the
//! signer's key name and the time. A host that trusts keys (`trusted-keys`, plus its own signing
//! key) records a root from S3 only if one of its signatures is by a trusted key and verifies over
//! the statement rebuilt from the object and the name it was looked up by: a root object copied
//! under another name, pointed at another tree or given another kind no longer verifies. Claims
//! are signed the same way, so an untrusted host cannot hold a trusted builder off.
//!
//! Keys are one line, `NAME:BASE64` (the secret key file holds the 32-byte seed, the public key
//! the 32-byte point), like Nix's `trusted-public-keys`. No cryptography is ours: ed25519-dalek
//! signs and verifies (strictly: no malleable signatures).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::error::{Error, Result};
use crate::model::digest::Digest;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The most signatures a root object keeps (two builders and a rotation need three).
pub const MAX_SIGNATURES: usize = 16;

/// What a root object names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootKind {
    /// A name given by a person (`store add --name`, or a tree's own digest).
    Root,
    /// A build result, named by its input digest (the digest of its recipe).
    Result,
}

impl RootKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RootKind::Root => "root",
            RootKind::Result => "result",
        }
    }

    pub fn parse(s: &str) -> Option<RootKind> {
        match s {
            "root" => Some(RootKind::Root),
            "result" => Some(RootKind::Result),
            _ => None,
        }
    }
}

/// One signature on a root object or a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sig {
    /// The signer's key name.
    pub key: String,
    /// When it was signed (Unix seconds).
    pub time: u64,
    pub bytes: [u8; 64],
}

impl Sig {
    /// `KEY TIME BASE64`, as in a root object's `sig` line.
    pub fn encode(&self) -> String {
        format!("{} {} {}", self.key, self.time, B64.encode(self.bytes))
    }

    pub fn parse(s: &str) -> Option<Sig> {
        let mut it = s.split(' ');
        let key = it.next().filter(|k| valid_key_name(k))?.to_string();
        let time = it.next()?.parse().ok()?;
        let bytes = B64.decode(it.next()?).ok()?.try_into().ok()?;
        it.next().is_none().then_some(Sig { key, time, bytes })
    }
}

/// Key names: letters, digits, `.`, `_`, `-`, at most 64.
pub fn valid_key_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The canonical statement a root object's signature covers. The name is length-prefixed: no
/// name can make one statement read as another.
pub fn root_statement(kind: RootKind, name: &str, tree: &Digest, key: &str, time: u64) -> Vec<u8> {
    format!(
        "vorpalfs statement v1\nkind {}\nname {} {name}\ntree {tree}\nkey {key}\ntime {time}\n",
        kind.as_str(),
        name.len()
    )
    .into_bytes()
}

/// The statement a claim's signature covers.
pub fn claim_statement(name: &str, owner: &str, key: &str, time: u64) -> Vec<u8> {
    format!("vorpalfs claim v1\nname {} {name}\nowner {} {owner}\nkey {key}\ntime {time}\n", name.len(), owner.len())
        .into_bytes()
}

/// A secret key this host signs with.
pub struct SecretKey {
    pub name: String,
    key: SigningKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({}:<redacted>)", self.name)
    }
}

fn bad_key(origin: &str, why: &str) -> Error {
    Error::BadKey { origin: origin.to_string(), why: why.to_string() }
}

fn split_key<'a>(text: &'a str, origin: &str) -> Result<(&'a str, [u8; 32])> {
    let line = text.trim();
    let (name, b64) = line.split_once(':').ok_or_else(|| bad_key(origin, "not NAME:BASE64"))?;
    if !valid_key_name(name) {
        return Err(bad_key(origin, "a key name is 1 to 64 letters, digits, '.', '_' or '-'"));
    }
    let bytes = B64.decode(b64).map_err(|_| bad_key(origin, "the key is not base64"))?;
    let bytes = bytes.try_into().map_err(|_| bad_key(origin, "the key is not 32 bytes"))?;
    Ok((name, bytes))
}

impl SecretKey {
    /// A new key pair from the system's random source.
    pub fn generate(name: &str) -> Result<SecretKey> {
        if !valid_key_name(name) {
            return Err(bad_key(name, "a key name is 1 to 64 letters, digits, '.', '_' or '-'"));
        }
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| bad_key(name, &format!("no random bytes: {e}")))?;
        Ok(SecretKey { name: name.to_string(), key: SigningKey::from_bytes(&seed) })
    }

    /// Parses the contents of a secret key file (`origin` names it in errors).
    pub fn parse(text: &str, origin: &str) -> Result<SecretKey> {
        let (name, seed) = split_key(text, origin)?;
        Ok(SecretKey { name: name.to_string(), key: SigningKey::from_bytes(&seed) })
    }

    /// Reads a secret key file, which must not be readable by others.
    pub fn load(path: &Path) -> Result<SecretKey> {
        use std::os::unix::fs::MetadataExt;
        let origin = path.display().to_string();
        let io = |e: std::io::Error| Error::Io { path: path.to_path_buf(), source: Arc::new(e) };
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.len() > 4096 {
            return Err(bad_key(&origin, "larger than a key file"));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(bad_key(&origin, "a secret key must be readable by its owner only (chmod 600)"));
        }
        SecretKey::parse(&std::fs::read_to_string(path).map_err(io)?, &origin)
    }

    /// The secret key file's contents.
    pub fn encode(&self) -> String {
        format!("{}:{}\n", self.name, B64.encode(self.key.to_bytes()))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey { name: self.name.clone(), key: self.key.verifying_key() }
    }

    pub fn sign(&self, message: &[u8], time: u64) -> Sig {
        Sig { key: self.name.clone(), time, bytes: self.key.sign(message).to_bytes() }
    }
}

/// A public key: `NAME:BASE64`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    pub name: String,
    key: VerifyingKey,
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, B64.encode(self.key.as_bytes()))
    }
}

impl PublicKey {
    pub fn parse(text: &str, origin: &str) -> Result<PublicKey> {
        let (name, bytes) = split_key(text, origin)?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| bad_key(origin, "not an ed25519 public key"))?;
        Ok(PublicKey { name: name.to_string(), key })
    }

    /// Whether `sig` is this key's and verifies over `message`.
    pub fn verifies(&self, message: &[u8], sig: &Sig) -> bool {
        sig.key == self.name && self.key.verify_strict(message, &Signature::from_bytes(&sig.bytes)).is_ok()
    }
}

/// The keys a store signs with and trusts, and whether S3 objects must be signed.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    /// The key this host signs what it pushes with.
    pub signer: Option<Arc<SecretKey>>,
    /// Public keys whose signatures are accepted (the signer's own is accepted too).
    pub trusted: Vec<PublicKey>,
    /// Accept objects no trusted key signed although keys are configured.
    pub trust_unsigned: bool,
}

impl Trust {
    /// Whether objects from S3 must carry a trusted signature: once any key is configured,
    /// unless `trust_unsigned` says otherwise.
    pub fn required(&self) -> bool {
        !self.trust_unsigned && (self.signer.is_some() || !self.trusted.is_empty())
    }

    /// The keys whose signatures are accepted.
    pub fn keys(&self) -> Vec<PublicKey> {
        let mut keys = self.trusted.clone();
        if let Some(s) = &self.signer {
            let own = s.public();
            if !keys.contains(&own) {
                keys.push(own);
            }
        }
        keys
    }

    /// The names of the accepted keys, for messages.
    pub fn key_names(&self) -> String {
        let names: Vec<String> = self.keys().into_iter().map(|k| k.name).collect();
        if names.is_empty() { "none".into() } else { names.join(", ") }
    }

    /// The first of `sigs` that an accepted key made over the statement `message(key, time)`.
    pub fn trusted_signer<'a>(&self, sigs: &'a [Sig], message: impl Fn(&str, u64) -> Vec<u8>) -> Option<&'a Sig> {
        let keys = self.keys();
        sigs.iter().find(|s| keys.iter().any(|k| k.verifies(&message(&s.key, s.time), s)))
    }

    /// Whether this host's own trusted-keys (not its signing key alone) accept one of `sigs`.
    pub fn explicitly_trusts(&self, sigs: &[Sig], message: impl Fn(&str, u64) -> Vec<u8>) -> bool {
        sigs.iter().any(|s| self.trusted.iter().any(|k| k.verifies(&message(&s.key, s.time), s)))
    }
}

/// Reads trusted keys from a setting: `NAME:BASE64` entries and files holding such lines (one per
/// line, `#` comments), separated by commas or whitespace.
pub fn parse_trusted_keys(setting: &str) -> Result<Vec<PublicKey>> {
    let mut out = Vec::new();
    for item in setting.split([',', ' ', '\n', '\t']).map(str::trim).filter(|s| !s.is_empty()) {
        if item.starts_with('/') || item.starts_with('.') {
            let path = Path::new(item);
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::Io { path: path.to_path_buf(), source: Arc::new(e) })?;
            for (n, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or("").trim();
                if !line.is_empty() {
                    out.push(PublicKey::parse(line, &format!("{}:{}", path.display(), n + 1))?);
                }
            }
        } else {
            out.push(PublicKey::parse(item, item)?);
        }
    }
    Ok(out)
}

/// Now, in Unix seconds.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sign() {
        let k = SecretKey::generate("ci-1").unwrap();
        let back = SecretKey::parse(&k.encode(), "f").unwrap();
        assert_eq!(back.public(), k.public());
        let p = PublicKey::parse(&k.public().to_string(), "p").unwrap();
        let msg = root_statement(RootKind::Root, "app", &Digest([1; 32]), "ci-1", 5);
        let sig = k.sign(&msg, 5);
        assert!(p.verifies(&msg, &sig));
        assert_eq!(Sig::parse(&sig.encode()), Some(sig.clone()));
        let other = root_statement(RootKind::Result, "app", &Digest([1; 32]), "ci-1", 5);
        assert!(!p.verifies(&other, &sig));
        assert!(format!("{k:?}").contains("redacted"));
    }

    #[test]
    fn malformed_keys_are_named() {
        for (text, why) in
            [("nocolon", "NAME:BASE64"), ("a b:AAAA", "key name"), ("a:!!", "base64"), ("a:AAAA", "32 bytes")]
        {
            let e = PublicKey::parse(text, "keys.txt:3").unwrap_err().to_string();
            assert!(e.contains("keys.txt:3") && e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn statements_cannot_be_confused_by_names() {
        let t = Digest([2; 32]);
        let a = root_statement(RootKind::Root, "x\ntree 00", &t, "k", 1);
        let b = root_statement(RootKind::Root, "x", &t, "k", 1);
        assert_ne!(a, b);
    }
}
