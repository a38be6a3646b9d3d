//! `cargo cqrs-new <name> [options]`: the same program as a cargo subcommand, once installed
//! (`cargo install --path cqrs-new`).

fn main() -> std::process::ExitCode {
    cqrs_new::cli::main(std::env::args().skip(1).collect())
}
