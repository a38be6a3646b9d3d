//! Mistakes in using the macros are compile errors that point at the user's own tokens.
//!
//! Each case under `ui/<macro>/` makes one mistake; its `.stderr` is the expected compiler
//! output. Regenerate with `TRYBUILD=overwrite cargo test -p cqrs-tests --test ui` and review
//! the diff.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    for kind in ["command", "query", "event", "aggregate", "projection"] {
        cases.compile_fail(format!("ui/{kind}/*.rs"));
    }
}
