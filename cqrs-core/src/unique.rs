//! Unique keys across aggregates ("set validation"): the keys an aggregate's events claim and
//! release, reserved by the store in the same atomic append as the events.
//!
//! A rule such as "one account per e-mail address" spans aggregates, so no aggregate can
//! check it alone, and checking a read model first is racy: two concurrent registrations both
//! see the address free, and both commit. Here the aggregate declares, for each event, which
//! keys it claims and which it releases ([`UniqueKeys`]); the repository collects them into a
//! [`KeyChanges`] and appends with [`EventStore::append_with_keys`](crate::EventStore), and
//! the store reserves the keys in the append itself. A key another stream holds refuses the
//! whole append with [`StoreError::UniqueKeyTaken`](crate::StoreError::UniqueKeyTaken)
//! (surfaced as [`CommandError::UniqueKeyTaken`](crate::CommandError::UniqueKeyTaken)) and
//! nothing is written.

use std::borrow::Cow;
use std::fmt;

use crate::Aggregate;

/// A key held by at most one stream: a namespace (`"user.email"`) and a value within it.
///
/// Values are compared byte for byte: normalize them (lower-case an e-mail address, trim
/// spaces) in [`UniqueKeys::unique_keys`] before claiming or releasing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UniqueKey {
    /// What kind of value this is: `"user.email"`, `"product.sku"`.
    pub namespace: Cow<'static, str>,
    /// The value that must be unique within the namespace.
    pub value: String,
}

impl UniqueKey {
    /// The key `value` in `namespace`.
    pub fn new(namespace: impl Into<Cow<'static, str>>, value: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            value: value.into(),
        }
    }
}

impl fmt::Display for UniqueKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.namespace, self.value)
    }
}

/// Whether an append takes or gives up a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyChange {
    /// The stream takes the key; refused when another stream holds it. Claiming a key the
    /// stream already holds changes nothing.
    Claim,
    /// The stream gives the key up, if it holds it; otherwise nothing happens.
    Release,
}

/// The unique keys one append claims and releases, netted per key: the last change of a key
/// wins, so "release the old e-mail, claim the new one" and "claim, then release" within one
/// batch of events each leave one change per key.
///
/// Creating one does not allocate; an aggregate without keys never fills it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyChanges {
    changes: Vec<(UniqueKey, KeyChange)>,
}

impl KeyChanges {
    /// No changes.
    pub fn new() -> Self {
        Self::default()
    }

    /// The stream takes `value` in `namespace`.
    pub fn claim(&mut self, namespace: impl Into<Cow<'static, str>>, value: impl Into<String>) {
        self.push(UniqueKey::new(namespace, value), KeyChange::Claim);
    }

    /// The stream gives up `value` in `namespace`.
    pub fn release(&mut self, namespace: impl Into<Cow<'static, str>>, value: impl Into<String>) {
        self.push(UniqueKey::new(namespace, value), KeyChange::Release);
    }

    /// Records a change of `key`, replacing an earlier change of the same key.
    pub fn push(&mut self, key: UniqueKey, change: KeyChange) {
        match self.changes.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = change,
            None => self.changes.push((key, change)),
        }
    }

    /// Whether there is no change at all.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// How many keys change.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// Every change, one per key, in the order the keys were first named.
    pub fn iter(&self) -> impl Iterator<Item = (&UniqueKey, KeyChange)> {
        self.changes.iter().map(|(key, change)| (key, *change))
    }

    /// The keys claimed, sorted: stores that lock keys take them in this order, so that
    /// concurrent appends cannot wait for each other in a cycle.
    pub fn claims(&self) -> Vec<&UniqueKey> {
        self.sorted(KeyChange::Claim)
    }

    /// The keys released, sorted.
    pub fn releases(&self) -> Vec<&UniqueKey> {
        self.sorted(KeyChange::Release)
    }

    fn sorted(&self, wanted: KeyChange) -> Vec<&UniqueKey> {
        let mut keys: Vec<&UniqueKey> = self
            .changes
            .iter()
            .filter(|(_, change)| *change == wanted)
            .map(|(key, _)| key)
            .collect();
        keys.sort_unstable();
        keys
    }
}

impl IntoIterator for KeyChanges {
    type Item = (UniqueKey, KeyChange);
    type IntoIter = std::vec::IntoIter<(UniqueKey, KeyChange)>;

    /// Every change, one per key, in the order the keys were first named.
    fn into_iter(self) -> Self::IntoIter {
        self.changes.into_iter()
    }
}

/// The unique keys an aggregate's events claim and release: the answer to "set validation"
/// (one user per e-mail address, one product per SKU).
///
/// Implement it and opt in with `#[aggregate(..., unique_keys)]`; without `unique_keys` the
/// macro implements it with no keys (so an impl written without opting in does not compile,
/// instead of being silently ignored). For each event the repository appends, it calls
/// `unique_keys` with the state *before* the event, so an event can release a key the state
/// holds (the old address of `EmailChanged`, every key of `Deleted`). The keys of all the
/// events of a command go to the store with the events in one atomic append; see the
/// [`Aggregate`] docs for the guarantees.
///
/// ```
/// use cqrs_core::prelude::*;
/// use cqrs_core::{KeyChanges, UniqueKeys};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// pub struct Registered { pub email: String }
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// pub struct EmailChanged { pub email: String }
///
/// #[derive(Debug, Clone, PartialEq, Event)]
/// pub enum UserEvent { Registered(Registered), EmailChanged(EmailChanged) }
///
/// #[derive(Debug, Default)]
/// pub struct User { email: String }
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("never")]
/// pub struct Never;
///
/// #[aggregate(event = UserEvent, error = Never, unique_keys)]
/// impl User {
///     #[event_handler]
///     fn on_registered(&mut self, e: &Registered) { self.email.clone_from(&e.email) }
///     #[event_handler]
///     fn on_email_changed(&mut self, e: &EmailChanged) { self.email.clone_from(&e.email) }
/// }
///
/// impl UniqueKeys for User {
///     fn unique_keys(&self, event: &UserEvent, keys: &mut KeyChanges) {
///         match event {
///             UserEvent::Registered(e) => keys.claim("user.email", e.email.to_lowercase()),
///             UserEvent::EmailChanged(e) => {
///                 keys.release("user.email", self.email.to_lowercase());
///                 keys.claim("user.email", e.email.to_lowercase());
///             }
///         }
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` declares `unique_keys` but does not implement `UniqueKeys`",
    label = "`#[aggregate(unique_keys)]` forwards to `UniqueKeys::unique_keys`",
    note = "add `impl cqrs_core::UniqueKeys for {Self} {{ fn unique_keys(&self, event: &Self::Event, keys: &mut cqrs_core::KeyChanges) {{ ... }} }}`"
)]
pub trait UniqueKeys: Aggregate {
    /// Records in `keys` what `event` claims and releases, given the state before it.
    fn unique_keys(&self, event: &Self::Event, keys: &mut KeyChanges);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_change_of_a_key_wins_and_keys_come_out_sorted() {
        let mut keys = KeyChanges::new();
        keys.claim("user.email", "b@x");
        keys.claim("user.email", "a@x");
        keys.release("user.email", "b@x");
        keys.release("user.email", "c@x");
        keys.claim("user.email", "c@x");
        assert_eq!(keys.len(), 3);
        let claims: Vec<_> = keys.claims().iter().map(|k| k.value.as_str()).collect();
        assert_eq!(claims, ["a@x", "c@x"]);
        let releases: Vec<_> = keys.releases().iter().map(|k| k.value.as_str()).collect();
        assert_eq!(releases, ["b@x"]);
    }

    #[test]
    fn namespaces_keep_equal_values_apart() {
        let mut keys = KeyChanges::new();
        keys.claim("user.email", "x");
        keys.claim("user.name", "x");
        assert_eq!(keys.claims().len(), 2);
    }
}
