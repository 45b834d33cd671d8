//! End-to-end tests of the configuration files (`config show`), `doctor`, `build NAME` name
//! resolution and shell completions.

use std::fs;
use std::path::Path;

use vorpalfs_tests::s3_server::{BUCKET, S3Server};
use vorpalfs_tests::*;

/// An env whose system and user configuration files are in its scratch directory.
fn configured() -> Env {
    let mut env = Env::new();
    env.vars.push(("VORPALFS_SYSTEM_CONFIG".into(), env.path("etc/config.toml").display().to_string()));
    env.vars.push(("XDG_CONFIG_HOME".into(), env.path("xdg").display().to_string()));
    env
}

fn show(env: &Env, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["config", "show"]);
    let r = env.run(&args);
    serde_json::from_str(r.ok()).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.stdout))
}

#[test]
fn precedence_is_system_file_user_file_environment_flag() {
    let env = configured();
    let sys = env.path("etc/config.toml");
    let user = env.path("xdg/vorpalfs/config.toml");
    write(&sys, b"cache_size = \"1G\"\nbuild_space = 1024\nmax_download = \"2M\"\nadmin_group = \"wheel\"\njobs = 3\n");
    write(&user, b"build_space = \"2K\"\nmax_download = \"3M\"\nadmin_group = \"staff\"\n");
    let mut cmd_env = configured();
    cmd_env.store = env.store.clone();
    cmd_env.vars = env.vars.clone();
    cmd_env.vars.push(("VORPALFS_MAX_DOWNLOAD".into(), "4M".into()));
    cmd_env.vars.push(("VORPALFS_ADMIN_GROUP".into(), "adm".into()));
    let v = show(&cmd_env, &["--admin-group", "root"]);
    let s = &v["settings"];
    assert_eq!(s["cache_size"]["value"], 1 << 30);
    assert_eq!(s["cache_size"]["source"], sys.display().to_string());
    assert_eq!(s["build_space"]["value"], 2048);
    assert_eq!(s["build_space"]["source"], user.display().to_string());
    assert_eq!(s["max_download"]["value"], 4 << 20);
    assert_eq!(s["max_download"]["source"], "env VORPALFS_MAX_DOWNLOAD");
    assert_eq!(s["admin_group"]["value"], "root");
    assert_eq!(s["admin_group"]["source"], "flag --admin-group");
    assert_eq!(s["jobs"]["value"], 3);
    assert_eq!(s["mountpoint"]["source"], "default");
    assert_eq!(v["files"].as_array().unwrap().len(), 2);

    // VORPALFS_CONFIG replaces the user's file.
    let other = env.path("other.toml");
    write(&other, b"build_space = \"5K\"\nsigning_key = \"keys/k.secret\"\n");
    let mut e2 = configured();
    e2.vars = env.vars.clone();
    e2.vars.push(("VORPALFS_CONFIG".into(), other.display().to_string()));
    let v = show(&e2, &[]);
    assert_eq!(v["settings"]["build_space"]["value"], 5 << 10);
    // Relative paths are the file's directory's.
    assert_eq!(v["settings"]["signing_key"]["value"], env.path("keys/k.secret").display().to_string());

    // Credentials in an endpoint URL are redacted.
    write(&other, b"s3 = \"s3://b/p\"\ns3_endpoint = \"http://me:secret@127.0.0.1:9\"\n");
    let v = show(&e2, &[]);
    assert_eq!(v["settings"]["s3_endpoint"]["value"], "http://<redacted>@127.0.0.1:9");
    assert!(!v.to_string().contains("secret"));
    let r = e2.run(["config", "show"]);
    assert!(r.ok().contains("redacted") && !r.stdout.contains("secret"), "{}", r.stdout);
}

#[test]
fn a_bad_key_or_value_names_file_and_line() {
    let env = configured();
    let user = env.path("xdg/vorpalfs/config.toml");
    write(&user, b"cache_size = \"1G\"\n\ncache_sise = \"2G\"\n");
    env.run(["config", "show"]).fails_with(&[&format!("{}:3:", user.display()), "cache_sise"]);
    write(&user, b"jobs = \"many\"\n");
    env.run(["config", "show"]).fails_with(&[&format!("{}:1:", user.display())]);
    write(&user, b"cache_size = \"lots\"\n");
    env.run(["config", "show"]).fails_with(&[&format!("{}:1:", user.display()), "not a size"]);
}

#[test]
fn completions_mention_the_subcommands() {
    let env = Env::new();
    for shell in ["bash", "zsh", "fish"] {
        let r = env.run(["completions", shell]);
        let out = r.ok();
        assert!(out.contains("doctor") && out.contains("build") && out.contains("config"), "{shell}: {out}");
    }
    let dir = env.path("man");
    env.run([Path::new("manpages"), dir.as_path()]).ok();
    assert!(dir.join("vorpalfs.1").is_file() && dir.join("vorpalfs-build.1").is_file());
}

/// `doctor --json`: (exit success, the checks by name → (status, message)).
/// `--json EXTRA... doctor`.
fn doctor_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    args.push("doctor");
    args
}

fn doctor(env: &Env, extra: &[&str]) -> (bool, Vec<(String, String, String)>, String) {
    parse_doctor(env.run(doctor_args(extra)))
}

fn parse_doctor(r: Run) -> (bool, Vec<(String, String, String)>, String) {
    let v: serde_json::Value =
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", r.stdout, r.stderr));
    let checks = v
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["check"].as_str().unwrap().to_string(),
                c["status"].as_str().unwrap().to_string(),
                c["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (r.status.success(), checks, r.stdout)
}

#[track_caller]
fn assert_fails(env: &Env, extra: &[&str], check: &str) {
    let (success, checks, out) = doctor(env, extra);
    assert!(!success, "doctor succeeded: {out}");
    assert!(checks.iter().any(|(c, s, _)| c == check && s == "FAIL"), "no failed {check} check: {out}");
}

/// A store holding one root, so the store checks have something to open.
fn add_a_root(env: &Env) {
    let d = env.path("src");
    write(&d.join("f"), b"x");
    env.add(&d);
}

/// A free mountpoint of this env: with it, doctor finds nothing broken.
fn free_mountpoint(env: &Env) -> String {
    env.path("mnt").display().to_string()
}

#[test]
fn doctor_passes_on_a_healthy_setup_and_names_each_broken_thing() {
    let env = Env::new();
    add_a_root(&env);
    let mnt = free_mountpoint(&env);
    let args = ["--mountpoint", mnt.as_str()];
    let (success, checks, out) = doctor(&env, &args);
    assert!(success, "{out}");
    for c in ["fuse", "mountpoint", "namespaces", "store", "disk", "daemon"] {
        assert!(checks.iter().any(|(n, _, _)| n == c), "no {c} check: {out}");
    }
    // The human form is one line per check.
    let r = env.run(["--mountpoint", args[1], "doctor"]);
    assert!(r.ok().contains("store"), "{}", r.stdout);

    // A world-writable store.
    chmod(&env.store, 0o777);
    assert_fails(&env, &args, "store");
    chmod(&env.store, 0o700);

    // A mountpoint that is a file, and one that another filesystem occupies.
    let file = env.path("file");
    write(&file, b"");
    assert_fails(&env, &["--mountpoint", file.to_str().unwrap()], "mountpoint");
    let occupied = env.path("tmpfs");
    fs::create_dir_all(&occupied).unwrap();
    sh(&format!("mount -t tmpfs none {}", occupied.display()));
    assert_fails(&env, &["--mountpoint", occupied.to_str().unwrap()], "mountpoint");
    sh(&format!("umount {}", occupied.display()));

    // Keys: a malformed signing key, and one the trusted keys do not include.
    let bad = env.path("bad.secret");
    write(&bad, b"not a key\n");
    chmod(&bad, 0o600);
    assert_fails(&env, &[args[0], args[1], "--signing-key", bad.to_str().unwrap()], "signing key");
    let unreadable = env.path("nothing.secret");
    assert_fails(&env, &[args[0], args[1], "--signing-key", unreadable.to_str().unwrap()], "signing key");
    let keys = env.path("keys");
    let r = env.run(["key", "generate", "one", "--dir", keys.to_str().unwrap()]);
    r.ok();
    let two = env.run(["key", "generate", "two", "--dir", keys.to_str().unwrap()]);
    let two_public = two.ok().trim().to_string();
    let secret = keys.join("one.secret");
    assert_fails(
        &env,
        &[args[0], args[1], "--signing-key", secret.to_str().unwrap(), "--trusted-keys", &two_public],
        "signing key trusted",
    );
}

/// Files bound read-only over system paths: (the file, the path it hides).
type Binds<'a> = &'a [(&'a Path, &'a str)];

/// `doctor --json` in a private mount namespace where each `(file, over)` is bind-mounted
/// read-only over the path `over` first: a broken host, for doctor alone.
fn doctor_on_a_host_with(env: &Env, extra: &[&str], binds: Binds) -> (bool, Vec<(String, String, String)>, String) {
    let inner = env.cmd(doctor_args(extra));
    let script: String =
        binds.iter().map(|(f, over)| format!("mount --bind -o ro '{}' '{over}' && ", f.display())).collect();
    let mut c = std::process::Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c", &format!("{script}exec \"$0\" \"$@\"")]);
    c.arg(inner.get_program()).args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    parse_doctor(c.output().expect("spawn unshare").into())
}

#[test]
fn doctor_names_a_host_without_fuse_namespaces_or_build_users() {
    let env = Env::new();
    let mnt = free_mountpoint(&env);
    let args = ["--mountpoint", mnt.as_str()];
    let empty = env.path("empty");
    write(&empty, b"");
    let zero = env.path("zero");
    write(&zero, b"0\n");
    // (files bound over system paths, the check that must fail, what it must say)
    let cases: [(Binds, &str, &str); 3] = [
        // A read-only file where /dev/fuse should be: it cannot be opened for writing.
        (&[(&empty, "/dev/fuse")], "fuse", "cannot open /dev/fuse"),
        (&[(&zero, "/proc/sys/user/max_user_namespaces")], "namespaces", "user namespaces are disabled"),
        (&[(&empty, "/etc/subuid"), (&empty, "/etc/subgid")], "build users", "/etc/sub"),
    ];
    for (binds, check, says) in cases {
        let (success, checks, out) = doctor_on_a_host_with(&env, &args, binds);
        assert!(!success, "doctor succeeded without {check}: {out}");
        assert!(
            checks.iter().any(|(c, s, m)| c == check && s == "FAIL" && m.contains(says)),
            "no failed {check} check saying {says:?}: {out}"
        );
        // Only what was broken is reported broken.
        let others: Vec<_> = checks.iter().filter(|(c, s, _)| c != check && s == "FAIL").collect();
        assert!(others.is_empty(), "{check}: other checks failed too: {others:?}");
    }
}

#[test]
fn doctor_names_a_store_it_cannot_use_a_dead_daemon_and_a_full_budget() {
    let env = Env::new();
    add_a_root(&env);
    let mnt = free_mountpoint(&env);
    let args = ["--mountpoint", mnt.as_str()];

    // A store of another user.
    std::os::unix::fs::chown(&env.store, Some(65534), Some(65534)).unwrap();
    let (_, checks, out) = doctor(&env, &args);
    assert!(checks.iter().any(|(c, s, m)| c == "store" && s == "FAIL" && m.contains("owned by uid 65534")), "{out}");
    std::os::unix::fs::chown(&env.store, Some(0), Some(0)).unwrap();

    // A budget larger than the disk: a warning, not a failure.
    let (success, checks, out) = doctor(&env, &[args[0], args[1], "--cache-size", "1000000G"]);
    assert!(success, "{out}");
    assert!(
        checks.iter().any(|(c, s, m)| c == "disk" && s == "warn" && m.contains("less than the cache budget")),
        "{out}"
    );

    // A socket nobody answers on (connections wait in its backlog): a hung daemon. Doctor
    // gives up on it after a few seconds.
    let listener = std::os::unix::net::UnixListener::bind(env.store.join("daemon.sock")).unwrap();
    assert_fails(&env, &args, "daemon");
    drop(listener);

    // A store path that is a file.
    let file = env.path("not-a-dir");
    write(&file, b"");
    let mut other = Env::new();
    other.store = file;
    assert_fails(&other, &["--mountpoint", &free_mountpoint(&other)], "store");
}

#[test]
fn doctor_checks_s3_endpoint_and_bucket() {
    let s3 = S3Server::start();
    let mut env = Env::new();
    for (k, v) in S3Server::env() {
        env.vars.push((k.into(), v.into()));
    }
    let mnt = env.path("mnt").display().to_string();
    let endpoint = format!("http://127.0.0.1:{}", s3.proxy_port);
    let good = format!("s3://{BUCKET}/doctor");
    let (success, checks, out) = doctor(&env, &["--mountpoint", &mnt, "--s3", &good, "--s3-endpoint", &endpoint]);
    assert!(success, "{out}");
    assert!(checks.iter().any(|(c, s, _)| c == "s3" && s == "ok"), "{out}");
    // No probe object is left behind.
    assert!(s3.keys("doctor").is_empty(), "{:?}", s3.keys("doctor"));

    assert_fails(&env, &["--mountpoint", &mnt, "--s3", "s3://no-such-bucket/x", "--s3-endpoint", &endpoint], "s3");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    assert_fails(
        &env,
        &["--mountpoint", &mnt, "--s3", &good, "--s3-endpoint", &format!("http://127.0.0.1:{closed}")],
        "s3 endpoint",
    );
}

#[test]
fn doctor_reports_a_stale_mount() {
    let env = Env::new();
    let mut m = env.mount();
    let dir = m.dir.clone();
    // SIGKILL leaves the FUSE mount without its daemon: stat gives ENOTCONN.
    m.stop_with(libc::SIGKILL);
    assert_fails(&env, &["--mountpoint", dir.to_str().unwrap()], "mountpoint");
    drop(m);
}

// ----- build NAME -----

fn project(env: &Env) -> std::path::PathBuf {
    let dir = env.path("proj");
    let art = |name: &str| {
        format!(
            "[[artifact]]\nname = \"{name}\"\n[[artifact.step]]\nscript = '''\necho {name} > $VORPAL_OUTPUT/out\n'''\n"
        )
    };
    write(&dir.join("vorpalfs.toml"), format!("{}{}", art("zstd"), art("zlib")).as_bytes());
    dir
}

#[test]
fn build_words_are_names_or_paths() {
    let env = Env::new();
    let mount = env.mount();
    let dir = project(&env);
    let run = |args: &[&str]| -> Run {
        let mut c = env.cmd(args);
        c.env("VORPALFS_MOUNTPOINT", &mount.dir).current_dir(&dir);
        c.output().unwrap().into()
    };
    // A name of ./vorpalfs.toml.
    let r = run(&["--json", "build", "zstd"]);
    let v: serde_json::Value = serde_json::from_str(r.ok()).unwrap();
    let built: Vec<&str> = v["artifacts"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(built, ["zstd"]);
    // A path, and a path then a name, still work; so does -f.
    run(&["build", "."]).ok();
    run(&["build", ".", "zlib"]).ok();
    run(&["build", "-f", "vorpalfs.toml", "zlib"]).ok();
    // Unknown: the nearest names.
    run(&["build", "zstf"]).fails_with(&["no artifact `zstf`", "zstd"]);
    run(&["inspect", "zlb"]).fails_with(&["zlib"]);
    run(&["run", "zsdt"]).fails_with(&["zstd"]);
    // Ambiguous: both a path and a name.
    fs::create_dir_all(dir.join("zstd")).unwrap();
    run(&["build", "zstd"]).fails_with(&["ambiguous", "zstd", "vorpalfs.toml"]);
    // A directory path from elsewhere.
    let mut c = env.cmd(["build", "proj", "zlib"]);
    c.env("VORPALFS_MOUNTPOINT", &mount.dir).current_dir(env.tmp.path());
    Run::from(c.output().unwrap()).ok();
    drop(mount);
}

#[test]
fn metrics_are_served_only_on_loopback_or_a_unix_socket() {
    let env = Env::new();
    env.run(["--metrics", "0.0.0.0:9464", "config", "show"]).fails_with(&["0.0.0.0:9464", "only a loopback address"]);
    let shown = show(&env, &["--metrics", "127.0.0.1:9464"]);
    assert_eq!(shown["settings"]["metrics"]["value"], "127.0.0.1:9464", "{shown}");
    assert_eq!(shown["settings"]["metrics"]["source"], "flag --metrics", "{shown}");
}
