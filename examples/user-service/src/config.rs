//! Configuration from the environment, checked at start-up: a bad value stops the service
//! with a message naming the variable, instead of running with a default nobody chose.

use std::time::Duration;

/// The service's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// `PORT`: the TCP port to listen on (default 8080; 0 picks a free one).
    pub port: u16,
    /// `DATABASE_URL`: PostgreSQL; the in-memory store when unset.
    pub database_url: Option<String>,
    /// `JWT_SECRET`: the HMAC key (HS256) bearer tokens are signed with; at least 32 bytes.
    pub jwt_secret: Vec<u8>,
    /// `BODY_LIMIT_BYTES`: the largest request body accepted (default 16 KiB).
    pub body_limit: usize,
    /// `REQUEST_TIMEOUT_MS`: how long one request may take (default 10 000 ms).
    pub request_timeout: Duration,
    /// `CORS_ALLOW_ORIGINS`: comma-separated origins allowed by CORS; `*` for any (the
    /// default when unset).
    pub cors_origins: Option<Vec<String>>,
}

/// A setting is missing or malformed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is unset.
    #[error("{0} is not set")]
    Missing(&'static str),
    /// A variable's value is unusable.
    #[error("{name}: {reason}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// Why.
        reason: String,
    },
}

/// The shortest HMAC key accepted: HS256 wants at least 256 bits.
pub const MIN_SECRET_BYTES: usize = 32;

impl Config {
    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let jwt_secret = lookup("JWT_SECRET")
            .ok_or(ConfigError::Missing("JWT_SECRET"))?
            .into_bytes();
        if jwt_secret.len() < MIN_SECRET_BYTES {
            return Err(ConfigError::Invalid {
                name: "JWT_SECRET",
                reason: format!("at least {MIN_SECRET_BYTES} bytes are needed"),
            });
        }
        Ok(Self {
            port: parse(&lookup, "PORT")?.unwrap_or(8080),
            database_url: lookup("DATABASE_URL").filter(|url| !url.is_empty()),
            jwt_secret,
            body_limit: parse(&lookup, "BODY_LIMIT_BYTES")?.unwrap_or(16 * 1024),
            request_timeout: Duration::from_millis(
                parse(&lookup, "REQUEST_TIMEOUT_MS")?.unwrap_or(10_000),
            ),
            cors_origins: lookup("CORS_ALLOW_ORIGINS")
                .filter(|origins| origins.trim() != "*")
                .map(|origins| {
                    origins
                        .split(',')
                        .map(|origin| origin.trim().to_owned())
                        .filter(|origin| !origin.is_empty())
                        .collect()
                }),
        })
    }

    /// Settings for tests and tools: in memory, a free port, the given secret.
    pub fn for_tests(jwt_secret: &[u8]) -> Self {
        Self {
            port: 0,
            database_url: None,
            jwt_secret: jwt_secret.to_vec(),
            body_limit: 16 * 1024,
            request_timeout: Duration::from_secs(10),
            cors_origins: None,
        }
    }
}

fn parse<T: std::str::FromStr>(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<Option<T>, ConfigError>
where
    T::Err: std::fmt::Display,
{
    lookup(name)
        .map(|value| {
            value
                .trim()
                .parse()
                .map_err(|error: T::Err| ConfigError::Invalid {
                    name,
                    reason: format!("{value:?}: {error}"),
                })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        }
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn defaults_apply_and_the_secret_is_required() {
        let config = Config::from_lookup(env(&[("JWT_SECRET", SECRET)])).unwrap();
        assert_eq!((config.port, config.body_limit), (8080, 16 * 1024));
        assert!(config.database_url.is_none());
        assert!(matches!(
            Config::from_lookup(env(&[])),
            Err(ConfigError::Missing("JWT_SECRET"))
        ));
        assert!(matches!(
            Config::from_lookup(env(&[("JWT_SECRET", "short")])),
            Err(ConfigError::Invalid {
                name: "JWT_SECRET",
                ..
            })
        ));
    }

    #[test]
    fn a_malformed_number_names_its_variable() {
        let error =
            Config::from_lookup(env(&[("JWT_SECRET", SECRET), ("PORT", "eighty")])).unwrap_err();
        assert!(error.to_string().starts_with("PORT: \"eighty\""), "{error}");
    }
}
