//! `vorpalfs doctor`: checks this host's setup, one line each with a fix; exits non-zero when
//! any check fails.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use crate::daemon::client;
use crate::settings::Settings;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Level {
    #[serde(rename = "ok")]
    Ok,
    #[serde(rename = "warn")]
    Warn,
    #[serde(rename = "FAIL")]
    Fail,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub check: &'static str,
    pub status: Level,
    pub message: String,
    pub fix: Option<String>,
}

fn ok(check: &'static str, message: impl Into<String>) -> Check {
    Check { check, status: Level::Ok, message: message.into(), fix: None }
}

fn warn(check: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Check {
    Check { check, status: Level::Warn, message: message.into(), fix: Some(fix.into()) }
}

fn fail(check: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Check {
    Check { check, status: Level::Fail, message: message.into(), fix: Some(fix.into()) }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn on_path(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(prog)).find(|p| p.is_file())
}

fn fuse() -> Check {
    const C: &str = "fuse";
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        return fail(
            C,
            format!("cannot open /dev/fuse: {e}"),
            "load the module (modprobe fuse); in a container, pass --device /dev/fuse",
        );
    }
    match on_path("fusermount3") {
        Some(p) => ok(C, format!("/dev/fuse opens; fusermount3 is {}", p.display())),
        None if is_root() => {
            warn(C, "/dev/fuse opens; fusermount3 is not on PATH (root mounts without it)", "apt-get install fuse3")
        }
        None => fail(C, "fusermount3 is not on PATH: an ordinary user cannot mount", "apt-get install fuse3"),
    }
}

/// The filesystem type and source of the mount at `path` (from /proc/self/mountinfo).
fn mount_at(path: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_str()?;
    info.lines().rev().find_map(|line| {
        let mut f = line.split(' ');
        let mp = f.nth(4)?.replace("\\040", " ");
        if mp != want {
            return None;
        }
        let rest = line.split(" - ").nth(1)?;
        let mut r = rest.split(' ');
        Some((r.next()?.to_string(), r.next()?.to_string()))
    })
}

fn mountpoint(settings: &Settings, daemon: Option<&crate::daemon::protocol::Status>) -> Check {
    const C: &str = "mountpoint";
    let mp = &settings.mountpoint;
    if let Some(st) = daemon
        && st.mountpoint == *mp
    {
        return ok(C, format!("{} is served by our daemon (pid {})", mp.display(), st.pid));
    }
    match std::fs::metadata(mp) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            fail(C, format!("{} is a stale mount (ENOTCONN: its daemon died)", mp.display()), "vorpalfs umount")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            ok(C, format!("{} does not exist yet (mount creates it)", mp.display()))
        }
        Err(e) => fail(C, format!("cannot stat {}: {e}", mp.display()), "check the path and its parents' permissions"),
        Ok(m) if !m.is_dir() => fail(
            C,
            format!("{} is occupied by a file, not a directory", mp.display()),
            "remove it or set another mountpoint",
        ),
        Ok(_) => match mount_at(mp) {
            Some((fstype, source)) if fstype == "fuse.vorpalfs" || source == "vorpalfs" => warn(
                C,
                format!(
                    "{} is a vorpalfs mount of another daemon (not of {})",
                    mp.display(),
                    settings.store_dir.display()
                ),
                "point --store-dir at that daemon's store, or `vorpalfs umount` it",
            ),
            Some((fstype, source)) => fail(
                C,
                format!("{} is occupied by a {fstype} mount ({source}), not by vorpalfs", mp.display()),
                format!("umount {} or set another mountpoint", mp.display()),
            ),
            None => {
                let empty = std::fs::read_dir(mp).map(|mut d| d.next().is_none()).unwrap_or(true);
                if empty {
                    ok(C, format!("{} is free", mp.display()))
                } else {
                    warn(
                        C,
                        format!("{} is not empty: the mount will hide its files", mp.display()),
                        "empty it or set another mountpoint",
                    )
                }
            }
        },
    }
}

fn read_num(path: &str) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn namespaces() -> Check {
    const C: &str = "namespaces";
    if read_num("/proc/sys/user/max_user_namespaces") == Some(0) {
        return fail(
            C,
            "user namespaces are disabled (max_user_namespaces = 0)",
            "sysctl -w user.max_user_namespaces=15000",
        );
    }
    if is_root() {
        return match std::process::Command::new("unshare")
            .args(["--user", "--mount", "--pid", "--fork", "true"])
            .output()
        {
            Ok(o) if o.status.success() => ok(C, "user, mount and pid namespaces can be made"),
            Ok(o) => fail(
                C,
                format!("unshare failed: {}", String::from_utf8_lossy(&o.stderr).trim()),
                "allow namespaces (a container needs --privileged or a seccomp profile that permits unshare)",
            ),
            Err(e) => warn(C, format!("cannot run unshare to test: {e}"), "apt-get install util-linux"),
        };
    }
    if read_num("/proc/sys/kernel/unprivileged_userns_clone") == Some(0) {
        return fail(
            C,
            "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone = 0)",
            "sysctl -w kernel.unprivileged_userns_clone=1",
        );
    }
    ok(C, "user namespaces are enabled")
}

fn build_users() -> Check {
    const C: &str = "build users";
    if !is_root() {
        return ok(C, "a daemon of an ordinary user builds as that user");
    }
    match vorpalfs_builder::users::Pool::system() {
        Ok(_) => ok(
            C,
            format!("subordinate ids of `{}` in /etc/subuid and /etc/subgid", vorpalfs_builder::users::BUILD_USER),
        ),
        Err(e) => fail(C, e.to_string(), "run scripts/setup.sh"),
    }
}

fn store_dir(settings: &Settings) -> Check {
    const C: &str = "store";
    let dir = &settings.store_dir;
    let m = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return ok(C, format!("{} does not exist yet (made on first use)", dir.display()));
        }
        Err(e) => return fail(C, format!("cannot stat {}: {e}", dir.display()), "check its permissions"),
    };
    if !m.is_dir() {
        return fail(C, format!("{} is not a directory", dir.display()), "remove it or set another store_dir");
    }
    let me = nix::unistd::geteuid().as_raw();
    if m.uid() != me {
        return fail(
            C,
            format!("{} is owned by uid {}, not by you (uid {me})", dir.display(), m.uid()),
            format!("chown -R {me} {} (or use the daemon of its owner)", dir.display()),
        );
    }
    let mode = m.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return fail(
            C,
            format!(
                "{} is {} writable (mode {mode:o})",
                dir.display(),
                if mode & 0o002 != 0 { "world" } else { "group" }
            ),
            format!("chmod 700 {}", dir.display()),
        );
    }
    ok(C, format!("{} is yours, mode {mode:o}", dir.display()))
}

fn disk(settings: &Settings) -> Check {
    const C: &str = "disk";
    let mut at = settings.store_dir.as_path();
    while !at.exists() {
        at = at.parent().unwrap_or(Path::new("/"));
    }
    let st = match nix::sys::statvfs::statvfs(at) {
        Ok(s) => s,
        Err(e) => return warn(C, format!("statvfs {}: {e}", at.display()), "check the store's filesystem"),
    };
    let free = st.blocks_available().saturating_mul(st.fragment_size());
    let gib = |b: u64| format!("{:.1}G", b as f64 / (1u64 << 30) as f64);
    match settings.cache_size {
        Some(budget) if free < budget => warn(
            C,
            format!("{} free on {}, less than the cache budget {}", gib(free), at.display(), gib(budget)),
            "free some space or lower cache_size",
        ),
        _ if free < 1 << 30 => warn(C, format!("only {} free on {}", gib(free), at.display()), "free some space"),
        Some(budget) => ok(C, format!("{} free on {} (cache budget {})", gib(free), at.display(), gib(budget))),
        None => ok(C, format!("{} free on {}", gib(free), at.display())),
    }
}

fn daemon_check(settings: &Settings, st: Option<&Result<crate::daemon::protocol::Status>>) -> Check {
    const C: &str = "daemon";
    let sock = settings.socket();
    match st {
        None => ok(C, format!("not running (socket {}; build, run and mount start one)", sock.display())),
        Some(Err(e)) => fail(
            C,
            format!("{} accepts connections but the status request failed: {e:#}", sock.display()),
            format!("see {}; restart it with vorpalfs umount && vorpalfs mount", settings.daemon_log().display()),
        ),
        Some(Ok(s)) => {
            let ours = env!("CARGO_PKG_VERSION");
            let msg = format!(
                "pid {} version {} serving {} at {} (socket {})",
                s.pid,
                if s.version.is_empty() { "unknown" } else { &s.version },
                s.store.display(),
                s.mountpoint.display(),
                sock.display()
            );
            if s.version != ours {
                warn(C, msg, format!("this command is version {ours}: restart the daemon to run the same"))
            } else {
                ok(C, msg)
            }
        }
    }
}

fn s3(settings: &Settings) -> Vec<Check> {
    const C: &str = "s3";
    let Some(url) = &settings.s3 else {
        return vec![ok(C, "not configured (local only)")];
    };
    let mut out = Vec::new();
    if let Some(ep) = &settings.s3_endpoint {
        let (shown, _) = crate::config::redact_url(ep);
        let hostport = ep.split_once("://").map_or(ep.as_str(), |(_, r)| r);
        let hostport = hostport.split('/').next().unwrap_or("");
        let hostport = hostport.rsplit('@').next().unwrap_or("");
        let default_port = if ep.starts_with("https") { 443 } else { 80 };
        let target = if hostport.contains(':') { hostport.to_string() } else { format!("{hostport}:{default_port}") };
        use std::net::ToSocketAddrs;
        let reach = target
            .to_socket_addrs()
            .map_err(|e| e.to_string())
            .and_then(|mut a| a.next().ok_or_else(|| "no address".to_string()))
            .and_then(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(3)).map_err(|e| e.to_string()));
        if let Err(e) = reach {
            out.push(fail(
                "s3 endpoint",
                format!("{shown} is unreachable: {e}"),
                "check s3_endpoint and that the server runs",
            ));
            return out;
        }
        out.push(ok("s3 endpoint", format!("{shown} accepts connections")));
    }
    let probe = || -> Result<Duration> {
        let cfg = vorpalfs_store::S3Config::parse(url, settings.s3_endpoint.clone())?;
        let policy = vorpalfs_store::Policy {
            attempts: 1,
            small_deadline: Duration::from_secs(10),
            data_deadline: Duration::from_secs(10),
            down_after: u32::MAX,
            ..Default::default()
        };
        let remote = vorpalfs_store::Remote::connect(vorpalfs_store::Backend::S3(cfg), policy, None)?;
        let key = format!("doctor/probe-{}-{}", nix::unistd::gethostname()?.to_string_lossy(), std::process::id());
        let t = Instant::now();
        remote.wait(remote.put(key.clone(), vorpalfs_store::Bytes::from_static(b"vorpalfs doctor probe\n")))?;
        let rtt = t.elapsed();
        let got = remote.wait(remote.get(key.clone(), 1 << 10))?;
        remote.wait(remote.delete(key.clone()))?;
        anyhow::ensure!(got.as_deref() == Some(&b"vorpalfs doctor probe\n"[..]), "the probe object read back differs");
        Ok(rtt)
    };
    match probe() {
        Ok(rtt) => {
            out.push(ok(C, format!("{url}: wrote, read and deleted a probe object; a PUT took {} ms", rtt.as_millis())))
        }
        Err(e) => {
            let mut msg = format!("{url}: {e}");
            for c in e.chain().skip(1) {
                msg.push_str(&format!(": {c}"));
            }
            out.push(fail(
                C,
                msg,
                "check the bucket exists and the credentials (the AWS chain: AWS_ACCESS_KEY_ID, AWS_PROFILE, ...) may read and write it",
            ))
        }
    }
    out
}

fn keys(settings: &Settings) -> Vec<Check> {
    use vorpalfs_store::remote::trust::{SecretKey, parse_trusted_keys};
    let mut out = Vec::new();
    let signer = match &settings.signing_key {
        None => {
            out.push(ok("signing key", "none (pushes are not signed)"));
            None
        }
        Some(p) => match SecretKey::load(p) {
            Ok(k) => {
                out.push(ok("signing key", format!("{} signs as `{}`", p.display(), k.name)));
                Some(k)
            }
            Err(e) => {
                out.push(fail(
                    "signing key",
                    format!("{}: {e}", p.display()),
                    "make one with `vorpalfs key generate NAME` (mode 0600), or fix signing_key",
                ));
                None
            }
        },
    };
    match settings.trusted_keys.as_deref().map(parse_trusted_keys) {
        None => out.push(ok("trusted keys", "none (any root from S3 is taken unless a signing key is set)")),
        Some(Err(e)) => {
            out.push(fail("trusted keys", e.to_string(), "each entry is NAME:BASE64 or a file of such lines"))
        }
        Some(Ok(keys)) => {
            let names: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
            out.push(ok("trusted keys", format!("{} key(s): {}", keys.len(), names.join(", "))));
            if let Some(s) = &signer
                && !keys.contains(&s.public())
            {
                out.push(fail(
                    "signing key trusted",
                    format!(
                        "the signing key `{}` is not among the trusted keys: this host refuses its own pushes",
                        s.name
                    ),
                    format!(
                        "add `vorpalfs key public {}` to trusted_keys",
                        settings.signing_key.as_deref().unwrap_or(Path::new("FILE")).display()
                    ),
                ));
            }
        }
    }
    out
}

pub fn run(settings: &Settings) -> Result<ExitCode> {
    // A daemon that accepts but does not answer is a failed check, not a hung doctor.
    let status = client::connect(settings).map(|c| {
        let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(5)));
        client::status(c, settings)
    });
    let mut checks = vec![fuse()];
    checks.push(mountpoint(settings, status.as_ref().and_then(|s| s.as_ref().ok())));
    checks.push(namespaces());
    checks.push(build_users());
    checks.push(store_dir(settings));
    checks.push(disk(settings));
    checks.push(daemon_check(settings, status.as_ref()));
    checks.extend(s3(settings));
    checks.extend(keys(settings));
    if settings.json {
        println!("{}", serde_json::to_string(&checks)?);
    } else {
        for c in &checks {
            let tag = match c.status {
                Level::Ok => "ok  ",
                Level::Warn => "warn",
                Level::Fail => "FAIL",
            };
            println!("{tag}  {:<20} {}", c.check, c.message);
            if let Some(f) = &c.fix
                && c.status != Level::Ok
            {
                println!("      {:<20} fix: {f}", "");
            }
        }
    }
    let failed = checks.iter().filter(|c| c.status == Level::Fail).count();
    if failed > 0 {
        eprintln!("{failed} check{} failed", if failed == 1 { "" } else { "s" });
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
