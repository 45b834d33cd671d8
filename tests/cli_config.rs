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
fn doctor(env: &Env, extra: &[&str]) -> (bool, Vec<(String, String, String)>, String) {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    args.push("doctor");
    let r = env.run(&args);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout));
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

fn healthy(env: &Env) -> Vec<String> {
    vec!["--mountpoint".into(), env.path("mnt").display().to_string()]
}

#[test]
fn doctor_passes_on_a_healthy_setup_and_names_each_broken_thing() {
    let env = Env::new();
    env.add(&{
        let d = env.path("src");
        write(&d.join("f"), b"x");
        d
    });
    let args = healthy(&env);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
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
