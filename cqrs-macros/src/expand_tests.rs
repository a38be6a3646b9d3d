//! Expansion snapshots: what each macro feature generates, pinned in `src/snapshots/`.
//!
//! Review changes with `cargo insta review`, or regenerate with
//! `INSTA_UPDATE=always cargo test -p cqrs-macros` and read the diff.

use proc_macro2::TokenStream;
use quote::quote;

fn pretty(tokens: &TokenStream) -> String {
    let file = syn::parse2::<syn::File>(tokens.clone())
        .unwrap_or_else(|error| panic!("expansion is not valid Rust: {error}\n{tokens}"));
    prettyplease::unparse(&file)
}

fn derive(f: fn(&syn::DeriveInput) -> TokenStream, input: TokenStream) -> String {
    pretty(&f(&syn::parse2(input).unwrap()))
}

fn attribute(
    f: fn(TokenStream, &TokenStream) -> TokenStream,
    args: TokenStream,
    item: &TokenStream,
) -> String {
    pretty(&f(args, item))
}

#[test]
fn command() {
    insta::assert_snapshot!(derive(
        crate::command::derive,
        quote! {
            #[command(aggregate = Account, id = account_id)]
            pub struct Deposit {
                pub account_id: Uuid,
                pub amount: u64,
            }
        }
    ));
}

#[test]
fn command_with_name_validate_and_crate() {
    insta::assert_snapshot!(derive(
        crate::command::derive,
        quote! {
            #[command(aggregate = crate::Account, id = number, name = "account.close")]
            #[command(validate, crate = "my::cqrs")]
            pub struct Close<T: Send + Sync + 'static> {
                pub number: u64,
                pub reason: T,
            }
        }
    ));
}

#[test]
fn command_with_idempotency_key() {
    insta::assert_snapshot!(derive(
        crate::command::derive,
        quote! {
            #[command(aggregate = Account, id = account_id, idempotency_key = request_id)]
            pub struct Deposit {
                pub account_id: Uuid,
                pub request_id: Uuid,
                pub amount: u64,
            }
        }
    ));
}

#[test]
fn command_idempotent_with_keys_from_metadata() {
    insta::assert_snapshot!(derive(
        crate::command::derive,
        quote! {
            #[command(aggregate = Account, id = account_id, idempotent)]
            pub struct Withdraw {
                pub account_id: Uuid,
                pub amount: u64,
            }
        }
    ));
}

#[test]
fn command_with_mistake_emits_errors_and_a_stand_in() {
    insta::assert_snapshot!(derive(
        crate::command::derive,
        quote! {
            #[command(aggregate = Account, id = acount_id)]
            pub struct Deposit {
                pub account_id: Uuid,
            }
        }
    ));
}

#[test]
fn query() {
    insta::assert_snapshot!(derive(
        crate::query::derive,
        quote! {
            #[query(output = Vec<AccountView>, name = "accounts.list", validate)]
            pub struct ListAccounts {
                pub limit: usize,
            }
        }
    ));
}

#[test]
fn event_with_names_versions_and_a_unit_variant() {
    insta::assert_snapshot!(derive(
        crate::event::derive,
        quote! {
            pub enum AccountEvent {
                #[event(name = "account.opened")]
                Opened(Opened),
                #[event(name = "account.deposited", version = 2)]
                Deposited(Deposited),
                Closed,
            }
        }
    ));
}

#[test]
fn event_with_upcasters_aliases_and_a_split() {
    insta::assert_snapshot!(derive(
        crate::event::derive,
        quote! {
            pub enum AccountEvent {
                #[event(name = "account.opened", version = 4, alias = "account.created",
                        upcast(from = 1, with = OpenedV1), upcast(from = 2, raw = opened_v2),
                        upcast(from = 3, with = OpenedV3))]
                Opened(Opened),
                #[event(name = "account.deposited", version = 2, upcast(from = 1, many = split_deposit))]
                Deposited(Deposited),
                #[event(name = "account.closed")]
                Closed,
            }
        }
    ));
}

#[test]
fn event_with_one_variant() {
    insta::assert_snapshot!(derive(
        crate::event::derive,
        quote! {
            #[event(crate = "my::cqrs")]
            pub enum CounterEvent {
                Incremented(Incremented),
            }
        }
    ));
}

#[test]
fn aggregate_with_services_context_async_by_value_snapshot_and_ignore() {
    insta::assert_snapshot!(attribute(
        crate::aggregate::expand,
        quote!(
            event = AccountEvent,
            error = AccountError,
            services = Bank,
            name = "account",
            snapshot = 3,
            ignore(NoteAdded)
        ),
        &quote! {
            impl Account {
                #[command_handler]
                fn deposit(&self, command: &Deposit, bank: &Bank) -> Result<Deposited, AccountError> {
                    Ok(Deposited { amount: command.amount.min(bank.limit) })
                }

                #[command_handler]
                async fn open(&self, command: Open, ctx: &CommandContext) -> Result<Vec<AccountEvent>, AccountError> {
                    Ok(vec![])
                }

                #[event_handler]
                fn on_deposited(&mut self, event: &Deposited) {
                    self.balance += event.amount;
                }

                #[event_handler(Closed)]
                fn on_closed(&mut self) {
                    self.closed = true;
                }

                fn helper(&self) -> u64 {
                    self.balance
                }
            }
        }
    ));
}

#[test]
fn aggregate_without_commands_or_services() {
    insta::assert_snapshot!(attribute(
        crate::aggregate::expand,
        quote!(event = CounterEvent, error = Infallible),
        &quote! {
            impl Counter {
                #[event_handler]
                fn on_incremented(&mut self, _: &Incremented) {
                    self.value += 1;
                }
            }
        }
    ));
}

#[test]
fn aggregate_with_unique_keys() {
    insta::assert_snapshot!(attribute(
        crate::aggregate::expand,
        quote!(event = UserEvent, error = Infallible, unique_keys),
        &quote! {
            impl User {
                #[event_handler]
                fn on_registered(&mut self, event: &Registered) {
                    self.email = event.email.clone();
                }
            }
        }
    ));
}

#[test]
fn aggregate_with_mistake_reemits_the_block_without_markers() {
    insta::assert_snapshot!(attribute(
        crate::aggregate::expand,
        quote!(event = AccountEvent, error = AccountError),
        &quote! {
            impl Account {
                #[command_handler]
                fn deposit(&mut self, command: &Deposit) -> Result<Deposited, AccountError> {
                    Ok(Deposited { amount: command.amount })
                }

                #[event_handler]
                fn on_deposited(&mut self, event: &Deposited) {
                    self.balance += event.amount;
                }
            }
        }
    ));
}

#[test]
fn projection_with_metadata_context_fallible_and_query_handlers() {
    insta::assert_snapshot!(attribute(
        crate::projection::expand,
        quote!(name = "balances.v1", context = Transaction),
        &quote! {
            impl Balances {
                #[event_handler]
                fn on_deposited(&mut self, event: &Deposited, meta: &RecordedEvent, tx: &mut Transaction) {
                    tx.add(&meta.stream_id, event.amount);
                }

                #[event_handler]
                async fn on_withdrawn(&self, event: &Withdrawn, tx: &mut Transaction) -> Result<(), Overdrawn> {
                    tx.sub(event.amount).await
                }

                #[query_handler]
                fn balance(&self, query: &GetBalance) -> Result<u64, NotFound> {
                    Err(NotFound)
                }

                #[query_handler]
                async fn owners(&self, query: &ListOwners) -> Result<Vec<String>, NotFound> {
                    Ok(vec![])
                }
            }
        }
    ));
}

#[test]
fn projection_with_query_handlers_only() {
    insta::assert_snapshot!(attribute(
        crate::projection::expand,
        TokenStream::new(),
        &quote! {
            impl<S: Store> Lookup<S> where S: Clone {
                #[query_handler]
                fn find(&self, query: &Find) -> Result<Option<Row>, S::Error> {
                    self.store.find(query)
                }
            }
        }
    ));
}

#[test]
fn saga_with_keys_start_end_failures_deadlines_and_context() {
    insta::assert_snapshot!(attribute(
        crate::saga::expand,
        quote!(commands(Reserve, Charge), name = "checkout"),
        &quote! {
            impl Checkout {
                #[event_handler(key = order_id, start)]
                fn on_placed(&mut self, placed: &Placed) -> Reserve {
                    Reserve { order_id: placed.order_id }
                }

                #[event_handler(key = order.id)]
                async fn on_reserved(
                    &mut self,
                    _: &Reserved,
                    event: &RecordedEvent,
                    ctx: &mut SagaContext<Self>,
                ) -> Result<Option<Charge>, Refused> {
                    Ok(None)
                }

                #[event_handler(key = order_id, end)]
                fn on_charged(&mut self, _: &Charged) {}

                #[failure_handler]
                fn on_charge_failed(&mut self, failed: &CommandFailed<Charge>) -> (Release, Cancel) {
                    todo!()
                }

                #[deadline_handler]
                fn on_timeout(&mut self, _: &PaymentTimedOut, ctx: &mut SagaContext<Self>) {
                    ctx.end();
                }
            }
        }
    ));
}
