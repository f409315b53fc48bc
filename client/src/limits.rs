//! Hard limits of the client, with the reason for each value. Configurable defaults live in
//! `config.rs`; these bound what any configuration can make the client do.

/// Largest response frame accepted from a broker: the broker's own frame limit (a 64 MiB batch
/// plus 1 MiB of control), so nothing the broker may legitimately send is refused and nothing
/// larger is ever allocated.
pub const RESPONSE_FRAME_BYTES_MAX: usize = (64 << 20) + (1 << 20);

/// Largest request frame the client builds; the same bound as the broker's.
pub const REQUEST_FRAME_BYTES_MAX: usize = RESPONSE_FRAME_BYTES_MAX;

/// Socket write buffer per connection: small requests coalesce into one write; large batches go
/// straight through.
pub const WRITE_BUFFER_BYTES: usize = 256 << 10;

/// Requests the broker accepts in flight on one connection (`IN_FLIGHT_REQUESTS_MAX` there).
pub const IN_FLIGHT_PER_CONNECTION_MAX: usize = 32;

/// Batches one idempotent producer may have in flight per partition: the broker remembers the
/// last 16 batches of each producer per partition (`PRODUCER_BATCHES_REMEMBERED` there), so a
/// retry of any of them is recognised as a duplicate.
pub const IN_FLIGHT_BATCHES_PER_PARTITION_MAX: usize = 16;

/// Bootstrap and known-broker addresses tried before giving up on a metadata refresh.
pub const METADATA_ADDRESSES_TRIED_MAX: usize = 16;
