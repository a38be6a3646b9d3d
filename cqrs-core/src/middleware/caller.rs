//! Who is asking, for middleware on the query path (queries carry no metadata of their own).

use std::future::Future;

use crate::Metadata;

tokio::task_local! {
    static CALLER: Metadata;
}

/// Runs `future` (typically `query_bus.execute(query)`) on behalf of the caller that
/// `metadata` names: [`Authorize`](super::Authorize) and per-user or per-key limits
/// ([`Scope`](super::Scope)) read the acting user and custom keys from it.
///
/// Commands carry their metadata in their context (`execute_with`); queries do not, so the
/// query path takes it from here. Outside `as_caller` a query is anonymous.
///
/// ```
/// use cqrs_core::Metadata;
/// use cqrs_core::middleware::{as_caller, current_caller};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let user = as_caller(Metadata::default().with_user_id("ada"), async {
///     current_caller(|caller| caller.and_then(|m| m.user_id.clone()))
/// })
/// .await;
/// assert_eq!(user.as_deref(), Some("ada"));
/// # });
/// ```
pub async fn as_caller<F: Future>(metadata: Metadata, future: F) -> F::Output {
    CALLER.scope(metadata, future).await
}

/// Calls `f` with the metadata of the enclosing [`as_caller`], or `None` outside one.
// `f` is taken exactly once: inside the scope, or after `try_with` declined to call it.
#[allow(clippy::missing_panics_doc)]
pub fn current_caller<R>(f: impl FnOnce(Option<&Metadata>) -> R) -> R {
    let mut f = Some(f);
    match CALLER.try_with(|metadata| f.take().map(|f| f(Some(metadata)))) {
        Ok(Some(result)) => result,
        _ => f.take().expect("`f` was not called")(None),
    }
}
