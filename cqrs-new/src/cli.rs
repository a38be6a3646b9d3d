//! The command line: `cqrs-new <name> [options]` (and `cargo cqrs-new <name> [options]`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::{Framework, NewError, Options, TEMPLATES, generate};

/// How to call it.
pub const USAGE: &str = "\
usage: cqrs-new <name> [--template <template>] [--entity <singular> [--plural <plural>]]
                [--path <framework checkout> | --version <requirement>] [--dir <directory>]
       cqrs-new --list

  <name>        the new crate's package name (my-service)
  --template    the template to start from (default: user-service; --list shows them)
  --entity      rename the template's entity (user, account) to this snake-case name
  --plural      the entity's plural (default: <singular>s)
  --path        depend on the framework by path: the root of a checkout of it
  --version     depend on the framework by version (default: this release)
  --dir         where to write the crate (default: ./<name>); must be absent or empty";

/// Runs the command line with `args` (without the program's name); prints what it did or
/// why it did nothing.
pub fn main(mut args: Vec<String>) -> ExitCode {
    // Run as `cargo cqrs-new ...`, cargo passes the subcommand's name first.
    if args.first().is_some_and(|arg| arg == "cqrs-new") {
        args.remove(0);
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}\n\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::New(error)) => {
            eprintln!("error: {error}\nnothing was written");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    Usage(String),
    New(NewError),
}

fn run(args: Vec<String>) -> Result<(), Failure> {
    let mut name = None;
    let mut template = "user-service".to_owned();
    let mut entity = None;
    let mut plural = None;
    let mut framework = Framework::Version(env!("CARGO_PKG_VERSION").to_owned());
    let mut dir = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| {
            args.next()
                .ok_or_else(|| Failure::Usage(format!("{flag} needs a value")))
        };
        match arg.as_str() {
            "--list" => {
                for template in TEMPLATES {
                    println!("{template}");
                }
                return Ok(());
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            "--template" => template = value("--template")?,
            "--entity" => entity = Some(value("--entity")?),
            "--plural" => plural = Some(value("--plural")?),
            "--path" => framework = Framework::Path(absolute(Path::new(&value("--path")?))),
            "--version" => framework = Framework::Version(value("--version")?),
            "--dir" => dir = Some(PathBuf::from(value("--dir")?)),
            flag if flag.starts_with('-') => {
                return Err(Failure::Usage(format!("unknown option {flag}")));
            }
            _ if name.is_none() => name = Some(arg),
            _ => return Err(Failure::Usage(format!("unexpected argument {arg:?}"))),
        }
    }
    let name = name.ok_or_else(|| Failure::Usage("the new crate's name is missing".to_owned()))?;
    if plural.is_some() && entity.is_none() {
        return Err(Failure::Usage("--plural goes with --entity".to_owned()));
    }
    let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
    let mut options = Options::new(name, template, framework);
    if let Some(entity) = entity {
        options = options.entity(entity, plural);
    }
    let written = generate(&options, &dir).map_err(Failure::New)?;
    println!(
        "created {} ({} files) from the {} template",
        dir.display(),
        written.len(),
        options.template
    );
    println!("next: cd {} && cargo test", dir.display());
    Ok(())
}

/// A relative `--path` is taken from the current directory: the generated manifest must not
/// depend on where it is built from.
fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| {
        std::env::current_dir().map_or_else(|_| path.to_path_buf(), |cwd| cwd.join(path))
    })
}
