//! The user directory: one user by id, and pages of users with the total count.
//!
//! Two homes for the same read model, one query handler type ([`Directory`]) over both:
//!
//! - in process memory ([`UsersInMemory`] in a [`ReadModel`]), fed by the command bus: no
//!   set-up, gone with the process, right for the in-memory store;
//! - in PostgreSQL ([`UsersTable`], table `user_directory`), fed by a durable transactional
//!   subscription: each batch of events and the subscription's checkpoint commit in one
//!   transaction, so after a restart the table resumes exactly where it stopped (nothing
//!   applied twice, nothing skipped).

use std::collections::BTreeMap;

use cqrs_core::prelude::*;
use cqrs_core::{AnsweredQueries, HandlesQuery};
use sqlx::{PgConnection, PgPool, Row};
use validator::Validate;

use crate::domain::{Deactivated, EmailChanged, Registered, Renamed, User};

/// The table of [`UsersTable`], created by [`UsersTable::create_table`].
pub const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS user_directory (
    id uuid PRIMARY KEY,
    email text NOT NULL,
    name text NOT NULL,
    active boolean NOT NULL
)";

/// One user, as the directory shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserView {
    /// The user's id.
    pub id: Uuid,
    /// The current address.
    pub email: String,
    /// The current name.
    pub name: String,
    /// Whether the user is active.
    pub active: bool,
}

/// One page of users, in id order: registration order for the UUID v7 ids the service
/// assigns, except users created under an idempotency key (their id is derived from it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserPage {
    /// The users of this page.
    pub items: Vec<UserView>,
    /// How many users match, over all pages.
    pub total: u64,
    /// This page's number, from 1.
    pub page: u32,
    /// The page size.
    pub per_page: u32,
}

/// Ask for one user.
#[derive(Debug, Clone, Deserialize, Query)]
#[query(output = UserView, name = "user.get")]
pub struct GetUser {
    /// The user.
    pub user_id: Uuid,
}

/// Ask for a page of users.
#[derive(Debug, Clone, Deserialize, Validate, Query)]
#[query(output = UserPage, name = "user.list", validate)]
pub struct ListUsers {
    /// The page, from 1.
    #[validate(range(min = 1))]
    pub page: u32,
    /// The page size, 1 to 100.
    #[validate(range(min = 1, max = 100))]
    pub per_page: u32,
    /// Only active (`true`) or only deactivated (`false`) users; all when absent.
    pub active: Option<bool>,
}

/// Why the directory could not answer.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// No such user.
    #[error("no user {0}")]
    NotFound(Uuid),
    /// The database failed.
    #[error("the directory is unavailable: {0}")]
    Unavailable(#[from] sqlx::Error),
}

impl DomainError for DirectoryError {
    fn code(&self) -> &'static str {
        match self {
            DirectoryError::NotFound(_) => "not_found",
            DirectoryError::Unavailable(_) => "directory_unavailable",
        }
    }
}

fn user_id(recorded: &RecordedEvent) -> Option<Uuid> {
    recorded.aggregate_id::<User>()?.parse().ok()
}

/// The directory in process memory.
#[derive(Debug, Default)]
pub struct UsersInMemory {
    users: BTreeMap<Uuid, UserView>,
}

#[projection(name = "user_directory")]
impl UsersInMemory {
    #[event_handler]
    fn on_registered(&mut self, event: &Registered, recorded: &RecordedEvent) {
        if let Some(id) = user_id(recorded) {
            let view = UserView {
                id,
                email: event.email.to_string(),
                name: event.name.clone(),
                active: true,
            };
            self.users.insert(id, view);
        }
    }

    #[event_handler]
    fn on_email_changed(&mut self, event: &EmailChanged, recorded: &RecordedEvent) {
        if let Some(view) = user_id(recorded).and_then(|id| self.users.get_mut(&id)) {
            view.email = event.email.to_string();
        }
    }

    #[event_handler]
    fn on_renamed(&mut self, event: &Renamed, recorded: &RecordedEvent) {
        if let Some(view) = user_id(recorded).and_then(|id| self.users.get_mut(&id)) {
            view.name.clone_from(&event.name);
        }
    }

    #[event_handler]
    fn on_deactivated(&mut self, _event: &Deactivated, recorded: &RecordedEvent) {
        if let Some(view) = user_id(recorded).and_then(|id| self.users.get_mut(&id)) {
            view.active = false;
        }
    }
}

impl UsersInMemory {
    fn get(&self, id: Uuid) -> Result<UserView, DirectoryError> {
        self.users
            .get(&id)
            .cloned()
            .ok_or(DirectoryError::NotFound(id))
    }

    fn list(&self, query: &ListUsers) -> UserPage {
        let matching: Vec<&UserView> = self
            .users
            .values()
            .filter(|user| query.active.is_none_or(|active| user.active == active))
            .collect();
        let skip = (query.page as usize - 1) * query.per_page as usize;
        UserPage {
            total: matching.len() as u64,
            items: matching
                .into_iter()
                .skip(skip)
                .take(query.per_page as usize)
                .cloned()
                .collect(),
            page: query.page,
            per_page: query.per_page,
        }
    }
}

/// The directory in PostgreSQL: rows written through the subscription's transaction.
pub struct UsersTable;

#[projection(name = "user_directory", context = PgConnection)]
impl UsersTable {
    #[event_handler]
    async fn on_registered(
        &mut self,
        event: &Registered,
        recorded: &RecordedEvent,
        db: &mut PgConnection,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO user_directory (id, email, name, active) VALUES ($1, $2, $3, true)",
        )
        .bind(user_id(recorded))
        .bind(event.email.as_str())
        .bind(&event.name)
        .execute(db)
        .await?;
        Ok(())
    }

    #[event_handler]
    async fn on_email_changed(
        &mut self,
        event: &EmailChanged,
        recorded: &RecordedEvent,
        db: &mut PgConnection,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE user_directory SET email = $2 WHERE id = $1")
            .bind(user_id(recorded))
            .bind(event.email.as_str())
            .execute(db)
            .await?;
        Ok(())
    }

    #[event_handler]
    async fn on_renamed(
        &mut self,
        event: &Renamed,
        recorded: &RecordedEvent,
        db: &mut PgConnection,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE user_directory SET name = $2 WHERE id = $1")
            .bind(user_id(recorded))
            .bind(&event.name)
            .execute(db)
            .await?;
        Ok(())
    }

    #[event_handler]
    async fn on_deactivated(
        &mut self,
        _event: &Deactivated,
        recorded: &RecordedEvent,
        db: &mut PgConnection,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE user_directory SET active = false WHERE id = $1")
            .bind(user_id(recorded))
            .execute(db)
            .await?;
        Ok(())
    }
}

impl UsersTable {
    /// Creates the table if it does not exist.
    pub async fn create_table(pool: &PgPool) -> Result<(), sqlx::Error> {
        sqlx::query(CREATE_TABLE).execute(pool).await.map(drop)
    }
}

/// Answers the directory's queries from memory or from PostgreSQL: one handler type, so the
/// query bus has one type whichever store the service runs on.
#[derive(Clone)]
pub enum Directory {
    /// The in-memory model.
    Memory(ReadModel<UsersInMemory>),
    /// The `user_directory` table.
    Postgres(PgPool),
}

impl AnsweredQueries for Directory {
    const NAMES: &'static [&'static str] = &[<GetUser as Query>::NAME, <ListUsers as Query>::NAME];
}

fn view(row: &sqlx::postgres::PgRow) -> Result<UserView, sqlx::Error> {
    Ok(UserView {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        name: row.try_get("name")?,
        active: row.try_get("active")?,
    })
}

impl HandlesQuery<GetUser> for Directory {
    type Error = DirectoryError;

    async fn handle_query(&self, query: &GetUser) -> Result<UserView, DirectoryError> {
        match self {
            Directory::Memory(model) => model.read().await.get(query.user_id),
            Directory::Postgres(pool) => {
                let row =
                    sqlx::query("SELECT id, email, name, active FROM user_directory WHERE id = $1")
                        .bind(query.user_id)
                        .fetch_optional(pool)
                        .await?;
                match row {
                    Some(row) => Ok(view(&row)?),
                    None => Err(DirectoryError::NotFound(query.user_id)),
                }
            }
        }
    }

    fn domain_code(error: &DirectoryError) -> Option<&'static str> {
        Some(DomainError::code(error))
    }
}

impl HandlesQuery<ListUsers> for Directory {
    type Error = DirectoryError;

    async fn handle_query(&self, query: &ListUsers) -> Result<UserPage, DirectoryError> {
        match self {
            Directory::Memory(model) => Ok(model.read().await.list(query)),
            Directory::Postgres(pool) => {
                let offset = i64::from(query.page - 1) * i64::from(query.per_page);
                // One statement: the page and the total count from the same snapshot.
                let rows = sqlx::query(
                    "SELECT id, email, name, active, count(*) OVER () AS total
                     FROM user_directory
                     WHERE $1::boolean IS NULL OR active = $1
                     ORDER BY id
                     LIMIT $2 OFFSET $3",
                )
                .bind(query.active)
                .bind(i64::from(query.per_page))
                .bind(offset)
                .fetch_all(pool)
                .await?;
                let total = match rows.first() {
                    Some(row) => row.try_get::<i64, _>("total")?,
                    // Past the last page: count alone.
                    None => {
                        sqlx::query_scalar(
                            "SELECT count(*) FROM user_directory WHERE $1::boolean IS NULL OR active = $1",
                        )
                        .bind(query.active)
                        .fetch_one(pool)
                        .await?
                    }
                };
                Ok(UserPage {
                    items: rows.iter().map(view).collect::<Result<_, _>>()?,
                    total: u64::try_from(total).unwrap_or(0),
                    page: query.page,
                    per_page: query.per_page,
                })
            }
        }
    }

    fn domain_code(error: &DirectoryError) -> Option<&'static str> {
        Some(DomainError::code(error))
    }
}
