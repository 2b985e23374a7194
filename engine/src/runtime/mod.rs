//! The instance state machine: records in, records and effects out. No clock, no I/O.
//!
//! [`Instance::apply`] folds one journal record into the state; the `on_*` methods and
//! [`Instance::advance`] decide what happens next and return the records that say so
//! (already applied). Replaying a journal through `apply` rebuilds the exact same state,
//! because every decision (which case matched, when a retry is due) is in a record.

mod instance;
pub mod record;

pub use instance::{
    Effect, FrameState, Instance, RetryRefused, Status, StepTiming, MAX_FRAMES, MAX_TRANSITIONS,
};
pub use record::{Event, Millis, ParentRef, Record, StepError};
