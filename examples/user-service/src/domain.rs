//! The user aggregate: the `Email` value object, events, commands, rules and typed errors.
//!
//! E-mail uniqueness is decided twice, on purpose. The command handler asks an injected
//! async service ([`EmailUniqueness`]) first, so that the usual case (the address is plainly
//! taken) is a domain error with its own code (`email_taken`). That check alone is racy: two
//! registrations can both see the address free. What holds under concurrency is the unique
//! key `user.email` the events claim ([`UniqueKeys`]): the store reserves it in the append
//! itself, so the second of two racing registrations fails with `unique_key_taken` and writes
//! nothing. Both reach HTTP clients as 409.

use std::fmt;
use std::sync::Arc;

use cqrs_core::prelude::*;
use cqrs_core::{KeyChanges, UniqueKeys};
use validator::Validate;

/// The namespace of the e-mail unique key.
pub const EMAIL_KEY: &str = "user.email";

/// An e-mail address, trimmed and lower-cased: two spellings of one address are one key.
///
/// Parsing checks the shape only (one `@`, a local part, a dotted domain, at most 254
/// characters, no spaces); whether the mailbox exists is for a confirmation mail to find out.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

/// Why a text is not an e-mail address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an e-mail address: {0}")]
pub struct InvalidEmail(&'static str);

impl Email {
    /// Parses and normalizes `text`.
    pub fn parse(text: &str) -> Result<Self, InvalidEmail> {
        let text = text.trim().to_lowercase();
        if text.len() > 254 {
            return Err(InvalidEmail("longer than 254 characters"));
        }
        if text.chars().any(char::is_whitespace) {
            return Err(InvalidEmail("contains a space"));
        }
        let (local, domain) = text.split_once('@').ok_or(InvalidEmail("no `@`"))?;
        if local.is_empty() || domain.contains('@') {
            return Err(InvalidEmail("exactly one `@` after a local part"));
        }
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2 || labels.iter().any(|label| label.is_empty()) {
            return Err(InvalidEmail(
                "the domain needs a dot between non-empty labels",
            ));
        }
        Ok(Self(text))
    }

    /// The normalized address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Email {
    type Error = InvalidEmail;

    fn try_from(text: String) -> Result<Self, InvalidEmail> {
        Self::parse(&text)
    }
}

impl From<Email> for String {
    fn from(email: Email) -> Self {
        email.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A user registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registered {
    /// The address.
    pub email: Email,
    /// The display name.
    pub name: String,
}

/// A user's address changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmailChanged {
    /// The new address.
    pub email: Email,
}

/// A user's name changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Renamed {
    /// The new name.
    pub name: String,
}

/// The user was deactivated: no more changes, the address is free again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deactivated;

/// Everything that can happen to a user; the stored names are pinned.
#[derive(Debug, Clone, PartialEq, Event)]
pub enum UserEvent {
    /// See [`Registered`].
    #[event(name = "user.registered")]
    Registered(Registered),
    /// See [`EmailChanged`].
    #[event(name = "user.email_changed")]
    EmailChanged(EmailChanged),
    /// See [`Renamed`].
    #[event(name = "user.renamed")]
    Renamed(Renamed),
    /// See [`Deactivated`].
    #[event(name = "user.deactivated")]
    Deactivated(Deactivated),
}

/// Register a new user. Idempotent: an `Idempotency-Key` header makes a retry safe.
#[derive(Debug, Clone, Serialize, Deserialize, Validate, Command)]
#[command(aggregate = User, id = user_id, name = "user.register", validate, idempotent)]
pub struct RegisterUser {
    /// The new user's id.
    pub user_id: Uuid,
    /// The address, unique among active users.
    pub email: Email,
    /// The display name.
    #[validate(length(min = 1, max = 100))]
    pub name: String,
}

/// Change a user's address.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(aggregate = User, id = user_id, name = "user.change_email", idempotent)]
pub struct ChangeEmail {
    /// The user.
    pub user_id: Uuid,
    /// The new address.
    pub email: Email,
}

/// Change a user's name.
#[derive(Debug, Clone, Serialize, Deserialize, Validate, Command)]
#[command(aggregate = User, id = user_id, name = "user.rename", validate, idempotent)]
pub struct RenameUser {
    /// The user.
    pub user_id: Uuid,
    /// The new name.
    #[validate(length(min = 1, max = 100))]
    pub name: String,
}

/// Deactivate a user: later changes are refused and the address is released.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(aggregate = User, id = user_id, name = "user.deactivate", idempotent)]
pub struct DeactivateUser {
    /// The user.
    pub user_id: Uuid,
}

/// Why the user refused a command. Each has a stable code ([`DomainError`]), which the HTTP
/// layer maps to a status (`wire::problems`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// `RegisterUser` for an id that exists.
    #[error("user {0} already exists")]
    AlreadyExists(Uuid),
    /// A command for a user never registered.
    #[error("no user {0}")]
    NotFound(Uuid),
    /// A change to a deactivated user.
    #[error("user {0} is deactivated")]
    Deactivated(Uuid),
    /// The address belongs to another user.
    #[error("the address {0} is taken")]
    EmailTaken(Email),
    /// The uniqueness service could not answer.
    #[error("cannot check the address now: {0}")]
    UniquenessUnavailable(String),
}

impl DomainError for UserError {
    fn code(&self) -> &'static str {
        match self {
            UserError::AlreadyExists(_) => "user_exists",
            UserError::NotFound(_) => "not_found",
            UserError::Deactivated(_) => "user_deactivated",
            UserError::EmailTaken(_) => "email_taken",
            UserError::UniquenessUnavailable(_) => "uniqueness_unavailable",
        }
    }
}

/// Whether an address is held by another user: the async service the handlers ask.
pub trait EmailUniqueness: Send + Sync {
    /// The stream holding `email`, if one does.
    fn holder<'a>(&'a self, email: &'a Email) -> BoxFuture<'a, Result<Option<String>, String>>;
}

/// [`EmailUniqueness`] answered by the event store's unique keys: the same keys the appends
/// reserve, so it agrees with them except for a registration still in flight.
pub struct StoreUniqueness(pub Arc<dyn EventStore>);

impl EmailUniqueness for StoreUniqueness {
    fn holder<'a>(&'a self, email: &'a Email) -> BoxFuture<'a, Result<Option<String>, String>> {
        Box::pin(async move {
            self.0
                .unique_key_owner(EMAIL_KEY, email.as_str())
                .await
                .map_err(|error| error.to_string())
        })
    }
}

/// What the user handlers are given: the uniqueness service.
pub type Services = Arc<dyn EmailUniqueness>;

/// A user's state, rebuilt from its events.
#[derive(Debug, Default, Clone)]
pub struct User {
    email: Option<Email>,
    active: bool,
    deactivated: bool,
}

#[aggregate(event = UserEvent, error = UserError, name = "user", services = Arc<dyn EmailUniqueness>, unique_keys)]
impl User {
    #[command_handler]
    async fn register(
        &self,
        cmd: &RegisterUser,
        emails: &dyn EmailUniqueness,
    ) -> Result<Registered, UserError> {
        if self.email.is_some() {
            return Err(UserError::AlreadyExists(cmd.user_id));
        }
        ensure_free(emails, &cmd.email, None).await?;
        Ok(Registered {
            email: cmd.email.clone(),
            name: cmd.name.clone(),
        })
    }

    #[command_handler]
    async fn change_email(
        &self,
        cmd: &ChangeEmail,
        emails: &dyn EmailUniqueness,
        ctx: &CommandContext,
    ) -> Result<Option<UserEvent>, UserError> {
        self.ensure_active(cmd.user_id)?;
        if self.email.as_ref() == Some(&cmd.email) {
            return Ok(None);
        }
        ensure_free(emails, &cmd.email, Some(&ctx.stream_id)).await?;
        Ok(Some(UserEvent::EmailChanged(EmailChanged {
            email: cmd.email.clone(),
        })))
    }

    #[command_handler]
    fn rename(&self, cmd: &RenameUser) -> Result<Renamed, UserError> {
        self.ensure_active(cmd.user_id)?;
        Ok(Renamed {
            name: cmd.name.clone(),
        })
    }

    #[command_handler]
    fn deactivate(&self, cmd: &DeactivateUser) -> Result<Option<UserEvent>, UserError> {
        if self.deactivated {
            return Ok(None);
        }
        self.ensure_active(cmd.user_id)?;
        Ok(Some(UserEvent::Deactivated(Deactivated)))
    }

    #[event_handler]
    fn on_registered(&mut self, event: &Registered) {
        self.email = Some(event.email.clone());
        self.active = true;
    }

    #[event_handler]
    fn on_email_changed(&mut self, event: &EmailChanged) {
        self.email = Some(event.email.clone());
    }

    #[event_handler]
    fn on_renamed(&mut self, _event: &Renamed) {}

    #[event_handler]
    fn on_deactivated(&mut self, _event: &Deactivated) {
        self.active = false;
        self.deactivated = true;
    }
}

impl User {
    fn ensure_active(&self, id: Uuid) -> Result<(), UserError> {
        match (self.active, self.deactivated) {
            (_, true) => Err(UserError::Deactivated(id)),
            (false, false) => Err(UserError::NotFound(id)),
            (true, false) => Ok(()),
        }
    }

    /// Whether the user is active.
    pub fn is_active(&self) -> bool {
        self.active
    }
}

/// The address is free, or held by `me`.
async fn ensure_free(
    emails: &dyn EmailUniqueness,
    email: &Email,
    me: Option<&str>,
) -> Result<(), UserError> {
    match emails.holder(email).await {
        Ok(Some(holder)) if Some(holder.as_str()) != me => {
            Err(UserError::EmailTaken(email.clone()))
        }
        Ok(_) => Ok(()),
        Err(error) => Err(UserError::UniquenessUnavailable(error)),
    }
}

/// Registration claims the address; a change releases the old one and claims the new one in
/// the same append; deactivation releases it.
impl UniqueKeys for User {
    fn unique_keys(&self, event: &UserEvent, keys: &mut KeyChanges) {
        match event {
            UserEvent::Registered(e) => keys.claim(EMAIL_KEY, e.email.as_str()),
            UserEvent::EmailChanged(e) => {
                if let Some(old) = &self.email {
                    keys.release(EMAIL_KEY, old.as_str());
                }
                keys.claim(EMAIL_KEY, e.email.as_str());
            }
            UserEvent::Deactivated(_) => {
                if let Some(old) = &self.email {
                    keys.release(EMAIL_KEY, old.as_str());
                }
            }
            UserEvent::Renamed(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Email;

    #[test]
    fn an_address_is_normalized_and_checked_for_shape() {
        assert_eq!(
            Email::parse("  Ada@Example.COM ").unwrap().as_str(),
            "ada@example.com"
        );
        for bad in [
            "",
            "ada",
            "@example.com",
            "ada@",
            "ada@example",
            "a b@x.io",
            "a@b@c.io",
            "a@x..io",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
