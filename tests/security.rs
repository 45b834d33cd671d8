//! Security on a shared host: hostile build steps, hostile clients, a private store. Each test
//! is named after what it prevents; each found, before the fix, that the attack worked.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use vorpalfs_tests::*;

/// The attempts a hostile step makes, each expected to fail. The script prints one line per
/// attempt, `refused: WHAT` or `ALLOWED: WHAT`, to its log and to `$VORPAL_OUTPUT/report`.
fn hostile_script(dep: &str, daemon_pid: u32, store: &Path, leaked: &str) -> String {
    let attempts: &[(&str, String)] = &[
        ("remount a dep writable", format!("mount -o remount,bind,rw {dep}")),
        ("remount /usr writable", "mount -o remount,bind,rw /usr".into()),
        ("remount / writable", "mount -o remount,rw /".into()),
        ("write into a dep", format!("touch {dep}/x")),
        ("write into /usr", "touch /usr/x".into()),
        ("write /proc/sys", "echo 1 > /proc/sys/kernel/printk_ratelimit".into()),
        ("write core_pattern", "echo '|/tmp/x' > /proc/sys/kernel/core_pattern".into()),
        ("write sysrq-trigger", "echo h > /proc/sysrq-trigger".into()),
        ("mount a tmpfs over a dep", format!("mount -t tmpfs none {dep}")),
        ("unmount a dep", format!("umount -l {dep}")),
        (
            "ptrace a process",
            "python3 -c 'import ctypes,sys; sys.exit(ctypes.CDLL(None).ptrace(16, 1, 0, 0) != 0)'".into(),
        ),
        ("signal a host process (the daemon)", format!("kill -0 {daemon_pid}")),
        ("reach the daemon's socket", format!("test -e {}/daemon.sock", store.display())),
        ("open a packet socket", "python3 -c 'import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW)'".into()),
        (
            "open a raw socket",
            "python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)'".into(),
        ),
        (
            "reach an address but lo",
            "python3 -c 'import socket; socket.create_connection((\"10.0.2.2\", 22), 1)'".into(),
        ),
        ("read host /root", "ls /root".into()),
        ("read host /home", "ls /home".into()),
        ("read the store directory", format!("ls {}", store.display())),
        ("create a device node", "mknod $VORPAL_OUTPUT/null c 1 3".into()),
        ("create a user namespace", "unshare -U true".into()),
        (
            "load a kernel module",
            "python3 -c 'import ctypes,sys; sys.exit(ctypes.CDLL(None).syscall(313, -1, b\"\", 0) != 0)'".into(),
        ),
        (
            "use a descriptor the daemon inherited",
            format!(
                "python3 -c 'import os,sys; sys.exit(0 if any(os.readlink(\"/proc/self/fd/\"+f) == \"{leaked}\" \
                 for f in os.listdir(\"/proc/self/fd\")) else 1)'"
            ),
        ),
    ];
    let mut s = String::from(
        "try() { if sh -c \"$2\" >/dev/null 2>&1; then echo \"ALLOWED: $1\"; else echo \"refused: $1\"; fi; }\n",
    );
    for (what, cmd) in attempts {
        s += &format!("try {what:?} {:?} | tee -a $VORPAL_OUTPUT/report\n", cmd);
    }
    s
}

fn assert_all_refused(report: &str) {
    let lines: Vec<&str> = report.lines().collect();
    assert!(lines.len() >= 20, "the report is incomplete:\n{report}");
    for l in &lines {
        println!("{l}");
    }
    let allowed: Vec<&&str> = lines.iter().filter(|l| l.starts_with("ALLOWED")).collect();
    assert!(allowed.is_empty(), "a hostile step got through: {allowed:?}");
}

/// Opens a file without close-on-exec, so that every process started after inherits it.
fn leak(path: &str) -> i32 {
    let c = std::ffi::CString::new(path).unwrap();
    // SAFETY: open(2) of a NUL-terminated path; the descriptor is deliberately leaked.
    unsafe { libc::open(c.as_ptr(), libc::O_RDONLY) }
}

/// A daemon on a scratch store.
struct Bench {
    mount: Mount,
    env: Env,
}

impl Bench {
    fn new(vars: &[(&str, &str)]) -> Bench {
        let mut env = Env::new();
        for (k, v) in vars {
            env.vars.push((k.to_string(), v.to_string()));
        }
        let mount = env.mount();
        Bench { mount, env }
    }

    fn build(&self, name: &str, toml: &str) -> Run {
        let dir = self.env.path(name);
        write(&dir.join("vorpalfs.toml"), toml.as_bytes());
        self.env
            .cmd(["build", dir.to_str().unwrap()])
            .env("VORPALFS_MOUNTPOINT", &self.mount.dir)
            .output()
            .unwrap()
            .into()
    }
}

fn artifact(name: &str, deps: &[&str], script: &str) -> String {
    let deps: Vec<String> = deps.iter().map(|d| format!("{d:?}")).collect();
    format!(
        "[[artifact]]\nname = \"{name}\"\ndeps = [{}]\ntimeout = 60\n[[artifact.step]]\nscript = '''\n{script}\n'''\n",
        deps.join(", ")
    )
}

#[test]
fn a_hostile_step_cannot_escape_the_sandbox_of_a_root_daemon() {
    let fd = leak("/etc/hostname");
    let b = Bench::new(&[]);
    // SAFETY: our own descriptor; the daemon has inherited it by now.
    unsafe { libc::close(fd) };
    let dep_toml = artifact("dep", &[], "echo dep > $VORPAL_OUTPUT/file");
    let r = b.build("dep", &dep_toml);
    let dep = Path::new(r.ok().trim()).file_name().unwrap().to_str().unwrap().to_string();
    let script = hostile_script(&format!("/vorpal/store/{dep}"), b.mount.pid(), &b.env.store, "/etc/hostname");
    let toml = format!("{dep_toml}\n{}", artifact("hostile", &["dep"], &script));
    let r = b.build("hostile", &toml);
    let out = r.ok().lines().last().unwrap().to_string();
    let report = fs::read_to_string(Path::new(&out).join("report")).unwrap();
    assert_all_refused(&report);
    // Nothing changed on the host.
    assert!(!Path::new("/usr/x").exists());
    assert_eq!(fs::read_to_string(b.mount.path(&dep).join("file")).unwrap(), "dep\n");
}

#[test]
fn a_hostile_step_cannot_escape_the_sandbox_of_an_ordinary_user() {
    // The helper run directly as an ordinary user (as a user's own daemon runs it), with a dep
    // bound read-only and the same attempts.
    let env = Env::new();
    let dir = env.path("sb");
    for d in ["root", "ws", "out", "dep"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    write(&dir.join("dep/file"), b"dep\n");
    // A host process: this test's (the sandbox's own pids are small).
    let script = hostile_script("/vorpal/store/dep", std::process::id(), &env.store, "/etc/hostname");
    write(&dir.join("ws/hostile.sh"), script.as_bytes());
    let spec = serde_json::json!({
        "root": dir.join("root"), "workspace": dir.join("ws"), "output": dir.join("out"),
        "output_path": "/vorpal/store/out", "deps": [[dir.join("dep"), "/vorpal/store/dep"]], "rootfs": null,
        "env": [["PATH", "/usr/bin:/bin"], ["VORPAL_OUTPUT", "/vorpal/store/out"]],
        "steps": [{"argv": ["bash", "/vorpal/workspace/hostile.sh"], "env": []}],
    });
    write(&dir.join("spec.json"), spec.to_string().as_bytes());
    sh(&format!("chown -R {USER}:{USER} {} && chown root:root {}/dep/file", dir.display(), dir.display()));
    let fd = leak("/etc/hostname");
    let out = env.as_user(["__sandbox", dir.join("spec.json").to_str().unwrap()]).output().unwrap();
    // SAFETY: our own descriptor.
    unsafe { libc::close(fd) };
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_all_refused(&fs::read_to_string(dir.join("out/report")).unwrap());
    assert_eq!(fs::metadata(dir.join("out/report")).unwrap().uid(), USER, "files belong to the user outside");
}

#[test]
fn a_step_is_an_unprivileged_uid_on_the_host() {
    let b = Bench::new(&[]);
    let dir = b.env.path("who");
    write(&dir.join("vorpalfs.toml"), artifact("who", &[], "echo hi > $VORPAL_WORKSPACE/mine; false").as_bytes());
    // The failed step's workspace, kept: its files belong to a build user, not to root.
    let r: Run = b
        .env
        .cmd(["build", "--keep-failed", b.env.path("who").to_str().unwrap()])
        .env("VORPALFS_MOUNTPOINT", &b.mount.dir)
        .output()
        .unwrap()
        .into();
    let kept = r.stderr.split("workspace kept at ").nth(1).and_then(|s| s.split(')').next()).expect("kept").to_string();
    let uid = fs::metadata(Path::new(&kept).join("workspace/mine")).unwrap().uid();
    let _ = Command::new("umount").arg("-l").arg(&kept).status();
    let _ = fs::remove_dir_all(&kept);
    assert!(uid >= 1 << 20, "the step's file belongs to uid {uid}");
}

#[test]
fn a_fork_bomb_is_bounded_and_the_host_stays_responsive() {
    let b = Bench::new(&[("VORPALFS_BUILD_PROCESSES", "200")]);
    let dir = b.env.path("bomb");
    // Every process of the bomb carries the marker in its command line (forks of one bash).
    let marker = format!("vorpalfs-bomb-{}", std::process::id());
    let toml = format!(
        "[[artifact]]\nname = \"bomb\"\ntimeout = 4\n[[artifact.step]]\nscript = \"bash -c 'b() {{ b | b & }}; b; sleep 30' {marker}\"\n"
    );
    write(&dir.join("vorpalfs.toml"), toml.as_bytes());
    let mut c = b.env.cmd(["build", dir.to_str().unwrap()]).env("VORPALFS_MOUNTPOINT", &b.mount.dir).spawn().unwrap();
    let t = Instant::now();
    let mut worst = Duration::ZERO;
    while t.elapsed() < Duration::from_secs(3) {
        let s = Instant::now();
        assert!(Command::new("true").status().unwrap().success());
        worst = worst.max(s.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!c.wait().unwrap().success(), "the bomb was stopped by its timeout");
    assert!(worst < Duration::from_secs(1), "the host took {worst:?} to run `true`");
    let t = Instant::now();
    while !Command::new("pgrep").args(["-f", &marker]).output().unwrap().stdout.is_empty() {
        assert!(t.elapsed() < Duration::from_secs(5), "processes of the bomb are left");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_step_cannot_fill_the_disk() {
    let b = Bench::new(&[("VORPALFS_BUILD_SPACE", "64M")]);
    let r = b.build("fill", &artifact("fill", &[], "dd if=/dev/zero of=$VORPAL_OUTPUT/fill bs=1M count=500"));
    r.fails_with(&["artifact `fill`: step 1 of 1 exited", "No space left on device"]);
}

#[test]
fn a_setuid_file_from_a_step_is_served_without_its_setuid_bit() {
    let b = Bench::new(&[]);
    let r =
        b.build("suid", &artifact("suid", &[], "cp /bin/true $VORPAL_OUTPUT/suid && chmod 4755 $VORPAL_OUTPUT/suid"));
    let path = Path::new(r.ok().trim()).join("suid");
    let mode = fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o555, "{mode:o}");
}

#[test]
fn store_add_reads_with_the_clients_rights() {
    let b = Bench::new(&[]);
    // A directory the user owns, holding a symlink to a root-only file and a root-only file.
    let src = b.env.path("src");
    write(&src.join("mine.txt"), b"mine\n");
    write(&b.env.path("secret/key"), b"root's secret\n");
    chmod(&b.env.path("secret"), 0o700);
    std::os::unix::fs::symlink(b.env.path("secret/key"), src.join("link")).unwrap();
    sh(&format!("chown -R {USER}:{USER} {}", src.display()));
    let r = b.env.run_as_user(["store", "add", src.to_str().unwrap()]);
    let digest = r.ok().trim().to_string();
    // The symlink is stored as a symlink, not as the file it points at.
    let link = b.mount.path(&digest).join("link");
    assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    // A directory the user cannot read is refused, with the user's rights, not read as root.
    b.env.run_as_user(["store", "add", b.env.path("secret").to_str().unwrap()]).fails_with(&["Permission denied"]);
}

#[test]
fn store_add_never_follows_a_symlink_swapped_in_during_the_ingest() {
    let b = Bench::new(&[]);
    let src = b.env.path("src");
    // A large file to make the ingest take a while, and a subdirectory the user swaps for a
    // symlink to a root-only directory, back and forth, as fast as it can.
    write(&src.join("big.bin"), &random_bytes(48 << 20, 1));
    write(&src.join("sub/file"), b"harmless\n");
    write(&b.env.path("secret/file"), b"root's secret\n");
    chmod(&b.env.path("secret"), 0o700);
    sh(&format!("chown -R {USER}:{USER} {}", src.display()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (stop, src, secret) = (stop.clone(), src.clone(), b.env.path("secret"));
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = fs::rename(src.join("sub"), src.join("sub.real"));
                let _ = std::os::unix::fs::symlink(&secret, src.join("sub"));
                std::thread::sleep(Duration::from_micros(200));
                let _ = fs::remove_file(src.join("sub"));
                let _ = fs::rename(src.join("sub.real"), src.join("sub"));
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    let mut stored = 0;
    for _ in 0..6 {
        let r = b.env.run_as_user(["store", "add", src.to_str().unwrap()]);
        if r.status.success() {
            stored += 1;
            // What the store holds at sub/file (a symlink is not followed: `cat` refuses it).
            let cat = b.env.run(["store", "cat", &format!("{}/sub/file", r.stdout.trim())]);
            if cat.status.success() {
                assert_eq!(cat.stdout, "harmless\n", "the secret was stored");
            }
        } else {
            // Caught in the act: the walk saw one thing and then another.
            assert!(
                r.stderr.contains("changed")
                    || r.stderr.contains("Permission denied")
                    || r.stderr.contains("No such file"),
                "{}",
                r.stderr
            );
        }
    }
    println!("{stored} of 6 adds completed while the swapper ran");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    swapper.join().unwrap();
    let all = sh(&format!("grep -rl \"root's secret\" {} || true", b.mount.dir.display()));
    assert!(all.trim().is_empty(), "the secret is in the store: {all}");
}

#[test]
fn a_manifest_cannot_publish_files_outside_its_directory() {
    let b = Bench::new(&[]);
    write(&b.env.path("private/id_rsa"), b"my key\n");
    chmod(&b.env.path("private"), 0o700);
    let proj = b.env.path("proj");
    write(
        &proj.join("vorpalfs.toml"),
        b"[[source]]\nname = \"s\"\npath = \"../private\"\n[[artifact]]\nname = \"a\"\nsources = [\"s\"]\n[[artifact.step]]\nscript = \"true\"\n",
    );
    let r: Run =
        b.env.cmd(["build", proj.to_str().unwrap()]).env("VORPALFS_MOUNTPOINT", &b.mount.dir).output().unwrap().into();
    r.fails_with(&["source `s`", "not readable by everyone, and outside the manifest's directory"]);
    // A public file outside is fine (the hermetic example takes /bin/busybox), and the user may
    // allow the private one explicitly.
    let r: Run = b
        .env
        .cmd(["build", "--allow-outside-sources", proj.to_str().unwrap()])
        .env("VORPALFS_MOUNTPOINT", &b.mount.dir)
        .output()
        .unwrap()
        .into();
    r.ok();
}

#[test]
fn export_cannot_be_turned_into_a_chmod_of_another_file() {
    let b = Bench::new(&[]);
    let src = b.env.path("src");
    for i in 0..200 {
        write(&src.join(format!("f{i:03}")), format!("{i}\n").as_bytes());
    }
    let digest = b.env.add(&src);
    // A root-only file the user would like to make readable.
    let secret = b.env.path("secret");
    write(&secret, b"root's\n");
    chmod(&secret, 0o600);
    let dest_parent = b.env.path("out");
    fs::create_dir_all(&dest_parent).unwrap();
    sh(&format!("chown {USER}:{USER} {}", dest_parent.display()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (stop, dest, secret) = (stop.clone(), dest_parent.join("x"), secret.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for i in 0..200 {
                    let p = dest.join(format!("f{i:03}"));
                    if fs::remove_file(&p).is_ok() {
                        let _ = std::os::unix::fs::symlink(&secret, &p);
                    }
                }
            }
        })
    };
    for n in 0..5 {
        let dest = dest_parent.join("x");
        let _ = fs::remove_dir_all(&dest);
        let _ = b.env.run_as_user(["store", "export", &digest, dest.to_str().unwrap()]);
        assert_eq!(fs::metadata(&secret).unwrap().mode() & 0o777, 0o600, "round {n}: the secret's mode changed");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    swapper.join().unwrap();
    assert_eq!(fs::read(&secret).unwrap(), b"root's\n");
}

#[test]
fn the_store_is_private_and_its_lock_out_of_other_users_reach() {
    let b = Bench::new(&[]);
    let src = b.env.path("src");
    write(&src.join("f"), b"data\n");
    b.env.add(&src);
    let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o777;
    let st = &b.env.store;
    assert_eq!(mode(st), 0o711);
    for d in ["packs", "index", "logs"] {
        assert_eq!(mode(&st.join(d)), 0o700, "{d}");
    }
    assert_eq!(mode(&st.join("lock")), 0o600);
    for e in fs::read_dir(st.join("packs")).unwrap() {
        assert_eq!(mode(&e.unwrap().path()) & 0o077, 0, "a pack is readable by others");
    }
    // Another user can neither read the packs nor take the lock (and so stop a daemon starting).
    let user = |script: &str| {
        Command::new("setpriv")
            .args(["--reuid", &USER.to_string(), "--regid", &USER.to_string(), "--clear-groups", "sh", "-c", script])
            .status()
            .unwrap()
            .success()
    };
    assert!(!user(&format!("cat {}/packs/* >/dev/null 2>&1", st.display())));
    assert!(!user(&format!("flock -s -n {}/lock true 2>/dev/null", st.display())));
    // It may still read everything through the mount, and build.
    assert!(user(&format!("find {} -type f -exec cat {{}} + >/dev/null", b.mount.dir.display())));
}

#[test]
fn ordinary_users_cannot_run_the_daemons_administrative_commands() {
    let b = Bench::new(&[]);
    let src = b.env.path("src");
    write(&src.join("f"), b"data\n");
    let d = b.env.add(&src);
    for args in [
        vec!["gc"],
        vec!["store", "rm", d.as_str()],
        vec!["profile", "push", d.as_str()],
        vec!["profile", "repack", d.as_str()],
        vec!["umount"],
    ] {
        b.env.run_as_user(&args).fails_with(&["permission denied", "only root"]);
    }
    assert!(b.env.run(["store", "ls"]).ok().contains(&d), "nothing was removed");
    // Reading and building are for everyone.
    b.env.run_as_user(["store", "ls"]).ok();
    let proj = b.env.path("proj");
    write(
        &proj.join("vorpalfs.toml"),
        b"[[artifact]]\nname = \"u\"\n[[artifact.step]]\nscript = \"echo u > $VORPAL_OUTPUT/u\"\n",
    );
    sh(&format!("chown -R {USER}:{USER} {}", proj.display()));
    let r: Run = b
        .env
        .as_user(["build", proj.to_str().unwrap()])
        .env("VORPALFS_MOUNTPOINT", &b.mount.dir)
        .output()
        .unwrap()
        .into();
    r.ok();
}

#[test]
fn a_mountpoint_below_a_private_directory_does_not_lock_build_users_out_of_their_deps() {
    // Build users are not root: a mountpoint they cannot reach (here below a 0700 directory)
    // must still give their sandboxes the dependencies.
    let env = Env::new();
    let private = env.path("private");
    fs::create_dir(&private).unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
    let mount = env.mount_at(&private.join("mnt"));
    let dir = env.path("deps");
    let toml = format!(
        "{}\n{}",
        artifact("dep", &[], "echo from-dep > $VORPAL_OUTPUT/file"),
        artifact("top", &["dep"], "cat $VORPAL_ARTIFACT_DEP/file > $VORPAL_OUTPUT/copy")
    );
    write(&dir.join("vorpalfs.toml"), toml.as_bytes());
    let r: Run =
        env.cmd(["build", dir.to_str().unwrap()]).env("VORPALFS_MOUNTPOINT", &mount.dir).output().unwrap().into();
    let out = r.ok().lines().last().unwrap().to_string();
    assert_eq!(fs::read_to_string(Path::new(&out).join("copy")).unwrap(), "from-dep\n");
    drop(mount);
}
