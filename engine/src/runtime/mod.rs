//! The instance state machine: records in, records and effects out. No clock, no I/O.
//!
//! [`Instance::apply`] folds one journal record into the state; [`Instance::step`] (with
//! [`Instance::create`] for a new instance) is the driver's one entry point: it takes an
//! [`Input`] and the time, and returns a [`Step`] with the records that say what was
//! decided (already applied), the index changes and the effects to carry out. Replaying a
//! journal through `apply` rebuilds the exact same state, because every decision (which
//! case matched, when a retry is due) is in a record.

mod instance;
mod step;

// Old path, kept for store modules; use crate::journal.
#[doc(hidden)]
pub mod record {
    pub use crate::journal::v1::*;
}

pub use crate::journal::{Event, Millis, ParentRef, Record, StepError};
pub use instance::{
    Effect, Hold, HoldRefused, Instance, MigrateRefused, Move, RerunLink, RetryRefused, Status,
    StepTiming, Waiting, MAX_FRAMES, MAX_TRANSITIONS,
};
pub use step::{key_text, IndexDelta, Input, Reply, Step, Timer, Wait, INDEX_STATUSES};
