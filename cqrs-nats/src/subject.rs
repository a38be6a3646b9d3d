//! Where each event is published: its NATS subject.

use std::fmt;
use std::sync::Arc;

use cqrs_core::RecordedEvent;

/// Decides the subject each event is published on.
///
/// The default, [`Subjects::by_category`], is `<prefix>.<stream category>.<event type>`: the
/// stream category is the part of the stream id before its first `-` (the aggregate's name,
/// since the command bus names streams `{Aggregate::NAME}-{id}`), and the event type is the
/// stored type name, whose dots become further subject tokens. A consumer can then filter on
/// `<prefix>.BankAccount.>` or `<prefix>.*.account.opened`.
///
/// Characters a subject token may not hold (whitespace, `*`, `>`, control characters) become
/// `_`, and an empty token becomes `_`, so the default mapping always yields a valid subject.
///
/// ```
/// use cqrs_nats::Subjects;
///
/// let subjects = Subjects::by_category("events");
/// assert_eq!(
///     subjects.subject_for("BankAccount-42", "account.opened"),
///     "events.BankAccount.account.opened"
/// );
/// // A stream id without `-` is its own category; bad characters are replaced.
/// assert_eq!(subjects.subject_for("ledger", "entry posted"), "events.ledger.entry_posted");
/// // What the JetStream stream must capture:
/// assert_eq!(subjects.filter(), "events.>");
/// ```
#[derive(Clone)]
pub struct Subjects {
    prefix: String,
    map: Option<Arc<MapFn>>,
}

type MapFn = dyn Fn(&RecordedEvent) -> String + Send + Sync;

impl fmt::Debug for Subjects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subjects")
            .field("prefix", &self.prefix)
            .field("custom", &self.map.is_some())
            .finish()
    }
}

impl Subjects {
    /// `<prefix>.<stream category>.<event type>`.
    pub fn by_category(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            map: None,
        }
    }

    /// A mapping of your own: `map` returns the subject after `<prefix>.` for each event. Its
    /// result is checked when the relay publishes; an invalid subject stops the relay with
    /// [`RelayError::InvalidSubject`](crate::RelayError::InvalidSubject).
    pub fn custom(
        prefix: impl Into<String>,
        map: impl Fn(&RecordedEvent) -> String + Send + Sync + 'static,
    ) -> Self {
        Self {
            prefix: prefix.into(),
            map: Some(Arc::new(map)),
        }
    }

    /// The prefix every subject starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The wildcard subject covering every subject of this mapping: `<prefix>.>`.
    pub fn filter(&self) -> String {
        format!("{}.>", self.prefix)
    }

    /// The subject of an event of `event_type` in stream `stream_id` under the default mapping
    /// (a custom mapping needs the whole event: see [`subject`](Self::subject)).
    pub fn subject_for(&self, stream_id: &str, event_type: &str) -> String {
        let mut subject = String::with_capacity(
            self.prefix.len() + stream_id.len().min(32) + event_type.len() + 2,
        );
        subject.push_str(&self.prefix);
        subject.push('.');
        push_token(&mut subject, category(stream_id));
        for token in event_type.split('.') {
            subject.push('.');
            push_token(&mut subject, token);
        }
        subject
    }

    /// The subject of `event`.
    pub fn subject(&self, event: &RecordedEvent) -> String {
        match &self.map {
            None => self.subject_for(&event.stream_id, &event.event_type),
            Some(map) => format!("{}.{}", self.prefix, map(event)),
        }
    }
}

/// The category of a stream: its id up to the first `-`.
pub fn category(stream_id: &str) -> &str {
    stream_id
        .split_once('-')
        .map_or(stream_id, |(head, _)| head)
}

fn push_token(subject: &mut String, token: &str) {
    if token.is_empty() {
        subject.push('_');
        return;
    }
    for c in token.chars() {
        if c.is_whitespace() || c.is_control() || matches!(c, '*' | '>' | '.') {
            subject.push('_');
        } else {
            subject.push(c);
        }
    }
}

/// Whether `subject` is a valid subject to publish on: non-empty tokens separated by `.`,
/// without whitespace, control characters or wildcards.
pub fn is_valid_subject(subject: &str) -> bool {
    !subject.is_empty()
        && subject.split('.').all(|token| {
            !token.is_empty()
                && !token
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '*' | '>'))
        })
}

/// Whether the stream subject (possibly with wildcards) `pattern` captures every subject that
/// `filter` (possibly with wildcards) matches.
pub(crate) fn covers(pattern: &str, filter: &str) -> bool {
    let mut pattern = pattern.split('.');
    let mut filter = filter.split('.');
    loop {
        match (pattern.next(), filter.next()) {
            (Some(">"), Some(_)) | (None, None) => return true,
            (Some("*"), Some(f)) if f != ">" => {}
            (Some(p), Some(f)) if p == f => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitizes_every_token() {
        let subjects = Subjects::by_category("p");
        assert_eq!(subjects.subject_for("-x", "a..b"), "p._.a._.b");
        assert_eq!(subjects.subject_for("A b-1", "t*>"), "p.A_b.t__");
        assert!(is_valid_subject(&subjects.subject_for(" ", "")));
    }

    #[test]
    fn coverage() {
        assert!(covers("events.>", "events.>"));
        assert!(covers(">", "events.>"));
        assert!(covers("*.>", "events.>"));
        assert!(!covers("events.*", "events.>"));
        assert!(!covers("events.a.>", "events.>"));
        assert!(!covers("other.>", "events.>"));
        assert!(covers("events.*.x", "events.a.x"));
    }
}
