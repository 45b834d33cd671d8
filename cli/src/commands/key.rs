//! `vorpalfs key`: make a signing key pair, print the public half of one.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::process::ExitCode;

use anyhow::{Context, Result};
use vorpalfs_store::remote::trust::SecretKey;

use crate::args::KeyCommand;
use crate::settings::Settings;

pub fn run(settings: &Settings, cmd: KeyCommand) -> Result<ExitCode> {
    match cmd {
        KeyCommand::Generate { name, dir } => {
            let dir = settings.abs(&dir);
            let key = SecretKey::generate(&name)?;
            let secret = dir.join(format!("{name}.secret"));
            let public = dir.join(format!("{name}.public"));
            // A new key directory is the owner's alone.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .with_context(|| format!("{}: cannot create the key directory", dir.display()))?;
            // Never over an existing key (a lost secret key cannot be made again).
            let create = |path: &std::path::Path, mode: u32, text: &str| -> Result<()> {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(path)
                    .with_context(|| format!("{}: cannot create the key file", path.display()))?;
                f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).with_context(|| path.display().to_string())
            };
            create(&secret, 0o600, &key.encode())?;
            create(&public, 0o644, &format!("{}\n", key.public()))?;
            eprintln!("wrote {} (keep it secret) and {}", secret.display(), public.display());
            println!("{}", key.public());
        }
        KeyCommand::Public { secret } => {
            let key = SecretKey::load(&settings.abs(&secret))?;
            println!("{}", key.public());
        }
    }
    Ok(ExitCode::SUCCESS)
}
