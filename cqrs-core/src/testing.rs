//! Test support: the given/when/then fixture.
