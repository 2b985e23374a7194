//! Moving an instance to another version of its workflow (`migrate:`): whether it may
//! move now, and where to. The move itself is a `Migrated` record (see `Instance::migrate`).

use super::{FrameState, Instance, Status};
use crate::compile::{CompiledWorkflow, Kind};
use serde_json::{Map, Value};

/// Where an instance moves: its one frame, parked at `from_step`, goes on from `to_step`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Move {
    #[serde(skip)]
    pub frame: u32,
    pub from_version: u32,
    pub from_step: String,
    pub to_version: u32,
    pub to_step: String,
}

/// Why an instance does not move: a stable `code` and a message that says what to do.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, thiserror::Error)]
#[error("{message}")]
pub struct MigrateRefused {
    pub code: &'static str,
    pub message: String,
}

fn refused(code: &'static str, message: impl Into<String>) -> MigrateRefused {
    MigrateRefused {
        code,
        message: message.into(),
    }
}

impl Instance {
    /// Whether the instance, running `from`, may move to `to` now, and where. A safe point
    /// is one thread of execution parked at a wait that `to`'s rule for this version lists:
    /// nothing is in flight, so the move loses and repeats nothing.
    pub fn migration(
        &self,
        from: &CompiledWorkflow,
        to: &CompiledWorkflow,
    ) -> Result<Move, MigrateRefused> {
        if self.workflow != to.name {
            return Err(refused(
                "other_workflow",
                format!("the instance runs `{}`, not `{}`", self.workflow, to.name),
            ));
        }
        if self.status.is_final() {
            return Err(refused(
                "ended",
                format!("the instance has ended ({})", self.status.as_str()),
            ));
        }
        if self.hash == to.hash {
            return Err(refused(
                "already_there",
                format!("the instance runs version {} already", to.version),
            ));
        }
        let Some(rule) = to.migration_from(self.version) else {
            return Err(refused(
                "no_rule",
                format!(
                    "version {} has no `migrate:` rule for version {}; it stays pinned to the version it runs",
                    to.version, self.version
                ),
            ));
        };
        if self.status == Status::Compensating || self.cancel_reason.is_some() {
            return Err(refused(
                "compensating",
                "the instance is being cancelled or is undoing completed steps",
            ));
        }
        if self.hold().is_some() {
            return Err(refused(
                "paused",
                "the instance is paused; resume it first, or move it once it waits again",
            ));
        }
        let listed = rule
            .at
            .iter()
            .map(|(s, _)| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut frames = self
            .frames
            .iter()
            .filter(|(_, f)| !matches!(f.state, FrameState::Done(_) | FrameState::Errored(_)));
        let (Some((&frame, f)), None) = (frames.next(), frames.next()) else {
            return Err(refused(
                "not_at_safe_point",
                format!("the instance runs more than one branch at once; it can move only while its one path waits at {listed}"),
            ));
        };
        let step = from.steps.get(f.at).map(|s| s.id.as_str()).unwrap_or("?");
        let waiting = matches!(f.state, FrameState::Waiting { .. })
            && matches!(
                from.steps.get(f.at).map(|s| &s.kind),
                Some(Kind::Wait { .. })
            );
        if f.parent.is_some()
            || f.compensation
            || !waiting
            || !rule.at.iter().any(|(s, _)| s == step)
        {
            return Err(refused(
                "not_at_safe_point",
                format!(
                    "the instance is at step `{step}`; it can move only while it waits at {listed}"
                ),
            ));
        }
        // What it would undo after the move must exist in the new version.
        for (done, undo) in &self.compensable {
            if !to.index.contains_key(undo) {
                return Err(refused(
                    "compensation_missing",
                    format!(
                        "completed step `{done}` is undone by `{undo}`, which version {} does not have",
                        to.version
                    ),
                ));
            }
        }
        Ok(Move {
            frame,
            from_version: self.version,
            from_step: step.to_string(),
            to_version: to.version,
            to_step: to
                .steps
                .get(rule.to)
                .map(|s| s.id.clone())
                .unwrap_or_default(),
        })
    }

    /// The variables after `to`'s rule for this version sets its `set:` values, worked out
    /// over `input` and the variables before the move; `None` when it sets none.
    pub(in crate::runtime) fn migrated_vars(
        &self,
        to: &CompiledWorkflow,
        now: crate::journal::Millis,
    ) -> Result<Option<Map<String, Value>>, MigrateRefused> {
        let Some(rule) = to.migration_from(self.version) else {
            return Ok(None);
        };
        if rule.set.is_empty() {
            return Ok(None);
        }
        let locals = Map::new();
        let b = crate::compile::rules::Bindings {
            input: &self.input,
            vars: &self.vars,
            locals: &locals,
            now_ms: now,
            instance: None,
        };
        let mut vars = self.vars.clone();
        for (name, ast) in &rule.set {
            let (value, _) = to.rules.eval(ast, &b).map_err(|e| {
                refused(
                    "set_failed",
                    format!("`set.{name}` of the `migrate:` rule failed: {e}"),
                )
            })?;
            vars.insert(name.clone(), value);
        }
        Ok(Some(vars))
    }
}
