//! Parallel and foreach steps waiting for their children: reaping results, settling the
//! join, and starting the next foreach items under the concurrency bound.

use super::{Frame, FrameState, Instance, Join_};
use crate::compile::{CompiledWorkflow, Kind};
use crate::definition::Join;
use crate::journal::{ChildFrame, Millis, Record};
use serde_json::{json, Map, Value};

impl Instance {
    pub(super) fn check_join(
        &self,
        wf: &CompiledWorkflow,
        id: u32,
        frame: &Frame,
        j: &Join_,
        now: Millis,
    ) -> Option<Record> {
        let step = &wf.steps[frame.at];
        // Reap finished children first: a failed child fails the whole step.
        let mut results = j.results.clone();
        for (&slot, child) in &j.children {
            match self.frames.get(child).map(|f| &f.state) {
                Some(FrameState::Errored(e)) => {
                    return Some(self.route_failure(wf, id, frame, frame.at, e.clone(), now))
                }
                Some(FrameState::Done(v)) => {
                    results.insert(slot, v.clone());
                }
                _ => {}
            }
        }
        let finished = results.len();
        let settled = match j.join {
            Join::First => finished >= 1,
            Join::All => finished == j.total,
        };
        let next = step.next.first().map(|&n| wf.steps[n].id.clone());
        if settled {
            let output = if j.foreach {
                Value::Array(results.into_values().collect())
            } else {
                let map: Map<String, Value> = results
                    .into_iter()
                    .map(|(slot, v)| (j.slot_names[slot].clone(), v))
                    .collect();
                Value::Object(map)
            };
            let reason = match j.join {
                Join::First => Some("first branch finished; the others were cancelled".to_string()),
                Join::All => None,
            };
            return Some(Record::StepCompleted {
                frame: id,
                step: step.id.clone(),
                vars: None,
                output: Some(output),
                next,
                reason,
                at: now,
            });
        }
        // Foreach: start the next items while under the concurrency bound.
        let running = j
            .children
            .keys()
            .filter(|s| !results.contains_key(s))
            .count();
        if j.foreach && j.next_item < j.total && running < j.concurrency {
            let Kind::Foreach {
                item_name, body, ..
            } = &step.kind
            else {
                return None;
            };
            let free = (j.concurrency - running).min(j.total - j.next_item);
            let children = (0..free)
                .map(|k| {
                    let slot = j.next_item + k;
                    ChildFrame {
                        frame: self.next_frame + k as u32,
                        slot,
                        step: wf.steps[*body].id.clone(),
                        locals: item_locals(item_name, slot, &j.items[slot]),
                    }
                })
                .collect();
            return Some(Record::ChildrenStarted {
                frame: id,
                step: step.id.clone(),
                children,
                items: None,
                at: now,
            });
        }
        None
    }
}

pub(super) fn item_locals(name: &str, index: usize, item: &Value) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(name.to_string(), item.clone());
    m.insert("index".into(), json!(index));
    m
}
