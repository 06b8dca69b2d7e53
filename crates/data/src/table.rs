//! The canonical interaction table: what every reader produces.
//!
//! Readers map source columns to *roles* and emit arrow `RecordBatch`es whose
//! columns carry the role names below, with these arrow types:
//!
//! | column      | arrow type            | meaning |
//! |-------------|-----------------------|---------|
//! | `seq`       | `Int64` or `Utf8`     | user or session key (raw) |
//! | `item`      | `Int64` or `Utf8`     | item / question / lecture key (raw) |
//! | `time`      | `Int64`               | milliseconds (epoch, or since the learner's first event) |
//! | `rating`    | `Float32`             | explicit rating |
//! | `label`     | `Int8`                | answered correctly (1/0), -1 where there is none (lectures) |
//! | `kind`      | `UInt8`               | [`KIND_ITEM`] or [`KIND_LECTURE`] |
//! | `group`     | `Int64`               | bundle / task container (answers visible after the group) |
//! | `elapsed`   | `Float32`, nullable   | prior question elapsed time, ms |
//! | `explained` | `Boolean`, nullable   | prior question had explanation |
//!
//! Only `seq`, `item` and `time` are required; the others appear when the
//! recipe maps them. Side tables (users, items, questions, lectures) keep
//! their own column names, with the key column named `key`.

use arrow_array::RecordBatch;

use crate::Result;

/// Column names of the canonical interaction table.
pub mod col {
    /// User or session key.
    pub const SEQ: &str = "seq";
    /// Item key.
    pub const ITEM: &str = "item";
    /// Event time in milliseconds.
    pub const TIME: &str = "time";
    /// Explicit rating.
    pub const RATING: &str = "rating";
    /// Answer correctness (1/0, -1 = none).
    pub const LABEL: &str = "label";
    /// Event kind.
    pub const KIND: &str = "kind";
    /// Bundle / task container id.
    pub const GROUP: &str = "group";
    /// Prior question elapsed time (ms).
    pub const ELAPSED: &str = "elapsed";
    /// Prior question had explanation.
    pub const EXPLAINED: &str = "explained";
    /// Key column of a side table.
    pub const KEY: &str = "key";
}

/// `kind` of an ordinary item or question event.
pub const KIND_ITEM: u8 = 0;
/// `kind` of a lecture event (no label; it updates state but is never a target).
pub const KIND_LECTURE: u8 = 1;

/// A stream of canonical `RecordBatch`es.
pub type Batches = Box<dyn Iterator<Item = Result<RecordBatch>> + Send>;
