//! End-to-end tests of `vorpalfs build`: a real daemon and mount, real namespace sandboxes, the
//! examples, every kind of bad input, concurrency, cancellation and crashes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vorpalfs_tests::*;

/// A daemon on a scratch store and mount, and helpers to build manifests against it.
struct Bench {
    // Dropped in this order: the mount first, so that the scratch directory can go.
    mount: Mount,
    env: Env,
}

impl Bench {
    fn new() -> Bench {
        let env = Env::new();
        let mount = env.mount();
        Bench { mount, env }
    }

    /// Writes `<tmp>/<name>/vorpalfs.toml` and returns the directory.
    fn project(&self, name: &str, toml: &str) -> PathBuf {
        let dir = self.env.path(name);
        write(&dir.join("vorpalfs.toml"), toml.as_bytes());
        dir
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.env.cmd(args);
        c.env("VORPALFS_MOUNTPOINT", &self.mount.dir);
        c
    }

    fn run(&self, args: &[&str]) -> Run {
        self.cmd(args).output().expect("spawn vorpalfs").into()
    }

    fn build(&self, dir: &Path, extra: &[&str]) -> Run {
        let mut args = vec!["build", dir.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    fn build_json(&self, dir: &Path, extra: &[&str]) -> serde_json::Value {
        let mut args = vec!["--json", "build", dir.to_str().unwrap()];
        args.extend_from_slice(extra);
        let r = self.run(&args);
        serde_json::from_str(r.ok()).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.stdout))
    }

    /// Names at the mount's top level.
    fn published(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(&self.mount.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Runs a shell command with this mount bound at `/vorpal/store` in a private mount
    /// namespace, so programs that refer to their deps' store paths work.
    fn in_store_ns(&self, script: &str) -> String {
        let out = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mkdir -p /vorpal/store && mount --bind {} /vorpal/store && {script}",
                self.mount.dir.display()
            ))
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn artifact(name: &str, script: &str) -> String {
    format!("[[artifact]]\nname = \"{name}\"\n[[artifact.step]]\nscript = '''\n{script}\n'''\n")
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("examples")
}

#[test]
fn hello_builds_runs_and_is_cached_the_second_time() {
    let b = Bench::new();
    let r = b.build(&examples().join("hello"), &[]);
    let path = r.ok().trim().to_string();
    assert!(r.stderr.contains("1 to build, 0 cached"), "{}", r.stderr);
    let digest = Path::new(&path).file_name().unwrap().to_str().unwrap().to_string();
    assert_eq!(Path::new(&path), b.mount.path(&digest));
    let out = Command::new(Path::new(&path).join("bin/hello")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Hello from vorpalfs!\n");
    // `run` finds it by name.
    let r = b.run(&["run", "hello"]);
    assert_eq!(r.ok(), "Hello from vorpalfs!\n");

    // Cached: nothing runs, the same path is printed, and --rebuild runs it again.
    let r = b.build(&examples().join("hello"), &[]);
    assert_eq!(r.ok().trim(), path);
    assert!(r.stderr.contains("0 to build, 1 cached") && !r.stderr.contains("building"), "{}", r.stderr);
    let r = b.build(&examples().join("hello"), &["--rebuild"]);
    assert_eq!(r.ok().trim(), path);
    assert!(r.stderr.contains("building hello"), "{}", r.stderr);

    // inspect prints the recipe that was hashed.
    let r = b.run(&["inspect", "hello", "--canonical"]);
    let recipe: serde_json::Value = serde_json::from_str(r.ok()).unwrap();
    assert_eq!(recipe["name"], "hello");
    assert_eq!(recipe["steps"][0]["entrypoint"], "bash");
    let r = b.run(&["--json", "inspect", &digest]);
    let v: serde_json::Value = serde_json::from_str(r.ok()).unwrap();
    assert_eq!(v["digest"], digest.as_str());
    b.run(&["inspect", "nothing-like-it"]).fails_with(&["no build of `nothing-like-it`"]);
}

#[test]
fn multi_builds_the_library_once_and_both_programs_in_parallel() {
    let b = Bench::new();
    let report = b.build_json(&examples().join("multi"), &["bundle"]);
    let arts = report["artifacts"].as_array().unwrap();
    assert_eq!(arts.len(), 4);
    let get = |n: &str| arts.iter().find(|a| a["name"] == n).unwrap();
    let (lib, shout, whisper, bundle) = (get("libgreet"), get("shout"), get("whisper"), get("bundle"));
    let t = |a: &serde_json::Value, k: &str| a[k].as_f64().unwrap();
    // Never before their deps; the two programs overlap.
    assert!(t(shout, "started") >= t(lib, "finished") && t(whisper, "started") >= t(lib, "finished"));
    assert!(t(bundle, "started") >= t(shout, "finished").max(t(whisper, "finished")));
    assert!(t(shout, "started") < t(whisper, "finished") && t(whisper, "started") < t(shout, "finished"));
    assert_eq!(bundle["requested"], true);
    assert_eq!(shout["requested"], false);
    let out = b.in_store_ns(&format!("/vorpal/store/{}/bin/bundle", bundle["digest"].as_str().unwrap()));
    assert_eq!(out, "HELLO FROM LIBGREET\nhello from libgreet\n");
    // The alias is a name for `run` and `inspect` too.
    b.run(&["inspect", "greeters"]).ok();
}

#[test]
fn hermetic_build_sees_only_its_rootfs() {
    let b = Bench::new();
    let r = b.build(&examples().join("hermetic"), &[]);
    let paths: Vec<&str> = r.ok().lines().collect();
    assert_eq!(paths.len(), 2, "{}", r.stdout);
    let app = Path::new(paths[1]).join("bin/app");
    let out = Command::new(&app).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("built hermetically on Linux by BusyBox"), "{out:?}");
}

#[test]
fn digests_are_stable_and_aliases_do_not_count() {
    let b = Bench::new();
    let base = artifact("a", "echo one > $VORPAL_OUTPUT/x");
    let d1 = b.project("p1", &base);
    let plan = |dir: &Path| -> String {
        let r = b.build_json(dir, &["--dry-run"]);
        r["artifacts"][0]["digest"].as_str().unwrap().to_string()
    };
    let first = plan(&d1);
    assert_eq!(plan(&d1), first, "same manifest, same digest");
    // Written elsewhere, with an alias, with a timeout: the same recipe.
    let d2 = b.project("p2", &base.replace("name = \"a\"\n", "name = \"a\"\naliases = [\"latest\"]\ntimeout = 60\n"));
    assert_eq!(plan(&d2), first);
    // The script counts.
    let d3 = b.project("p3", &artifact("a", "echo two > $VORPAL_OUTPUT/x"));
    assert_ne!(plan(&d3), first);
    // Source contents, names and modes count.
    let src = "[[source]]\nname = \"s\"\npath = \"src\"\n";
    let with_src = format!(
        "{src}{}",
        artifact("a", "cp -r source/s $VORPAL_OUTPUT/")
            .replace("[[artifact.step]]", "sources = [\"s\"]\n[[artifact.step]]")
    );
    let d4 = b.project("p4", &with_src);
    write(&d4.join("src/f"), b"1");
    let s1 = plan(&d4);
    write(&d4.join("src/f"), b"2");
    let s2 = plan(&d4);
    chmod(&d4.join("src/f"), 0o755);
    let s3 = plan(&d4);
    fs::rename(d4.join("src/f"), d4.join("src/g")).unwrap();
    let s4 = plan(&d4);
    let all = [s1, s2, s3, s4];
    for i in 0..all.len() {
        for j in i + 1..all.len() {
            assert_ne!(all[i], all[j], "source change {i} vs {j}");
        }
    }
    // A second store on the same manifest computes the same digest.
    let other = Bench::new();
    let r = other.build_json(&d1, &["--dry-run"]);
    assert_eq!(r["artifacts"][0]["digest"].as_str().unwrap(), first);
}

#[test]
fn the_sandbox_confines_a_step() {
    let b = Bench::new();
    // A host service the step must not reach.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let toml = format!(
        "{}{}",
        artifact("dep", "echo dep > $VORPAL_OUTPUT/file"),
        artifact(
            "probe",
            &format!(
                r#"o=$VORPAL_OUTPUT
try() {{ if "$@" 2>/dev/null; then echo yes; else echo no; fi; }}
try touch /vorpal/store/new > $o/write-store
try touch $VORPAL_ARTIFACT_DEP/new > $o/write-dep
try touch /usr/new > $o/write-usr
try touch /etc/new > $o/write-etc
try touch /new > $o/write-root
try touch $VORPAL_WORKSPACE/new > $o/write-workspace
try touch /tmp/new > $o/write-tmp
try bash -c 'echo hi > /dev/tcp/127.0.0.1/{port}' > $o/tcp-host
ls /vorpal/store | sort > $o/store-listing
tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' > $o/interfaces
cat /proc/sys/kernel/hostname > $o/hostname
id -u > $o/uid
echo $$ > $o/pid
env | cut -d= -f1 | sort > $o/env
cat $VORPAL_ARTIFACT_DEP/file > $o/dep-content"#
            ),
        )
    )
    .replace("name = \"probe\"\n", "name = \"probe\"\ndeps = [\"dep\"]\n");
    // An unrelated result in the store must stay invisible.
    let other = b.project("other", &artifact("other", "echo other > $VORPAL_OUTPUT/x"));
    b.build(&other, &[]).ok();
    let dir = b.project("p", &toml);
    let report = b.build_json(&dir, &[]);
    let get = |n: &str| report["artifacts"].as_array().unwrap().iter().find(|a| a["name"] == n).unwrap().clone();
    let (dep, probe) = (get("dep"), get("probe"));
    let out = PathBuf::from(probe["path"].as_str().unwrap());
    let read = |f: &str| fs::read_to_string(out.join(f)).unwrap().trim().to_string();
    for f in ["write-store", "write-dep", "write-usr", "write-etc", "write-root", "tcp-host"] {
        assert_eq!(read(f), "no", "{f}");
    }
    assert_eq!(read("write-workspace"), "yes");
    assert_eq!(read("write-tmp"), "yes");
    let dep_d = dep["digest"].as_str().unwrap();
    let probe_d = probe["digest"].as_str().unwrap();
    let mut want = [dep_d.to_string(), probe_d.to_string()];
    want.sort();
    assert_eq!(read("store-listing"), want.join("\n"), "only its deps and its own output");
    assert_eq!(read("interfaces"), "lo");
    assert_eq!(read("hostname"), "vorpal");
    assert_eq!(read("uid"), "0");
    assert_eq!(read("dep-content"), "dep");
    let env: Vec<String> = read("env").lines().map(String::from).collect();
    for v in [
        "HOME",
        "PATH",
        "SOURCE_DATE_EPOCH",
        "TZ",
        "VORPAL_ARTIFACTS",
        "VORPAL_ARTIFACT_DEP",
        &format!("VORPAL_ARTIFACT_{dep_d}"),
        "VORPAL_OUTPUT",
        "VORPAL_WORKSPACE",
    ] {
        assert!(env.iter().any(|e| e == v), "{v} missing from {env:?}");
    }
    assert!(!env.iter().any(|e| e == "VORPALFS_STORE_DIR" || e == "CARGO_MANIFEST_DIR"), "host env leaked: {env:?}");
    drop(listener);
}

#[test]
fn a_timed_out_step_is_killed_with_every_process_it_started() {
    let b = Bench::new();
    let marker = format!("vorpalfs-timeout-{}", std::process::id());
    let dir = b.project(
        "p",
        &artifact("slow", &format!("(exec -a {marker} sleep 1000) &\nexec -a {marker} sleep 1000"))
            .replace("name = \"slow\"\n", "name = \"slow\"\ntimeout = \"1s\"\n"),
    );
    let t = Instant::now();
    let r = b.build(&dir, &[]);
    r.fails_with(&["artifact `slow`: timed out after 1s", "log:"]);
    assert!(t.elapsed() < Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    let left = Command::new("pgrep").args(["-f", &marker]).output().unwrap();
    assert!(left.stdout.is_empty(), "processes survived: {}", String::from_utf8_lossy(&left.stdout));
    assert!(b.published().is_empty());
}

#[test]
fn bad_input_is_named_and_publishes_nothing() {
    let b = Bench::new();
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("syntax", "[[artifact]]\nname = \"a\"\nstep = [\n".into(), vec!["vorpalfs.toml:3:"]),
        (
            "unknown-field",
            "[[artifact]]\nname = \"a\"\nscripts = \"x\"\n[[artifact.step]]\nscript = \"true\"\n".into(),
            vec!["vorpalfs.toml:3:1", "unknown field `scripts`"],
        ),
        (
            "unknown-dep",
            "[[artifact]]\nname = \"a\"\ndeps = [\"zz\"]\n[[artifact.step]]\nscript = \"true\"\n".into(),
            vec!["vorpalfs.toml:3:9", "unknown artifact `zz`"],
        ),
        (
            "cycle",
            format!("{}{}", artifact("a", "true"), artifact("b", "true"))
                .replace("name = \"a\"\n", "name = \"a\"\ndeps = [\"b\"]\n")
                .replace("name = \"b\"\n", "name = \"b\"\ndeps = [\"a\"]\n"),
            vec!["dependency cycle: a → b → a"],
        ),
        (
            "missing-source",
            "[[source]]\nname = \"s\"\npath = \"gone\"\n".into(),
            vec!["vorpalfs.toml:3:8", "gone does not exist"],
        ),
        (
            "step-fails",
            artifact("a", "echo about to fail\necho oops >&2\nexit 3"),
            vec!["artifact `a`: step 1 of 1 exited with status 3", "| oops", "log: "],
        ),
        (
            "writes-outside",
            artifact("a", "echo x > /usr/escape"),
            vec!["artifact `a`: step 1 of 1 exited with status 1", "Read-only file system"],
        ),
        (
            "network",
            artifact("a", "exec 3<>/dev/tcp/1.1.1.1/80"),
            vec!["artifact `a`: step 1 of 1 exited", "Network is unreachable"],
        ),
        (
            "special-file",
            artifact("a", "mkfifo $VORPAL_OUTPUT/pipe"),
            vec!["artifact `a`: cannot publish the output", "FIFO", "pipe"],
        ),
        ("no-manifest", String::new(), vec!["no vorpalfs.toml"]),
    ];
    for (name, toml, needles) in cases {
        let dir = if name == "no-manifest" {
            let d = b.env.path(name);
            fs::create_dir_all(&d).unwrap();
            d
        } else {
            b.project(name, &toml)
        };
        let r = b.build(&dir, &[]);
        assert!(!r.status.success(), "{name}: succeeded");
        for n in needles {
            assert!(r.stderr.contains(n), "{name}: stderr lacks {n:?}:\n{}", r.stderr);
        }
        assert!(b.published().is_empty(), "{name}: published {:?}", b.published());
    }
    b.build(&b.env.path("syntax"), &["nope"]).fails_with(&["vorpalfs.toml:3:"]);
    let ok = b.project("ok", &artifact("a", "true"));
    b.build(&ok, &["nope"]).fails_with(&["no artifact `nope`"]);
    // No leftover workspaces.
    assert_eq!(b.env.workspaces(), Vec::<std::ffi::OsString>::new());
}

#[test]
fn url_sources_are_verified() {
    let b = Bench::new();
    let www = b.env.path("www");
    write(&www.join("data.txt"), b"payload\n");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut server = Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string()])
        .current_dir(&www)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "http server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let manifest = |digest: &str| {
        format!(
            "[[source]]\nname = \"d\"\nurl = \"http://127.0.0.1:{port}/data.txt\"\ndigest = \"{digest}\"\n{}",
            artifact("a", "cp source/d/data.txt $VORPAL_OUTPUT/")
                .replace("[[artifact.step]]", "sources = [\"d\"]\n[[artifact.step]]")
        )
    };
    let wrong = "0".repeat(64);
    let bad = b.project("bad", &manifest(&wrong));
    b.build(&bad, &[]).fails_with(&["source `d`", "data.txt: digest mismatch", &wrong]);
    assert!(b.published().is_empty());
    let good_digest = blake3_hex(b"payload\n");
    let good = b.project("good", &manifest(&good_digest));
    let out = b.build(&good, &[]).ok().trim().to_string();
    assert_eq!(fs::read_to_string(Path::new(&out).join("data.txt")).unwrap(), "payload\n");
    // A daemon told that downloads may have 4 bytes stops this one, whatever its digest.
    let mut env = Env::new();
    env.vars.push(("VORPALFS_MAX_DOWNLOAD".into(), "4".into()));
    let mount = env.mount();
    let small = Bench { mount, env };
    let dir = small.project("good", &manifest(&good_digest));
    small.build(&dir, &[]).fails_with(&["source `d`", "data.txt: larger than the 4 bytes a download may have"]);
    assert!(small.published().is_empty());
    let _ = server.kill();
    let _ = server.wait();
}

fn blake3_hex(data: &[u8]) -> String {
    let d = vorpalfs_store::Digest(*blake3::hash(data).as_bytes());
    d.to_hex()
}

#[test]
fn keep_going_builds_what_does_not_depend_on_the_failure() {
    let b = Bench::new();
    let toml = format!(
        "{}{}{}",
        artifact("bad", "exit 1"),
        artifact("after", "true"),
        artifact("good", "sleep 0.3; echo ok > $VORPAL_OUTPUT/x")
    )
    .replace("name = \"after\"\n", "name = \"after\"\ndeps = [\"bad\"]\n");
    let dir = b.project("p", &toml);
    let r = b.build(&dir, &["-k", "-j", "1"]);
    r.fails_with(&["FAILED bad", "skipped after: dependency `bad` failed", "1 artifact failed"]);
    assert_eq!(b.published().len(), 1, "good was built");
    assert!(r.stdout.contains("/"), "good's path printed: {}", r.stdout);
}

#[test]
fn two_builds_of_one_digest_build_it_once() {
    let b = Bench::new();
    let dir = b.project("p", &artifact("slow", "sleep 1; date +%s%N > $VORPAL_OUTPUT/t"));
    let spawn =
        || b.cmd(&["build", dir.to_str().unwrap()]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (c1, c2) = (spawn(), spawn());
    let (o1, o2) = (c1.wait_with_output().unwrap(), c2.wait_with_output().unwrap());
    assert!(o1.status.success() && o2.status.success());
    assert_eq!(o1.stdout, o2.stdout, "the same path");
    let ran = [&o1, &o2].iter().filter(|o| String::from_utf8_lossy(&o.stderr).contains("building slow")).count();
    assert_eq!(ran, 1, "{}\n{}", String::from_utf8_lossy(&o1.stderr), String::from_utf8_lossy(&o2.stderr));
}

#[test]
fn ctrl_c_cancels_the_running_step_and_publishes_nothing() {
    let b = Bench::new();
    let marker = format!("vorpalfs-cancel-{}", std::process::id());
    let dir = b.project("p", &artifact("slow", &format!("exec -a {marker} sleep 1000")));
    let c = b.cmd(&["build", dir.to_str().unwrap()]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let t = Instant::now();
    while Command::new("pgrep").args(["-f", &marker]).output().unwrap().stdout.is_empty() {
        assert!(t.elapsed() < Duration::from_secs(20), "the step never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
    let out = c.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(Duration::from_millis(500));
    assert!(Command::new("pgrep").args(["-f", &marker]).output().unwrap().stdout.is_empty(), "the step survived");
    assert!(b.published().is_empty());
}

#[test]
fn kill_9_of_the_daemon_mid_build_publishes_nothing_and_a_rebuild_works() {
    let mut b = Bench::new();
    let marker = format!("vorpalfs-kill9-{}", std::process::id());
    let dir = b.project(
        "p",
        &artifact("slow", &format!("echo partial > $VORPAL_OUTPUT/half\n(exec -a {marker} sleep 1000) || true")),
    );
    let c = b.cmd(&["build", dir.to_str().unwrap()]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let t = Instant::now();
    while Command::new("pgrep").args(["-f", &marker]).output().unwrap().stdout.is_empty() {
        assert!(t.elapsed() < Duration::from_secs(20), "the step never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    b.mount.stop_with(libc::SIGKILL);
    let out = c.wait_with_output().unwrap();
    assert!(!out.status.success());
    std::thread::sleep(Duration::from_millis(500));
    assert!(Command::new("pgrep").args(["-f", &marker]).output().unwrap().stdout.is_empty(), "the step survived");
    // A new daemon: nothing was published, the partial output is gone, and the build runs again.
    // (At a new mountpoint: dropping the old `Mount` detaches its own.)
    b.mount = b.env.mount_at(&b.env.path("mnt2"));
    assert!(b.published().is_empty());
    assert_eq!(b.env.workspaces(), Vec::<std::ffi::OsString>::new());
    let ls = b.run(&["store", "ls"]);
    assert_eq!(ls.ok().trim(), "");
    // The same digest builds now; its step ends when its sleep is killed from outside.
    let killer = std::thread::spawn(move || {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if Command::new("pkill").args(["-f", &marker]).status().unwrap().success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let r = b.build(&dir, &[]);
    killer.join().unwrap();
    let path = r.ok().trim().to_string();
    assert_eq!(fs::read_to_string(Path::new(&path).join("half")).unwrap(), "partial\n");
}

#[test]
fn a_step_cannot_see_the_host_daemon_or_other_builds_workspaces() {
    let b = Bench::new();
    let dir = b.project(
        "p",
        &artifact("a", "ls /proc | grep -c '^[0-9]' > $VORPAL_OUTPUT/procs; ls / | sort > $VORPAL_OUTPUT/root"),
    );
    let out = PathBuf::from(b.build(&dir, &[]).ok().trim());
    let procs: u32 = fs::read_to_string(out.join("procs")).unwrap().trim().parse().unwrap();
    // init, the step's shell, ls and grep; the host has many more.
    assert!(procs <= 5, "the step sees {procs} processes");
    let root = fs::read_to_string(out.join("root")).unwrap();
    let root: Vec<&str> = root.split_whitespace().collect();
    for want in ["dev", "etc", "proc", "tmp", "usr", "vorpal"] {
        assert!(root.contains(&want), "/ lacks {want}: {root:?}");
    }
    for host_only in ["home", "root", "var", "opt", "srv", "mnt", "work", "run"] {
        assert!(!root.contains(&host_only), "the host's /{host_only} is visible: {root:?}");
    }
}

#[test]
fn the_sandbox_helper_works_for_an_ordinary_user() {
    // The daemon runs as root here; an ordinary user's builds go through the same helper, which
    // maps that user to root inside its own user namespace.
    let env = Env::new();
    let dir = env.path("sbx");
    for d in ["root", "ws", "out"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    let spec = serde_json::json!({
        "root": dir.join("root"), "workspace": dir.join("ws"), "output": dir.join("out"),
        "output_path": "/vorpal/store/x", "deps": [], "rootfs": null,
        "env": [["PATH", "/usr/bin:/bin"]],
        "steps": [{"argv": ["sh", "-c", "id -u > /vorpal/store/x/uid; touch /usr/x 2>/dev/null || echo ro > /vorpal/store/x/usr"], "env": []}],
    });
    write(&dir.join("spec.json"), spec.to_string().as_bytes());
    // A copy of the binary the user can reach (the target directory may be under /root).
    let bin = env.path("vorpalfs");
    fs::copy(vorpalfs_bin(), &bin).unwrap();
    sh(&format!(
        "chown -R 65534:65534 {0} && chmod 755 {1} {2}",
        dir.display(),
        env.tmp.path().display(),
        bin.display()
    ));
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(&bin)
        .arg("__sandbox")
        .arg(dir.join("spec.json"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::read_to_string(dir.join("out/uid")).unwrap(), "0\n");
    assert_eq!(fs::read_to_string(dir.join("out/usr")).unwrap(), "ro\n");
    let meta = fs::metadata(dir.join("out/uid")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 65534, "files belong to the user outside");
}
