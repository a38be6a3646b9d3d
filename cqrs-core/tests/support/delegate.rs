//! `delegate!`: the `EventStore` methods a test store leaves to the store it wraps.

/// Expands, inside `impl EventStore for X`, the listed methods as calls of the same method
/// on `self.<field>`: `delegate!(inner: load_stream, stream_version);`.
macro_rules! delegate {
    ($field:tt: $($method:ident),+ $(,)?) => {
        $( $crate::support::delegate::delegate!(@one $field $method); )+
    };
    (@one $f:tt idempotency_record) => {
        fn idempotency_record<'a>(
            &'a self,
            command_name: &'a str,
            key: &'a str,
        ) -> ::cqrs_core::BoxFuture<
            'a,
            Result<Option<::cqrs_core::IdempotencyRecord>, ::cqrs_core::StoreError>,
        > {
            self.$f.idempotency_record(command_name, key)
        }
    };
    (@one $f:tt load_stream) => {
        fn load_stream<'a>(
            &'a self,
            stream_id: &'a str,
            from_version: u64,
        ) -> ::cqrs_core::BoxFuture<
            'a,
            Result<Vec<::cqrs_core::RecordedEvent>, ::cqrs_core::StoreError>,
        > {
            self.$f.load_stream(stream_id, from_version)
        }
    };
    (@one $f:tt stream_version) => {
        fn stream_version<'a>(
            &'a self,
            stream_id: &'a str,
        ) -> ::cqrs_core::BoxFuture<'a, Result<u64, ::cqrs_core::StoreError>> {
            self.$f.stream_version(stream_id)
        }
    };
    (@one $f:tt read_all_from) => {
        fn read_all_from(
            &self,
            after: ::cqrs_core::GlobalPosition,
            limit: usize,
        ) -> ::cqrs_core::BoxFuture<
            '_,
            Result<Vec<::cqrs_core::RecordedEvent>, ::cqrs_core::StoreError>,
        > {
            self.$f.read_all_from(after, limit)
        }
    };
    (@one $f:tt load_snapshot) => {
        fn load_snapshot<'a>(
            &'a self,
            stream_id: &'a str,
        ) -> ::cqrs_core::BoxFuture<
            'a,
            Result<Option<::cqrs_core::Snapshot>, ::cqrs_core::StoreError>,
        > {
            self.$f.load_snapshot(stream_id)
        }
    };
    (@one $f:tt save_snapshot) => {
        fn save_snapshot(
            &self,
            snapshot: ::cqrs_core::Snapshot,
        ) -> ::cqrs_core::BoxFuture<'_, Result<(), ::cqrs_core::StoreError>> {
            self.$f.save_snapshot(snapshot)
        }
    };
    (@one $f:tt delete_snapshot) => {
        fn delete_snapshot<'a>(
            &'a self,
            stream_id: &'a str,
        ) -> ::cqrs_core::BoxFuture<'a, Result<(), ::cqrs_core::StoreError>> {
            self.$f.delete_snapshot(stream_id)
        }
    };
}

pub(crate) use delegate;
