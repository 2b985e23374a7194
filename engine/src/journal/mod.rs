//! The journal format: the records an instance's state is rebuilt from.
//!
//! Records are persisted, so their shape is a compatibility promise to every journal
//! already on disk or in a database. [`v1`] is the format written today. A breaking
//! change does not edit it: a future `v2` module is added beside it, with a reader that
//! upgrades v1 records as they are loaded, and the stored version number (`Stored::v`)
//! says which one a record is. Never edit a released version's shape; within a version,
//! only add fields with `#[serde(default)]`.

pub mod v1;

pub use v1::{ChildFrame, Event, Millis, ParentRef, Record, StepError, Stored, VERSION};
