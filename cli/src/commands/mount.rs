//! `vorpalfs mount` and `umount`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use crate::args::MountArgs;
use crate::daemon::client;
use crate::settings::Settings;

pub fn mount(settings: Settings, args: MountArgs) -> Result<ExitCode> {
    let threads = args.threads.or(settings.threads);
    let mountpoint = args.dir.map_or(settings.mountpoint.clone(), |d| settings.abs(&d));
    if args.foreground {
        crate::daemon::server::run(settings, &mountpoint, threads)?;
    } else if let Some(conn) = client::connect(&settings) {
        let st = client::status(conn, &settings)?;
        eprintln!("already mounted by pid {}", st.pid);
        println!("{}", st.mountpoint.display());
    } else {
        client::spawn_daemon(&settings, &mountpoint, threads)?;
        println!("{}", mountpoint.display());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn umount(settings: &Settings, dir: Option<PathBuf>) -> Result<ExitCode> {
    let mountpoint = dir.map_or(settings.mountpoint.clone(), |d| settings.abs(&d));
    if let Some(conn) = client::connect(settings) {
        // The daemon's own mountpoint, which may not be the default.
        let served = client::status(conn, settings).map(|st| st.mountpoint).unwrap_or(mountpoint);
        let conn = client::connect(settings).context("the daemon went away")?;
        client::shutdown(conn, settings)?;
        eprintln!("unmounted {}", served.display());
    } else if vorpalfs_fs::is_mountpoint(&mountpoint) {
        vorpalfs_fs::detach(&mountpoint).with_context(|| format!("cannot unmount {}", mountpoint.display()))?;
        eprintln!("no daemon was running; detached the mount at {}", mountpoint.display());
        // And a root daemon's view of it for the sandboxes, which would keep the dead
        // connection (and a mount entry) alive.
        let view = settings.builder_config(&mountpoint).view_dir();
        if vorpalfs_fs::is_mountpoint(&view) {
            vorpalfs_fs::detach(&view).with_context(|| format!("cannot unmount {}", view.display()))?;
            let _ = std::fs::remove_dir(&view);
        }
    } else {
        bail!("nothing is mounted at {} and no daemon serves {}", mountpoint.display(), settings.store_dir.display());
    }
    Ok(ExitCode::SUCCESS)
}
