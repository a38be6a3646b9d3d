//! Type-level lists that let the buses find a registered aggregate or query handler by type,
//! at compile time, without a map lookup or a downcast.
//!
//! A bus built with `.aggregate::<A>()` then `.aggregate::<B>()` holds
//! `(Repository<B>, (Repository<A>, ()))`. `execute` asks for `Contains<C::Aggregate, I>`; the
//! index `I` (`Here`, `There<Here>`, ...) is inferred, so the lookup is a field access.

use std::marker::PhantomData;

use crate::{Aggregate, HandlesQuery, Query, Repository};

/// Index of the head of a type-level list.
pub struct Here;

/// Index into the tail of a type-level list.
pub struct There<I>(PhantomData<I>);

/// The index one element further down the list.
pub trait Deeper {
    /// `Here` becomes `There<Here>`, `There<I>` becomes `There<I::Out>`.
    type Out;
}

impl Deeper for Here {
    type Out = There<Here>;
}

impl<I: Deeper> Deeper for There<I> {
    type Out = There<I::Out>;
}

/// The command bus's aggregates include `A` (at index `I`).
#[diagnostic::on_unimplemented(
    message = "aggregate `{A}` is not registered on this command bus",
    label = "`{A}` is missing from this bus",
    note = "add `.aggregate::<{A}>(services)` to the `CommandBus` builder"
)]
pub trait Contains<A: Aggregate, I>: Send + Sync + 'static {
    /// The repository of `A`.
    fn repository(&self) -> &Repository<A>;
}

impl<A: Aggregate, T: Send + Sync + 'static> Contains<A, Here> for (Repository<A>, T) {
    fn repository(&self) -> &Repository<A> {
        &self.0
    }
}

impl<A, B, T, I> Contains<A, There<I>> for (Repository<B>, T)
where
    A: Aggregate,
    B: Aggregate,
    T: Contains<A, I>,
{
    fn repository(&self) -> &Repository<A> {
        self.1.repository()
    }
}

/// The query bus's handlers include one for `Q` (at index `I`).
#[diagnostic::on_unimplemented(
    message = "no query handler for `{Q}` is registered on this query bus",
    label = "nothing here handles `{Q}`",
    note = "add a `#[projection]` type with a `#[query_handler]` for `{Q}` to the `QueryBus` builder with `.handler(...)`"
)]
pub trait Route<Q: Query, I>: Send + Sync + 'static {
    /// The handler found.
    type Handler: HandlesQuery<Q>;
    /// Borrows it.
    fn handler(&self) -> &Self::Handler;
}

impl<Q: Query, H: HandlesQuery<Q>, T: Send + Sync + 'static> Route<Q, Here> for (H, T) {
    type Handler = H;
    fn handler(&self) -> &H {
        &self.0
    }
}

impl<Q, H, T, I> Route<Q, There<I>> for (H, T)
where
    Q: Query,
    H: Send + Sync + 'static,
    T: Route<Q, I>,
{
    type Handler = T::Handler;
    fn handler(&self) -> &T::Handler {
        self.1.handler()
    }
}

/// The index of the end of the handler list, where a query lands when no handler answers it.
pub struct Nowhere;

mod sealed {
    pub trait Sealed {}
}

/// Implemented by no type: the end of a query bus's handler list "answers" `Q` only if `Q`
/// implements this, so a query no handler answers fails here with a message naming it.
///
/// The impl exists for the compiler's sake: without a second candidate at the end of the list,
/// a bus with a single handler would let the compiler infer the query type from that handler
/// and report a type mismatch instead of the missing handler.
#[diagnostic::on_unimplemented(
    message = "no query handler for `{Self}` is registered on this query bus",
    label = "nothing on this bus answers `{Self}`",
    note = "add a `#[projection]` type with a `#[query_handler]` for `{Self}` to the `QueryBus` builder with `.handler(...)`"
)]
pub trait NoHandlerRegistered: sealed::Sealed {}

/// Stands for the missing handler in the impossible impl below; never constructed.
pub struct Unanswered<Q>(std::convert::Infallible, PhantomData<Q>);

impl<Q: Query> HandlesQuery<Q> for Unanswered<Q> {
    type Error = std::convert::Infallible;

    async fn handle_query(&self, _query: &Q) -> Result<Q::Output, Self::Error> {
        match self.0 {}
    }
}

impl<Q: Query + NoHandlerRegistered> Route<Q, Nowhere> for () {
    type Handler = Unanswered<Q>;
    fn handler(&self) -> &Unanswered<Q> {
        unreachable!("`NoHandlerRegistered` is sealed and implemented by no type")
    }
}

/// Element `T` sits at index `I` of the list.
pub trait At<T, I>: Send + Sync + 'static {
    /// Borrows the element.
    fn at(&self) -> &T;
}

impl<H: Send + Sync + 'static, T: Send + Sync + 'static> At<H, Here> for (H, T) {
    fn at(&self) -> &H {
        &self.0
    }
}

impl<X, H, T, I> At<X, There<I>> for (H, T)
where
    H: Send + Sync + 'static,
    T: At<X, I>,
{
    fn at(&self) -> &X {
        self.1.at()
    }
}

/// Appends `X` at the end of a list (so middleware added first runs outermost).
pub trait Append<X> {
    /// The longer list.
    type Out;
    /// Appends.
    fn append(self, x: X) -> Self::Out;
}

impl<X> Append<X> for () {
    type Out = (X, ());
    fn append(self, x: X) -> (X, ()) {
        (x, ())
    }
}

impl<X, H, T: Append<X>> Append<X> for (H, T) {
    type Out = (H, T::Out);
    fn append(self, x: X) -> Self::Out {
        (self.0, self.1.append(x))
    }
}

/// Whether a command bus's aggregate list already holds an aggregate with the stream category
/// of `A` (the same aggregate, or another one with the same `name`).
pub trait HoldsAggregate<A: Aggregate> {
    /// `true` when it does.
    const HOLDS: bool;
}

impl<A: Aggregate> HoldsAggregate<A> for () {
    const HOLDS: bool = false;
}

impl<A: Aggregate, B: Aggregate, T: HoldsAggregate<A>> HoldsAggregate<A> for (Repository<B>, T) {
    const HOLDS: bool = crate::__private::contains_str(&[B::NAME], A::NAME) || T::HOLDS;
}

/// The names of the queries a query handler answers: what the query bus checks when the
/// handler is registered, so that two handlers of one query are a compile error there
/// instead of an ambiguity where the query is executed.
///
/// `#[projection]` implements it; [`ReadModel`](crate::ReadModel) forwards to its projection.
/// A hand-written [`HandlesQuery`] impl lists its queries' [`Query::NAME`]s.
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not list the queries it answers",
    label = "cannot be registered on a query bus",
    note = "a `#[projection]` with `#[query_handler]` methods lists them; a hand-written `HandlesQuery` impl adds `impl AnsweredQueries for {Self} {{ const NAMES: &'static [&'static str] = &[<Query as Query>::NAME]; }}`"
)]
pub trait AnsweredQueries {
    /// The [`Query::NAME`] of every query the handler answers.
    const NAMES: &'static [&'static str];
}

/// The first query name `H` answers that a handler of a query bus's list already answers.
pub trait SharedQuery<H: AnsweredQueries> {
    /// That name, or `None` when `H` answers only new queries.
    const SHARED: Option<&'static str>;
}

impl<H: AnsweredQueries> SharedQuery<H> for () {
    const SHARED: Option<&'static str> = None;
}

impl<H: AnsweredQueries, G: AnsweredQueries, T: SharedQuery<H>> SharedQuery<H> for (G, T) {
    const SHARED: Option<&'static str> = match first_shared(H::NAMES, G::NAMES) {
        Some(name) => Some(name),
        None => T::SHARED,
    };
}

const fn first_shared(a: &[&'static str], b: &[&str]) -> Option<&'static str> {
    let mut i = 0;
    while i < a.len() {
        if crate::__private::contains_str(b, a[i]) {
            return Some(a[i]);
        }
        i += 1;
    }
    None
}

/// Compile-time checks of the buses' registrations. Their constants are evaluated when the
/// registering call is compiled to code (`cargo build`, `cargo test`; not `cargo check`), and
/// fail with a message naming what is registered twice.
pub struct Registration<X, R>(PhantomData<(X, R)>);

impl<A: Aggregate, R: HoldsAggregate<A>> Registration<A, R> {
    /// Fails when `R` already holds an aggregate with `A`'s stream category.
    pub const AGGREGATE_ONCE: () = assert!(
        !R::HOLDS,
        "{}",
        Message::new(&[
            "aggregate `",
            A::NAME,
            "` is registered twice on this command bus: register each aggregate once (two aggregates also cannot share a stream category `name`)",
        ])
        .as_str()
    );
}

impl<H: AnsweredQueries, R: SharedQuery<H>> Registration<H, R> {
    /// Fails when a handler in `R` already answers a query `H` answers.
    pub const QUERIES_ONCE: () = if let Some(name) = R::SHARED {
        panic!(
            "{}",
            Message::new(&[
                "query `",
                name,
                "` is answered by two handlers registered on this query bus: register one handler per query",
            ])
            .as_str()
        );
    };
}

/// A message assembled at compile time (constants cannot format).
struct Message {
    bytes: [u8; 512],
    len: usize,
}

impl Message {
    const fn new(parts: &[&str]) -> Self {
        let mut message = Message {
            bytes: [0; 512],
            len: 0,
        };
        let mut i = 0;
        while i < parts.len() {
            let part = parts[i].as_bytes();
            let mut j = 0;
            while j < part.len() && message.len < message.bytes.len() {
                message.bytes[message.len] = part[j];
                message.len += 1;
                j += 1;
            }
            i += 1;
        }
        message
    }

    const fn as_str(&self) -> &str {
        match std::str::from_utf8(self.bytes.split_at(self.len).0) {
            Ok(text) => text,
            // Only when a name was cut inside a multi-byte character.
            Err(_) => "a registration is repeated on this bus",
        }
    }
}

/// The lists a bus type is built from, so that a dispatcher's type can be named after its
/// bus's: [`CommandDispatcherOf`](crate::CommandDispatcherOf),
/// [`QueryDispatcherOf`](crate::QueryDispatcherOf).
pub trait BusParts {
    /// The registered aggregates (command bus) or handlers (query bus).
    type Registered;
    /// The middleware, outermost first.
    type Middleware;
}

impl<R, M> BusParts for crate::CommandBus<R, M> {
    type Registered = R;
    type Middleware = M;
}

impl<R, M> BusParts for crate::QueryBus<R, M> {
    type Registered = R;
    type Middleware = M;
}

/// The type of a command bus, from its aggregates and middleware in the order the builder
/// registered them: `CommandBusOf![Account, Customer; Tracing, Validation]` is the type of
///
/// ```text
/// CommandBus::builder(store)
///     .aggregate::<Account>(..)
///     .aggregate::<Customer>(..)
///     .middleware(Tracing)
///     .middleware(Validation)
///     .build()
/// ```
///
/// that is `CommandBus<(Repository<Customer>, (Repository<Account>, ())), (Tracing,
/// (Validation, ()))>`. Without middleware, leave out the `;` part. Name the JSON dispatcher
/// of the same bus with [`CommandDispatcherOf`](crate::CommandDispatcherOf).
///
/// ```
/// # use cqrs_core::prelude::*;
/// # use cqrs_core::middleware::{Tracing, Validation};
/// # #[derive(Debug, Clone, Serialize, Deserialize)]
/// # pub struct Opened;
/// # #[derive(Debug, Clone, Event)]
/// # pub enum AccountEvent { Opened(Opened) }
/// # #[derive(Debug, Default)]
/// # pub struct Account;
/// # #[aggregate(event = AccountEvent, error = std::convert::Infallible)]
/// # impl Account {
/// #     #[event_handler]
/// #     fn on_opened(&mut self, _: &Opened) {}
/// # }
/// # #[derive(Debug, Clone, Serialize, Deserialize)]
/// # pub struct Registered;
/// # #[derive(Debug, Clone, Event)]
/// # pub enum CustomerEvent { Registered(Registered) }
/// # #[derive(Debug, Default)]
/// # pub struct Customer;
/// # #[aggregate(event = CustomerEvent, error = std::convert::Infallible)]
/// # impl Customer {
/// #     #[event_handler]
/// #     fn on_registered(&mut self, _: &Registered) {}
/// # }
/// use cqrs_core::{CommandBusOf, CommandDispatcher, CommandDispatcherOf};
///
/// pub type Commands = CommandBusOf![Account, Customer; Tracing, Validation];
/// pub type CommandJson = CommandDispatcherOf<Commands>;
///
/// let commands: Commands = CommandBus::builder(InMemoryEventStore::new())
///     .aggregate::<Account>(())
///     .aggregate::<Customer>(())
///     .middleware(Tracing)
///     .middleware(Validation)
///     .build();
/// let json: CommandJson = CommandDispatcher::new(commands.clone()).unwrap();
/// ```
#[macro_export]
macro_rules! CommandBusOf {
    ($($aggregate:ty),* $(,)? $(; $($middleware:ty),* $(,)?)?) => {
        $crate::CommandBus<
            $crate::__cqrs_repositories!([$($aggregate),*] ()),
            $crate::__cqrs_in_order!($($($middleware),*)?)
        >
    };
}

/// The type of a query bus, from its handlers and middleware in the order the builder
/// registered them: `QueryBusOf![ReadModel<Balances>, ReadModel<Owners>; Tracing]` is the type
/// of `QueryBus::builder().handler(balances).handler(owners).middleware(Tracing).build()`.
/// Name the JSON dispatcher of the same bus with
/// [`QueryDispatcherOf`](crate::QueryDispatcherOf).
///
/// ```
/// # use cqrs_core::prelude::*;
/// # use cqrs_core::middleware::Tracing;
/// # #[derive(Debug, Deserialize, Query)]
/// # #[query(output = u64)]
/// # pub struct GetTotal;
/// # #[derive(Default)]
/// # pub struct Totals;
/// # #[projection]
/// # impl Totals {
/// #     #[query_handler]
/// #     fn total(&self, _: &GetTotal) -> Result<u64, std::convert::Infallible> { Ok(0) }
/// # }
/// use cqrs_core::{QueryBusOf, QueryDispatcher, QueryDispatcherOf};
///
/// pub type Queries = QueryBusOf![ReadModel<Totals>; Tracing];
///
/// let queries: Queries = QueryBus::builder()
///     .handler(ReadModel::new(Totals))
///     .middleware(Tracing)
///     .build();
/// let json: QueryDispatcherOf<Queries> = QueryDispatcher::new(queries.clone()).unwrap();
/// ```
#[macro_export]
macro_rules! QueryBusOf {
    ($($handler:ty),* $(,)? $(; $($middleware:ty),* $(,)?)?) => {
        $crate::QueryBus<
            $crate::__cqrs_prepended!([$($handler),*] ()),
            $crate::__cqrs_in_order!($($($middleware),*)?)
        >
    };
}

/// `Repository<A>` for each aggregate, each prepended as `CommandBusBuilder::aggregate` does.
#[doc(hidden)]
#[macro_export]
macro_rules! __cqrs_repositories {
    ([] $list:ty) => { $list };
    ([$head:ty $(, $rest:ty)*] $list:ty) => {
        $crate::__cqrs_repositories!([$($rest),*] ($crate::Repository<$head>, $list))
    };
}

/// Each type prepended, as `QueryBusBuilder::handler` does.
#[doc(hidden)]
#[macro_export]
macro_rules! __cqrs_prepended {
    ([] $list:ty) => { $list };
    ([$head:ty $(, $rest:ty)*] $list:ty) => {
        $crate::__cqrs_prepended!([$($rest),*] ($head, $list))
    };
}

/// The types in order, as the builders' `middleware` appends them.
#[doc(hidden)]
#[macro_export]
macro_rules! __cqrs_in_order {
    () => { () };
    ($head:ty $(, $rest:ty)*) => { ($head, $crate::__cqrs_in_order!($($rest),*)) };
}
