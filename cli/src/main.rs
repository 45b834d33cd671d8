//! The `vorpalfs` command (its code is the `vorpalfs_cli` library).

fn main() -> std::process::ExitCode {
    vorpalfs_cli::main()
}
