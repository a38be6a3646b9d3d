//! `cqrs-new <name> [options]`: writes a new service crate from a template (see the library's
//! docs, or `cqrs-new --help`).

fn main() -> std::process::ExitCode {
    cqrs_new::cli::main(std::env::args().skip(1).collect())
}
