//! The generator: what it renames, that it covers every file of each example, and that bad
//! input writes nothing. (CI builds and tests a service generated from each template.)

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use cqrs_new::{Framework, NewError, Options, TEMPLATES, generate, render};

fn version() -> Framework {
    Framework::Version("0.1".to_owned())
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A directory under the system's temporary directory that does not exist yet.
fn scratch(label: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "cqrs-new-{label}-{}",
        uuid::Uuid::now_v7().simple()
    ))
}

fn file<'a>(files: &'a [(String, String)], path: &str) -> &'a str {
    &files
        .iter()
        .find(|(name, _)| name == path)
        .unwrap_or_else(|| panic!("{path} was not rendered"))
        .1
}

#[test]
fn the_manifest_is_a_standalone_crates_with_the_framework_by_version_or_path() {
    let files = render(&Options::new("billing", "user-service", version())).unwrap();
    let manifest = file(&files, "Cargo.toml");
    let parsed: toml_edit::DocumentMut = manifest.parse().unwrap();
    assert_eq!(parsed["package"]["name"].as_str(), Some("billing"));
    assert!(parsed["workspace"].is_table(), "{manifest}");
    assert!(!manifest.contains("workspace = true"), "{manifest}");
    assert_eq!(
        parsed["dependencies"]["cqrs-core"]["version"].as_str(),
        Some("0.1")
    );
    let features: Vec<&str> = parsed["dependencies"]["cqrs-core"]["features"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    assert_eq!(features, ["validator", "metrics"]);
    // Inherited from the workspace, with the member's own features added.
    assert_eq!(
        parsed["dependencies"]["serde"]["version"].as_str(),
        Some("1")
    );
    assert!(parsed["lints"]["clippy"]["pedantic"].is_inline_table());
    assert!(parsed["package"].get("repository").is_none());

    let root = repo_root();
    let files = render(&Options::new(
        "billing",
        "bank-account",
        Framework::Path(root.clone()),
    ))
    .unwrap();
    let parsed: toml_edit::DocumentMut = file(&files, "Cargo.toml").parse().unwrap();
    assert_eq!(
        parsed["dependencies"]["cqrs-postgres"]["path"].as_str(),
        Some(root.join("cqrs-postgres").to_str().unwrap())
    );
    assert!(
        parsed["dependencies"]["cqrs-postgres"]
            .get("version")
            .is_none()
    );
}

#[test]
fn the_package_and_the_entity_are_renamed_everywhere_but_in_the_frameworks_names() {
    let options = Options::new("club-service", "user-service", version()).entity("member", None);
    let files = render(&options).unwrap();
    // The README names the template it came from; everything else is renamed.
    for (path, text) in files.iter().filter(|(path, _)| path != "README.md") {
        let kept = text
            .replace("with_user_id", "")
            .replace("metadata.user_id", "")
            .replace("Metadata::user_id", "");
        for word in ["User", "user", "USER"] {
            assert!(!kept.contains(word), "{path} still says {word:?}");
        }
    }
    let domain = file(&files, "src/domain.rs");
    assert!(domain.contains("pub struct Member {"));
    assert!(domain.contains("name = \"member.register\""));
    assert!(domain.contains("name = \"member\""), "the stream prefix");
    assert!(domain.contains("pub member_id: Uuid"));
    let http = file(&files, "src/http.rs");
    assert!(http.contains(".route(\"/members\""));
    let tests = file(&files, "tests/http.rs");
    assert!(tests.contains("use club_service::"));
    assert!(file(&files, "README.md").starts_with("# club-service\n"));
    assert!(file(&files, "README.md").contains("cargo test"));
}

#[test]
fn without_an_entity_only_the_package_is_renamed() {
    let files = render(&Options::new("ledger", "bank-account", version())).unwrap();
    let domain = file(&files, "src/domain.rs");
    assert!(domain.contains("name = \"account.open\""));
    assert!(file(&files, "tests/account.rs").contains("use ledger::"));
    assert!(files.iter().all(|(_, text)| !text.contains("bank_account")));
}

#[test]
fn every_file_of_each_example_is_in_its_template() {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, base, out);
            } else {
                out.push(
                    path.strip_prefix(base)
                        .unwrap()
                        .to_string_lossy()
                        .replace('\\', "/"),
                );
            }
        }
    }
    for template in TEMPLATES {
        let dir = repo_root().join("examples").join(template.package);
        let mut on_disk = Vec::new();
        walk(&dir, &dir, &mut on_disk);
        let mut listed: Vec<String> = template
            .files
            .iter()
            .map(|(path, _)| (*path).to_owned())
            .chain(["Cargo.toml".to_owned()])
            .collect();
        on_disk.sort();
        listed.sort();
        assert_eq!(
            on_disk, listed,
            "the {} template's file list",
            template.name
        );
    }
}

#[test]
fn bad_input_is_a_clear_error_and_writes_nothing() {
    let bad_names = [
        ("", "empty"),
        ("9lives", "start with an ASCII letter"),
        ("my service", "only ASCII letters"),
        ("café", "only ASCII letters"),
        ("self", "keyword"),
        ("cqrs-core", "framework"),
    ];
    for (name, reason) in bad_names {
        let dir = scratch("bad-name");
        let error = generate(&Options::new(name, "user-service", version()), &dir).unwrap_err();
        assert!(
            matches!(error, NewError::InvalidName { .. }),
            "{name:?}: {error}"
        );
        assert!(error.to_string().contains(reason), "{name:?}: {error}");
        assert!(!dir.exists(), "{name:?} wrote {}", dir.display());
    }

    let dir = scratch("bad-template");
    let error = generate(
        &Options::new("shop", "order-fulfilment-v9", version()),
        &dir,
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "unknown template \"order-fulfilment-v9\"; the templates are: user-service, bank-account, order-fulfilment"
    );
    assert!(!dir.exists());

    let error = generate(
        &Options::new("shop", "user-service", version()).entity("Member", None),
        &dir,
    )
    .unwrap_err();
    assert!(matches!(error, NewError::InvalidEntity { .. }), "{error}");
    assert!(!dir.exists());

    let error = generate(
        &Options::new("shop", "user-service", Framework::Path(scratch("nowhere"))),
        &dir,
    )
    .unwrap_err();
    assert!(matches!(error, NewError::NotAFramework(_)), "{error}");
    assert!(!dir.exists());

    // A directory that holds anything is left as it is.
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("notes.txt"), "mine").unwrap();
    let error = generate(&Options::new("shop", "user-service", version()), &dir).unwrap_err();
    assert!(matches!(error, NewError::NotEmpty(_)), "{error}");
    assert!(error.to_string().ends_with("exists and is not empty"));
    let left: Vec<_> = fs::read_dir(&dir).unwrap().collect();
    assert_eq!(left.len(), 1);
    assert_eq!(fs::read_to_string(dir.join("notes.txt")).unwrap(), "mine");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_empty_directory_is_filled() {
    let dir = scratch("empty");
    fs::create_dir_all(&dir).unwrap();
    let written = generate(&Options::new("shop", "bank-account", version()), &dir).unwrap();
    assert!(written.contains(&dir.join("src/domain.rs")));
    assert!(dir.join("Cargo.toml").is_file() && dir.join(".gitignore").is_file());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_command_line_reports_bad_input_and_writes_nothing() {
    let dir = scratch("cli");
    let output = Command::new(env!("CARGO_BIN_EXE_cqrs-new"))
        .args(["9lives", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid crate name \"9lives\""), "{stderr}");
    assert!(stderr.contains("nothing was written"), "{stderr}");
    assert!(!dir.exists());

    let output = Command::new(env!("CARGO_BIN_EXE_cqrs-new"))
        .args(["shop", "--colour"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown option --colour"));

    // As a cargo subcommand, cargo passes the subcommand's name first.
    let output = Command::new(env!("CARGO_BIN_EXE_cargo-cqrs-new"))
        .args(["cqrs-new", "--list"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let listed = String::from_utf8_lossy(&output.stdout);
    assert!(
        listed.contains("user-service") && listed.contains("bank-account"),
        "{listed}"
    );

    let output = Command::new(env!("CARGO_BIN_EXE_cqrs-new"))
        .args(["shop", "--template", "bank-account", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(dir.join("src/wire.rs").is_file());
    fs::remove_dir_all(&dir).unwrap();
}
