//! Start a new service from one of the workspace's examples.
//!
//! ```sh
//! cargo run -p cqrs-new -- my-service --template user-service --path .
//! cd my-service && cargo test
//! ```
//!
//! writes `my-service/`, a standalone crate (its own `[workspace]`, its own `Cargo.lock`)
//! holding the example's sources with the names changed: the package (`user-service` →
//! `my-service`) and its crate name in the sources (`user_service` → `my_service`), and,
//! with `--entity member`, the example's entity everywhere it is named: types (`User` →
//! `Member`, `UserEvent` → `MemberEvent`), modules and fields (`user_id` → `member_id`),
//! routes (`/users` → `/members`), wire names (`user.register` → `member.register`) and
//! stream prefixes (`user-…` → `member-…`). The framework is a dependency by path (`--path`,
//! the root of a checkout of this repository) or by version (`--version`, the default being
//! this release). The new crate gets a README with its own two commands.
//!
//! # Where the templates come from
//!
//! The templates *are* the examples (`examples/user-service`, `examples/bank-account`),
//! embedded into this program when it is built (`include_str!`), with the workspace's
//! `Cargo.toml` for the dependency versions and lints the examples inherit. The examples stay
//! ordinary workspace members that build and test as they are; a change to one rebuilds this
//! program, a file added to one without its entry here fails a test
//! (`every_file_of_each_example_is_in_its_template`), and CI generates a service from each
//! template and runs its tests, so no template rots unseen. Embedding rather than reading the
//! repository at run time keeps the program self-contained: it runs from any directory.
//!
//! Adding a template (the order-fulfilment example, say) is one entry in [`TEMPLATES`].
//!
//! # Bad input
//!
//! An invalid crate name, an unknown template, an invalid entity name, a target directory
//! that exists and is not empty, or a `--path` without the framework's crates: a typed
//! [`NewError`] before anything is written. Every file is rendered in memory first; if
//! writing fails half-way, what was written is removed.
//!
//! ```
//! use cqrs_new::{Framework, NewError, Options, render};
//!
//! let options = Options::new("billing", "user-service", Framework::Version("0.1".into()));
//! let files = render(&options).unwrap();
//! let manifest = &files.iter().find(|(path, _)| path == "Cargo.toml").unwrap().1;
//! assert!(manifest.contains("name = \"billing\""));
//! assert!(manifest.contains("[workspace]"));
//!
//! let bad = Options::new("9lives", "user-service", Framework::Version("0.1".into()));
//! assert!(matches!(render(&bad), Err(NewError::InvalidName { .. })));
//! ```

pub mod cli;

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, InlineTable, Item, Table, Value};

/// One template: an example of the workspace, and what to rename in it.
#[derive(Debug, Clone, Copy)]
pub struct Template {
    /// The name `--template` takes.
    pub name: &'static str,
    /// One line on what it is.
    pub description: &'static str,
    /// The example's package name (`user-service`); its crate name is the same in snake case.
    pub package: &'static str,
    /// The example's entity, singular, in snake case (`user`); renamed by `--entity`.
    pub entity: &'static str,
    /// Its plural (`users`).
    pub entity_plural: &'static str,
    /// The example's `Cargo.toml`.
    pub manifest: &'static str,
    /// Every other file: path in the crate, text.
    pub files: &'static [(&'static str, &'static str)],
    /// Text an entity rename must leave alone: the framework's own names that contain the
    /// entity's word (`with_user_id`, `metadata.user_id`).
    pub keep: &'static [&'static str],
    /// The command that runs the new service, for its README.
    pub run: &'static str,
}

macro_rules! example_files {
    ($example:literal: $($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../../examples/", $example, "/", $path)))),*]
    };
}

/// Every template.
pub const TEMPLATES: &[Template] = &[
    Template {
        name: "user-service",
        description: "users over HTTP (axum): e-mail unique, JWT, problem+json errors, Prometheus metrics; on memory or PostgreSQL",
        package: "user-service",
        entity: "user",
        entity_plural: "users",
        manifest: include_str!("../../examples/user-service/Cargo.toml"),
        files: example_files!("user-service":
            "src/lib.rs",
            "src/main.rs",
            "src/config.rs",
            "src/domain.rs",
            "src/http.rs",
            "src/read_model.rs",
            "src/wire.rs",
            "tests/http.rs",
            "tests/common/mod.rs",
        ),
        keep: &["with_user_id", "metadata.user_id", "Metadata::user_id"],
        run: "JWT_SECRET=change-me-to-a-secret-of-32-bytes-or-more cargo run",
    },
    Template {
        name: "bank-account",
        description: "bank accounts with a balance read model and JSON dispatch; on memory or PostgreSQL",
        package: "bank-account",
        entity: "account",
        entity_plural: "accounts",
        manifest: include_str!("../../examples/bank-account/Cargo.toml"),
        files: example_files!("bank-account":
            "src/lib.rs",
            "src/main.rs",
            "src/bin/bank-nats.rs",
            "src/domain.rs",
            "src/read_model.rs",
            "src/report.rs",
            "src/wire.rs",
            "tests/account.rs",
            "tests/postgres.rs",
        ),
        keep: &[],
        run: "cargo run",
    },
    Template {
        name: "order-fulfilment",
        description: "an order saga across order, inventory and payment aggregates: compensation and a payment deadline; on memory or PostgreSQL",
        package: "order-fulfilment",
        entity: "order",
        entity_plural: "orders",
        manifest: include_str!("../../examples/order-fulfilment/Cargo.toml"),
        files: example_files!("order-fulfilment":
            "src/lib.rs",
            "src/main.rs",
            "src/domain.rs",
            "src/saga.rs",
            "src/wire.rs",
            "tests/common/mod.rs",
            "tests/crash.rs",
            "tests/saga.rs",
            "tests/story.rs",
        ),
        keep: &[],
        run: "cargo run",
    },
];

/// The workspace manifest the examples inherit versions, features and lints from.
const WORKSPACE_MANIFEST: &str = include_str!("../../Cargo.toml");

/// The framework's crates, which the new service depends on by path or version.
const FRAMEWORK_CRATES: &[&str] = &["cqrs-core", "cqrs-macros", "cqrs-postgres", "cqrs-nats"];

/// The template called `name`.
pub fn template(name: &str) -> Option<&'static Template> {
    TEMPLATES.iter().find(|template| template.name == name)
}

/// How the new service depends on the framework.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framework {
    /// By path: the root of a checkout of this repository (holding `cqrs-core/`, ...).
    Path(PathBuf),
    /// By version requirement, from the registry (`"0.1"`).
    Version(String),
}

/// The entity's new name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entity {
    /// Singular, snake case: `member`, `line_item`.
    pub singular: String,
    /// Plural, snake case: `members`.
    pub plural: String,
}

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The new crate's package name (`my-service`).
    pub name: String,
    /// The template's name.
    pub template: String,
    /// Where the framework comes from.
    pub framework: Framework,
    /// The new name of the template's entity; `None` keeps it.
    pub entity: Option<Entity>,
}

impl Options {
    /// `name` from `template`, keeping the template's entity.
    pub fn new(name: impl Into<String>, template: impl Into<String>, framework: Framework) -> Self {
        Self {
            name: name.into(),
            template: template.into(),
            framework,
            entity: None,
        }
    }

    /// Renames the template's entity to `singular` (plural: `plural`, or `singular` + `s`).
    #[must_use]
    pub fn entity(mut self, singular: impl Into<String>, plural: Option<String>) -> Self {
        let singular = singular.into();
        let plural = plural.unwrap_or_else(|| format!("{singular}s"));
        self.entity = Some(Entity { singular, plural });
        self
    }
}

/// Why nothing was generated (or, for [`NewError::Io`], why writing stopped; what was
/// written is removed).
#[derive(Debug, thiserror::Error)]
pub enum NewError {
    /// The crate name is not a valid package name.
    #[error("invalid crate name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// No template has this name.
    #[error("unknown template {name:?}; the templates are: {known}")]
    UnknownTemplate {
        /// The name given.
        name: String,
        /// The templates there are, comma-separated.
        known: String,
    },
    /// The entity name is not a snake-case identifier.
    #[error("invalid entity name {name:?}: {reason}")]
    InvalidEntity {
        /// The name given.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// The target directory exists and holds files.
    #[error("{} exists and is not empty", .0.display())]
    NotEmpty(PathBuf),
    /// `--path` does not point at a checkout of the framework.
    #[error("{} holds no cqrs-core/Cargo.toml: pass the root of a checkout of the framework", .0.display())]
    NotAFramework(PathBuf),
    /// The template's manifest could not be rewritten (a bug in the template table).
    #[error("template manifest: {0}")]
    Manifest(String),
    /// Reading or writing a file failed.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

const RESERVED: &[&str] = &[
    "as",
    "async",
    "await",
    "break",
    "const",
    "continue",
    "crate",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "fn",
    "for",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "match",
    "mod",
    "move",
    "mut",
    "pub",
    "ref",
    "return",
    "self",
    "Self",
    "static",
    "struct",
    "super",
    "trait",
    "true",
    "type",
    "unsafe",
    "use",
    "where",
    "while",
    "abstract",
    "become",
    "box",
    "do",
    "final",
    "macro",
    "override",
    "priv",
    "try",
    "typeof",
    "unsized",
    "virtual",
    "yield",
    "gen",
    "std",
    "core",
    "alloc",
    "proc_macro",
    "test",
];

/// Checks a crate name: ASCII letters, digits, `-` and `_`, starting with a letter, at most
/// 64 characters, not a Rust keyword or a standard crate, not one of the framework's crates.
pub fn check_name(name: &str) -> Result<(), NewError> {
    let invalid = |reason| {
        Err(NewError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name.len() > 64 {
        return invalid("it is longer than 64 characters");
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return invalid("it must start with an ASCII letter");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return invalid("only ASCII letters, digits, `-` and `_` are allowed");
    }
    if RESERVED.contains(&snake(name).as_str()) {
        return invalid("it is a Rust keyword or a standard crate's name");
    }
    if FRAMEWORK_CRATES.contains(&name) || name == "cqrs-new" {
        return invalid("it is the name of one of the framework's crates");
    }
    Ok(())
}

fn check_entity(name: &str) -> Result<(), NewError> {
    let invalid = |reason| {
        Err(NewError::InvalidEntity {
            name: name.to_owned(),
            reason,
        })
    };
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return invalid("it must start with a lower-case ASCII letter");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        || name.contains("__")
        || name.ends_with('_')
    {
        return invalid("use snake case: lower-case letters, digits and single `_`");
    }
    if RESERVED.contains(&name) {
        return invalid("it is a Rust keyword");
    }
    Ok(())
}

fn snake(name: &str) -> String {
    name.replace('-', "_")
}

fn pascal(snake: &str) -> String {
    snake
        .split('_')
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect()
}

/// Renames the template's names in one file's text.
struct Renamer {
    /// `(from, to)`, applied in order.
    pairs: Vec<(String, String)>,
    keep: &'static [&'static str],
}

impl Renamer {
    fn new(template: &Template, options: &Options) -> Self {
        let mut pairs = vec![
            (template.package.to_owned(), options.name.clone()),
            (snake(template.package), snake(&options.name)),
        ];
        if let Some(entity) = &options.entity {
            // Plural before singular (`users` holds `user`); each in the three cases.
            for (from, to) in [
                (template.entity_plural, &entity.plural),
                (template.entity, &entity.singular),
            ] {
                pairs.push((pascal(from), pascal(to)));
                pairs.push((from.to_owned(), to.clone()));
                pairs.push((from.to_ascii_uppercase(), to.to_ascii_uppercase()));
            }
        }
        Self {
            pairs,
            keep: template.keep,
        }
    }

    fn rename(&self, text: &str) -> String {
        // Text to keep is swapped for markers no source holds, and swapped back at the end.
        let marker = |index: usize| format!("\u{E000}{index}\u{E001}");
        let mut text = text.to_owned();
        for (index, kept) in self.keep.iter().enumerate() {
            text = text.replace(kept, &marker(index));
        }
        // Each replacement is marked as it is made, so a later pair never renames the
        // output of an earlier one (`user_service` → `member_service` stays).
        let mut done: Vec<String> = Vec::new();
        for (from, to) in &self.pairs {
            let token = format!("\u{E002}{}\u{E003}", done.len());
            text = text.replace(from.as_str(), &token);
            done.push(to.clone());
        }
        for (index, to) in done.iter().enumerate() {
            text = text.replace(&format!("\u{E002}{index}\u{E003}"), to);
        }
        for (index, kept) in self.keep.iter().enumerate() {
            text = text.replace(&marker(index), kept);
        }
        text
    }
}

fn manifest_error(what: &str) -> NewError {
    NewError::Manifest(what.to_owned())
}

/// The template's manifest as a standalone crate's: the package renamed, inherited fields,
/// dependencies and lints spelled out, the framework by path or version, its own `[workspace]`.
fn manifest(template: &Template, options: &Options, renamer: &Renamer) -> Result<String, NewError> {
    let workspace: DocumentMut = WORKSPACE_MANIFEST
        .parse()
        .map_err(|error| manifest_error(&format!("the workspace manifest: {error}")))?;
    let inherited = workspace["workspace"]["package"]
        .as_table()
        .ok_or_else(|| manifest_error("no [workspace.package]"))?;
    let workspace_deps = workspace["workspace"]["dependencies"]
        .as_table()
        .ok_or_else(|| manifest_error("no [workspace.dependencies]"))?;
    let mut doc = template
        .manifest
        .parse::<DocumentMut>()
        .map_err(|error| manifest_error(&error.to_string()))?;

    let package = doc["package"]
        .as_table_mut()
        .ok_or_else(|| manifest_error("no [package]"))?;
    package["name"] = toml_edit::value(options.name.as_str());
    if let Some(description) = package.get("description").and_then(Item::as_str) {
        let description = renamer.rename(description);
        package["description"] = toml_edit::value(description);
    }
    let keys: Vec<String> = package.iter().map(|(key, _)| key.to_owned()).collect();
    for key in keys {
        if is_inherited(&package[key.as_str()]) {
            match inherited.get(key.as_str()) {
                // The new crate has a repository of its own.
                Some(_) if key == "repository" => {
                    package.remove(key.as_str());
                }
                Some(value) => package[key.as_str()] = value.clone(),
                None => {
                    return Err(manifest_error(&format!(
                        "package.{key} is not in the workspace"
                    )));
                }
            }
        }
    }

    for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
        let Some(table) = doc.get_mut(section).and_then(Item::as_table_like_mut) else {
            continue;
        };
        let names: Vec<String> = table.iter().map(|(name, _)| name.to_owned()).collect();
        for name in names {
            let item = table.get(&name).expect("listed above");
            let spec = dependency(&name, item, workspace_deps, &options.framework)?;
            table.insert(&name, Item::Value(Value::InlineTable(spec)));
        }
    }

    if doc.get("lints").is_some_and(is_inherited) {
        let lints = workspace["workspace"]["lints"]
            .as_table()
            .ok_or_else(|| manifest_error("no [workspace.lints]"))?;
        doc["lints"] = Item::Table(lints.clone());
    }
    let mut own = Table::new();
    own.decor_mut()
        .set_prefix("\n# A workspace of its own: this crate does not join an enclosing one.\n");
    doc["workspace"] = Item::Table(own);
    Ok(doc.to_string())
}

/// `key.workspace = true` or `key = { workspace = true }`.
fn is_inherited(item: &Item) -> bool {
    item.as_table_like()
        .and_then(|table| table.get("workspace"))
        .and_then(Item::as_bool)
        == Some(true)
}

/// One dependency, spelled out: the workspace's spec merged with the member's features and
/// flags, and the framework's crates by path or version.
fn dependency(
    name: &str,
    item: &Item,
    workspace_deps: &Table,
    framework: &Framework,
) -> Result<InlineTable, NewError> {
    let own = item.as_table_like();
    let mut spec = InlineTable::new();
    if own.is_some_and(|table| table.get("workspace").and_then(Item::as_bool) == Some(true)) {
        match workspace_deps.get(name) {
            Some(Item::Value(Value::String(version))) => {
                spec.insert("version", Value::from(version.value().as_str()));
            }
            Some(other) => {
                let table = other
                    .as_table_like()
                    .ok_or_else(|| manifest_error(&format!("workspace dependency {name}")))?;
                for (key, value) in table.iter() {
                    if let Some(value) = value.as_value() {
                        spec.insert(key, value.clone());
                    }
                }
            }
            None => {
                return Err(manifest_error(&format!(
                    "{name} is not a workspace dependency"
                )));
            }
        }
    } else {
        match item {
            Item::Value(Value::String(version)) => {
                spec.insert("version", Value::from(version.value().as_str()));
            }
            other => {
                let table = other
                    .as_table_like()
                    .ok_or_else(|| manifest_error(&format!("dependency {name}")))?;
                for (key, value) in table.iter() {
                    if let Some(value) = value.as_value() {
                        spec.insert(key, value.clone());
                    }
                }
            }
        }
    }
    if let Some(own) = own {
        for (key, value) in own.iter() {
            let Some(value) = value.as_value() else {
                continue;
            };
            match key {
                "workspace" => {}
                "features" => {
                    let mut features: Vec<String> = spec
                        .get("features")
                        .and_then(Value::as_array)
                        .map(|list| {
                            list.iter()
                                .filter_map(|f| f.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default();
                    for feature in value.as_array().into_iter().flatten() {
                        if let Some(feature) = feature.as_str()
                            && !features.iter().any(|known| known == feature)
                        {
                            features.push(feature.to_owned());
                        }
                    }
                    spec.insert(
                        "features",
                        Value::Array(features.iter().map(String::as_str).collect()),
                    );
                }
                _ => {
                    spec.insert(key, value.clone());
                }
            }
        }
    }
    if FRAMEWORK_CRATES.contains(&name) {
        spec.remove("path");
        spec.remove("version");
        match framework {
            Framework::Path(root) => {
                let path = root.join(name);
                spec.insert("path", Value::from(path.to_string_lossy().as_ref()));
            }
            Framework::Version(version) => {
                spec.insert("version", Value::from(version.as_str()));
            }
        }
    }
    // `version` first, `features` last, whatever order they were merged in.
    spec.sort_values_by(|a, _, b, _| rank(a.get()).cmp(&rank(b.get())));
    spec.fmt();
    Ok(spec)
}

fn rank(key: &str) -> u8 {
    match key {
        "version" => 0,
        "path" => 1,
        "features" => 3,
        _ => 2,
    }
}

fn readme(template: &Template, options: &Options, renamer: &Renamer) -> String {
    let framework = match &options.framework {
        Framework::Path(root) => format!("by path, from `{}`", root.display()),
        Framework::Version(version) => format!("version `{version}`"),
    };
    format!(
        "# {name}\n\n\
         {description}. Started from the cqrs-rs `{template}` template; the framework is a \
         dependency {framework}.\n\n\
         ## Two commands\n\n\
         ```sh\n\
         {run:<62} # the service, on the in-memory store\n\
         {test:<62} # every test\n\
         ```\n\n\
         The tests on PostgreSQL connect to `DATABASE_URL` (default \
         `postgres://postgres@127.0.0.1:5432/postgres`; the user must be allowed to create \
         databases: each test makes its own and drops it). Run the service on PostgreSQL by \
         setting `DATABASE_URL` too.\n",
        name = options.name,
        description = capitalized(&renamer.rename(template.description)),
        template = template.name,
        run = template.run,
        test = "cargo test",
    )
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().collect::<String>() + chars.as_str()
    })
}

/// Every file of the new crate, rendered in memory: `(path in the crate, text)`. Checks the
/// options; writes nothing.
pub fn render(options: &Options) -> Result<Vec<(String, String)>, NewError> {
    check_name(&options.name)?;
    let template = template(&options.template).ok_or_else(|| NewError::UnknownTemplate {
        name: options.template.clone(),
        known: TEMPLATES
            .iter()
            .map(|template| template.name)
            .collect::<Vec<_>>()
            .join(", "),
    })?;
    if let Some(entity) = &options.entity {
        check_entity(&entity.singular)?;
        check_entity(&entity.plural)?;
    }
    if let Framework::Path(root) = &options.framework
        && !root.join("cqrs-core").join("Cargo.toml").is_file()
    {
        return Err(NewError::NotAFramework(root.clone()));
    }
    let renamer = Renamer::new(template, options);
    let mut files = vec![
        (
            "Cargo.toml".to_owned(),
            manifest(template, options, &renamer)?,
        ),
        ("README.md".to_owned(), readme(template, options, &renamer)),
        (".gitignore".to_owned(), "/target\n".to_owned()),
    ];
    for (path, text) in template.files {
        files.push((renamer.rename(path), renamer.rename(text)));
    }
    Ok(files)
}

/// Renders the new crate and writes it into `dir` (created if missing; refused if it holds
/// anything). Returns the files written.
pub fn generate(options: &Options, dir: &Path) -> Result<Vec<PathBuf>, NewError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| NewError::Io { path, source }
    };
    let existed = dir.exists();
    if existed {
        let mut entries = fs::read_dir(dir).map_err(io(dir))?;
        if entries.next().is_some() {
            return Err(NewError::NotEmpty(dir.to_path_buf()));
        }
    }
    let files = render(options)?;
    let mut written = Vec::with_capacity(files.len());
    let result = (|| {
        fs::create_dir_all(dir).map_err(io(dir))?;
        for (path, text) in &files {
            let path = dir.join(path);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(io(parent))?;
            }
            fs::write(&path, text).map_err(io(&path))?;
            written.push(path);
        }
        Ok(())
    })();
    if let Err(error) = result {
        // Leave nothing half-written: the directory as it was (absent, or empty).
        if existed {
            if let Ok(entries) = fs::read_dir(dir) {
                for entry in entries.flatten() {
                    let path = entry.path();
                    let _ = if path.is_dir() {
                        fs::remove_dir_all(&path)
                    } else {
                        fs::remove_file(&path)
                    };
                }
            }
        } else {
            let _ = fs::remove_dir_all(dir);
        }
        return Err(error);
    }
    Ok(written)
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<14} {}", self.name, self.description)
    }
}
