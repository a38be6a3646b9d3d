//! Mistakes in using the macros are compile errors that point at the user's own tokens.
//!
//! Each case under `ui/<macro>/` makes one mistake; its `.stderr` is the expected compiler
//! output. Regenerate with `TRYBUILD=overwrite cargo test -p cqrs-tests --test ui` and review
//! the diff.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    for kind in [
        "command",
        "query",
        "event",
        "aggregate",
        "projection",
        "saga",
    ] {
        cases.compile_fail(format!("ui/{kind}/*.rs"));
    }
}

/// Registering something twice on a bus fails where the bus is built. The check is a constant
/// evaluated when the builder call is compiled to code, which `cargo check` does not do: the
/// pass case makes trybuild build (not only check) every case of this set.
#[test]
fn registration() {
    let cases = trybuild::TestCases::new();
    cases.pass("ui/registration/each_once.rs");
    cases.compile_fail("ui/registration/*_twice.rs");
    cases.compile_fail("ui/registration/*_two_handlers.rs");
}
