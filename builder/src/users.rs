//! The build users: host uids the steps run as, one per running artifact.
//!
//! A root daemon takes them from the subordinate ids of the system user `vorpalfs` in
//! `/etc/subuid` and `/etc/subgid` (made by `scripts/setup.sh`): uids no login uses and no file
//! of the host belongs to, so a step, root inside its sandbox, is nobody outside it. A daemon
//! run by an ordinary user runs its builds as that user (the only uid it has).

use std::sync::{Arc, Mutex};

/// The user whose subordinate ids are the build users.
pub const BUILD_USER: &str = "vorpalfs";
/// At most this many build users are used (artifacts running at once).
const MAX_USERS: u32 = 1024;

/// Why there are no build users.
#[derive(Debug, thiserror::Error)]
#[error(
    "no build users: a root daemon runs build steps as the subordinate ids of user `{BUILD_USER}` \
     ({file} has no `{BUILD_USER}:FIRST:COUNT` line); scripts/setup.sh creates them, or: \
     useradd --system {BUILD_USER} && usermod --add-subuids 1879048192-1879114751 --add-subgids 1879048192-1879114751 {BUILD_USER}"
)]
pub struct NoBuildUsers {
    pub file: &'static str,
}

/// Free build uids (with the gid of the same number).
#[derive(Clone)]
pub struct Pool {
    free: Arc<Mutex<Vec<u32>>>,
}

/// A build uid, given back to the pool when dropped.
pub struct BuildUser {
    pub uid: u32,
    pub gid: u32,
    pool: Option<Pool>,
}

impl Drop for BuildUser {
    fn drop(&mut self) {
        if let Some(p) = &self.pool {
            p.free.lock().unwrap().push(self.uid);
        }
    }
}

/// `FIRST` and `COUNT` of `user`'s line in a subordinate-id file.
fn range(text: &str, user: &str) -> Option<(u32, u32)> {
    text.lines().find_map(|l| {
        let mut f = l.trim().split(':');
        (f.next()? == user).then_some(())?;
        Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
    })
}

impl Pool {
    /// The build users of this host: from `/etc/subuid` and `/etc/subgid` (the ids both
    /// ranges hold) for a root daemon.
    pub fn system() -> Result<Pool, NoBuildUsers> {
        let read = |f: &'static str| {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            range(&text, BUILD_USER).ok_or(NoBuildUsers { file: f })
        };
        let (u0, un) = read("/etc/subuid")?;
        let (g0, gn) = read("/etc/subgid")?;
        // The same numbers as uid and gid: ids in both ranges.
        let first = u0.max(g0);
        let end = (u0 + un).min(g0 + gn);
        let n = end.saturating_sub(first).min(MAX_USERS);
        if n == 0 {
            return Err(NoBuildUsers { file: "/etc/subgid" });
        }
        // Handed out lowest first.
        Ok(Pool { free: Arc::new(Mutex::new((first..first + n).rev().collect())) })
    }

    /// A free build user (waits for one if every one is building).
    pub fn take(&self) -> BuildUser {
        loop {
            if let Some(uid) = self.free.lock().unwrap().pop() {
                return BuildUser { uid, gid: uid, pool: Some(self.clone()) };
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl BuildUser {
    /// This process's own user (a daemon run by an ordinary user).
    pub fn myself() -> BuildUser {
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        BuildUser { uid, gid, pool: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_read_and_handed_out_once() {
        assert_eq!(range("root:100000:65536\nvorpalfs:5000:10\n", "vorpalfs"), Some((5000, 10)));
        assert_eq!(range("root:1:2\n", "vorpalfs"), None);
        let p = Pool { free: Arc::new(Mutex::new(vec![7, 6, 5])) };
        let (a, b) = (p.take(), p.take());
        assert_eq!((a.uid, b.uid), (5, 6));
        drop(a);
        assert_eq!(p.take().uid, 5);
    }
}
