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
