//! The sandbox helper: what runs in the fresh single-threaded process (`vorpalfs __sandbox
//! <spec.json>`) the builder starts, because a multithreaded process (the daemon) cannot
//! `unshare(CLONE_NEWUSER)`. It:
//!
//! 1. unshares every namespace at once and maps its user to root inside (only that one id:
//!    files of other owners show as `nobody`);
//! 2. forks the namespace's init (pid 1), which builds the new root on a tmpfs: the base (the
//!    host profile below, or a rootfs artifact's top-level entries), fresh `/proc`, a minimal
//!    `/dev`, a tmpfs `/tmp`, and `/vorpal/store` holding exactly the deps (read-only, bound from
//!    the mount at their own `/vorpal/store/<digest>` paths) and the output (writable, at the
//!    artifact's own store path); then `/vorpal/workspace` (writable), `pivot_root`, the root made
//!    read-only, hostname `vorpal`, `lo` up and no other interface;
//! 3. runs the steps one after another with a cleared environment, reaping every process, and
//!    reports on fd 3 how the first failing step ended.
//!
//! When init exits, the kernel kills whatever is left in the pid namespace; the builder kills
//! the helper's process group (and init dies with its parent through `PR_SET_PDEATHSIG`) on
//! timeout or cancel, so no process of a step survives it.

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::statvfs::{FsFlags, statvfs};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, chdir, fork, getgid, getuid, pivot_root, sethostname};

use super::{BASE_PATH, DEVICES, HOST_DIRS, HOST_ETC, HelperStatus, Spec, StepSpec, WORKSPACE};

/// The helper's entry point: runs the spec's steps in a new sandbox and exits with 0 when every
/// step succeeded. Must be called before the process starts any thread.
pub fn helper_main(spec_path: &Path) -> ! {
    exit_with(helper(spec_path))
}

/// Exits with the steps' status, or with 125 after reporting a setup error (to the builder on
/// fd 3, and on stderr).
fn exit_with(r: R<i32>) -> ! {
    let code = r.unwrap_or_else(|e| {
        eprintln!("vorpalfs sandbox: {e}");
        status(&HelperStatus::Setup { action: e.action, cause: e.cause });
        125
    });
    std::process::exit(code)
}

/// Tells the builder on fd 3 (if it gave us one) how the steps ended: one JSON line.
fn status(st: &HelperStatus) {
    // SAFETY: fd 3 is the status pipe the builder set up, or closed; writing to a closed or
    // unrelated fd fails harmlessly. We do not close it here (ManuallyDrop).
    let mut f = std::mem::ManuallyDrop::new(unsafe { fs::File::from_raw_fd(3) });
    let _ = writeln!(*f, "{}", serde_json::to_string(st).expect("a status serializes"));
}

/// A setup step that failed: what was being done, and the system's answer.
#[derive(Debug)]
struct SetupError {
    action: String,
    cause: String,
}

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.action, self.cause)
    }
}

type R<T> = std::result::Result<T, SetupError>;

fn ctx<T, E: std::fmt::Display>(r: std::result::Result<T, E>, what: impl FnOnce() -> String) -> R<T> {
    r.map_err(|e| SetupError { action: what(), cause: e.to_string() })
}

fn helper(spec_path: &Path) -> R<i32> {
    // Nothing the daemon (or whatever started it) had open reaches a step: every descriptor
    // but stdio and the status pipe is closed.
    // SAFETY: close_range on descriptors this process will not use.
    unsafe { libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32) };
    let text = ctx(fs::read(spec_path), || format!("cannot read {}", spec_path.display()))?;
    let spec: Spec = ctx(serde_json::from_slice(&text), || format!("bad spec {}", spec_path.display()))?;
    let (uid, gid) = (getuid().as_raw(), getgid().as_raw());
    let all = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    if let Err(e) = unshare(all) {
        return Err(SetupError {
            action: format!("create namespaces as uid {uid}"),
            cause: if uid != 0 {
                format!(
                    "{e}; this machine does not allow unprivileged user namespaces (see sysctl \
                     user.max_user_namespaces and kernel.apparmor_restrict_unprivileged_userns), so build as root"
                )
            } else {
                e.to_string()
            },
        });
    }
    // Having left the parent namespace, we may map only ourselves (to root inside).
    ctx(fs::write("/proc/self/setgroups", "deny"), || "setgroups".into())?;
    ctx(fs::write("/proc/self/uid_map", format!("0 {uid} 1")), || "uid_map".into())?;
    ctx(fs::write("/proc/self/gid_map", format!("0 {gid} 1")), || "gid_map".into())?;
    // SAFETY: this process is single-threaded (the helper runs before anything starts a thread),
    // so the child may do anything after fork.
    match ctx(unsafe { fork() }, || "fork".into())? {
        ForkResult::Child => exit_with(init(&spec)),
        ForkResult::Parent { child } => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(SetupError { action: "waitpid".into(), cause: e.to_string() }),
            }
        },
    }
}

fn mkdir(p: &Path) -> R<()> {
    ctx(fs::create_dir_all(p), || format!("mkdir {}", p.display()))
}

fn touch(p: &Path) -> R<()> {
    ctx(fs::OpenOptions::new().create(true).truncate(false).write(true).open(p), || format!("create {}", p.display()))
        .map(drop)
}

fn do_mount(src: Option<&Path>, dst: &Path, fstype: Option<&str>, flags: MsFlags, data: Option<&str>) -> R<()> {
    ctx(mount(src, dst, fstype, flags, data), || {
        format!("mount {} on {}", src.map_or("none".into(), |s| s.display().to_string()), dst.display())
    })
}

/// Creates `dst` and mounts a fresh tmpfs on it.
fn tmpfs(dst: &Path, flags: MsFlags, mode: &str) -> R<()> {
    mkdir(dst)?;
    do_mount(Some(Path::new("tmpfs")), dst, Some("tmpfs"), flags, Some(mode))
}

/// Binds `src` on `dst` (which exists), read-only, keeping the flags the kernel locks.
fn bind_ro(src: &Path, dst: &Path) -> R<()> {
    do_mount(Some(src), dst, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
    let vfs = ctx(statvfs(dst), || format!("statvfs {}", dst.display()))?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    for (have, keep) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if vfs.flags().contains(have) {
            flags |= keep;
        }
    }
    do_mount(None, dst, None, flags, None)
}

/// Recreates `src` (a directory, file or symlink) at `dst`, read-only.
fn offer(src: &Path, dst: &Path) -> R<()> {
    let Ok(meta) = fs::symlink_metadata(src) else { return Ok(()) };
    if meta.file_type().is_symlink() {
        let target = ctx(fs::read_link(src), || format!("readlink {}", src.display()))?;
        ctx(symlink(&target, dst), || format!("symlink {}", dst.display()))
    } else if meta.is_dir() {
        mkdir(dst)?;
        bind_ro(src, dst)
    } else {
        touch(dst)?;
        bind_ro(src, dst)
    }
}

fn inside(root: &Path, abs: &str) -> PathBuf {
    root.join(abs.trim_start_matches('/'))
}

fn init(spec: &Spec) -> R<i32> {
    // SAFETY: prctl with an integer argument; no memory is shared.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    // The status pipe must not leak into the steps.
    // SAFETY: fcntl on an fd number; harmless if it is not open.
    unsafe { libc::fcntl(3, libc::F_SETFD, libc::FD_CLOEXEC) };

    do_mount(None, Path::new("/"), None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None)?;
    let r = &spec.root;
    do_mount(Some(Path::new("tmpfs")), r, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0755"))?;

    const OURS: [&str; 4] = ["proc", "dev", "tmp", "vorpal"];
    match &spec.rootfs {
        Some(rootfs) => {
            for ent in ctx(fs::read_dir(rootfs), || format!("read {}", rootfs.display()))? {
                let ent = ctx(ent, || format!("read {}", rootfs.display()))?;
                let name = ent.file_name();
                if OURS.iter().any(|o| name == *o) {
                    continue;
                }
                offer(&ent.path(), &r.join(&name))?;
            }
            if !r.join("etc").exists() {
                write_etc(r)?;
            }
        }
        None => {
            for d in HOST_DIRS {
                offer(Path::new(d), &inside(r, d))?;
            }
            write_etc(r)?;
            for f in HOST_ETC {
                offer(&Path::new("/etc").join(f), &r.join("etc").join(f))?;
            }
        }
    }

    let proc_dir = r.join("proc");
    mkdir(&proc_dir)?;
    let noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    do_mount(Some(Path::new("proc")), &proc_dir, Some("proc"), noexec, None)?;

    let dev = r.join("dev");
    tmpfs(&dev, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, "mode=0755")?;
    for d in DEVICES {
        let host = Path::new("/dev").join(d);
        if host.exists() {
            touch(&dev.join(d))?;
            do_mount(Some(&host), &dev.join(d), None, MsFlags::MS_BIND, None)?;
        }
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        ctx(symlink(target, dev.join(name)), || format!("symlink /dev/{name}"))?;
    }
    let size = spec.limits.tmp_bytes;
    tmpfs(&dev.join("shm"), noexec, &format!("mode=1777,size={size}"))?;
    tmpfs(&r.join("tmp"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, &format!("mode=1777,size={size}"))?;
    let store = r.join("vorpal/store");
    tmpfs(&store, MsFlags::MS_NOSUID | MsFlags::MS_NODEV, "mode=0755")?;
    for (host, path) in &spec.deps {
        let dst = inside(r, path);
        mkdir(&dst)?;
        bind_ro(host, &dst)?;
    }
    let out = inside(r, &spec.output_path);
    mkdir(&out)?;
    do_mount(Some(&spec.output), &out, None, MsFlags::MS_BIND, None)?;
    // Nothing but the output is writable under /vorpal/store.
    do_mount(
        None,
        &store,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None,
    )?;
    let ws = inside(r, WORKSPACE);
    mkdir(&ws)?;
    do_mount(Some(&spec.workspace), &ws, None, MsFlags::MS_BIND, None)?;

    ctx(chdir(r), || format!("chdir {}", r.display()))?;
    ctx(pivot_root(".", "."), || "pivot_root".into())?;
    ctx(umount2(".", MntFlags::MNT_DETACH), || "detach the old root".into())?;
    ctx(chdir("/"), || "chdir /".into())?;
    do_mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None,
    )?;
    mask_proc()?;
    ctx(sethostname("vorpal"), || "sethostname".into())?;
    loopback_up()?;
    lock_mounts()?;
    limit(&spec.limits)?;
    ctx(chdir(WORKSPACE), || format!("chdir {WORKSPACE}"))?;
    // Steps create files as a shell would by default.
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0o022) };
    ctx(super::seccomp::install(), || "install the seccomp filter".into())?;

    for (i, step) in spec.steps.iter().enumerate() {
        let step_no = i + 1;
        match run_step(spec, step)? {
            WaitStatus::Exited(_, 0) => {}
            WaitStatus::Exited(_, code) => {
                status(&HelperStatus::Exited { step: step_no, code });
                return Ok(1);
            }
            WaitStatus::Signaled(_, sig, _) => {
                status(&HelperStatus::Killed { step: step_no, signal: sig.as_str().to_string() });
                return Ok(1);
            }
            other => {
                status(&HelperStatus::Killed { step: step_no, signal: format!("{other:?}") });
                return Ok(1);
            }
        }
    }
    Ok(0)
}

/// `/proc/sys` read-only; files that expose or change the kernel masked with `/dev/null`,
/// directories with an empty read-only tmpfs.
fn mask_proc() -> R<()> {
    bind_ro(Path::new("/proc/sys"), Path::new("/proc/sys"))?;
    for f in ["/proc/sysrq-trigger", "/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/proc/kmsg"]
    {
        if Path::new(f).exists() {
            do_mount(Some(Path::new("/dev/null")), Path::new(f), None, MsFlags::MS_BIND, None)?;
        }
    }
    for d in ["/proc/acpi", "/proc/scsi", "/proc/irq", "/proc/bus"] {
        if Path::new(d).is_dir() {
            do_mount(Some(Path::new("tmpfs")), Path::new(d), Some("tmpfs"), MsFlags::MS_RDONLY, Some("size=0"))?;
        }
    }
    Ok(())
}

/// Enters a second user namespace (and mount namespace) with the same identity: the mounts
/// set up so far now belong to a more privileged namespace and are locked: they cannot be
/// remounted writable, unmounted or moved from here.
fn lock_mounts() -> R<()> {
    ctx(unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS), || "lock the mounts (unshare)".into())?;
    ctx(fs::write("/proc/self/setgroups", "deny"), || "setgroups".into())?;
    ctx(fs::write("/proc/self/uid_map", "0 0 1"), || "uid_map (lock)".into())?;
    ctx(fs::write("/proc/self/gid_map", "0 0 1"), || "gid_map (lock)".into())
}

/// Resource limits, inherited by every process of the steps.
fn limit(l: &super::Limits) -> R<()> {
    use nix::sys::resource::{Resource, setrlimit};
    ctx(setrlimit(Resource::RLIMIT_NPROC, l.processes, l.processes), || "limit processes".into())?;
    ctx(setrlimit(Resource::RLIMIT_CORE, 0, 0), || "no core dumps".into())?;
    if let Some(bytes) = l.address_space {
        ctx(setrlimit(Resource::RLIMIT_AS, bytes, bytes), || "limit memory".into())?;
    }
    Ok(())
}

fn write_etc(r: &Path) -> R<()> {
    let etc = r.join("etc");
    mkdir(&etc)?;
    for (name, text) in [
        ("passwd", "root:x:0:0:root:/vorpal/workspace:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
        ("group", "root:x:0:\nnogroup:x:65534:\n"),
        ("hosts", "127.0.0.1 localhost vorpal\n::1 localhost\n"),
        ("nsswitch.conf", "passwd: files\ngroup: files\nhosts: files\n"),
    ] {
        ctx(fs::write(etc.join(name), text), || format!("write /etc/{name}"))?;
    }
    ctx(fs::set_permissions(&etc, fs::Permissions::from_mode(0o755)), || "chmod /etc".into())
}

/// Brings `lo` up: the only interface of the new network namespace.
fn loopback_up() -> R<()> {
    // SAFETY: plain socket/ioctl calls on a zeroed ifreq we own; the fd is closed by OwnedFd.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return ctx(Err(std::io::Error::last_os_error()), || "socket".into());
        }
        let _fd = OwnedFd::from_raw_fd(fd);
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            return ctx(Err(std::io::Error::last_os_error()), || "SIOCGIFFLAGS lo".into());
        }
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr) < 0 {
            return ctx(Err(std::io::Error::last_os_error()), || "SIOCSIFFLAGS lo".into());
        }
    }
    Ok(())
}

fn cstring(s: &str) -> R<CString> {
    ctx(CString::new(s), || format!("pass `{}` to a step", s.escape_debug()))
}

/// Runs one step as a child of init and reaps every process until it has ended.
fn run_step(spec: &Spec, step: &StepSpec) -> R<WaitStatus> {
    let argv: Vec<CString> = step.argv.iter().map(|a| cstring(a)).collect::<R<_>>()?;
    let mut env: Vec<(String, String)> = spec.env.clone();
    for (k, v) in &step.env {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    let envp: Vec<CString> = env.iter().map(|(k, v)| cstring(&format!("{k}={v}"))).collect::<R<_>>()?;
    let path = env.iter().find(|(k, _)| k == "PATH").map_or(BASE_PATH, |(_, v)| v.as_str());
    let prog = resolve(&step.argv[0], path);
    let prog = cstring(&prog)?;
    // SAFETY: init is single-threaded; the child only calls exec or exits.
    match ctx(unsafe { fork() }, || "fork".into())? {
        ForkResult::Child => {
            let e = nix::unistd::execve(&prog, &argv, &envp).unwrap_err();
            eprintln!("vorpalfs sandbox: cannot run `{}`: {e}", step.argv[0]);
            std::process::exit(127)
        }
        ForkResult::Parent { child } => loop {
            match waitpid(Pid::from_raw(-1), None) {
                Ok(st) if st.pid() == Some(child) => return Ok(st),
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(SetupError { action: "waitpid".into(), cause: e.to_string() }),
            }
        },
    }
}

/// `PATH` lookup of a program name, as the shell does it.
fn resolve(prog: &str, path: &str) -> String {
    if prog.contains('/') {
        return prog.to_string();
    }
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let p = Path::new(dir).join(prog);
        if let Ok(m) = fs::metadata(&p)
            && m.is_file()
            && m.permissions().mode() & 0o111 != 0
        {
            return p.to_string_lossy().into_owned();
        }
    }
    prog.to_string()
}
