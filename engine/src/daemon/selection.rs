//! Which instances a list or a bulk action is about: a workflow, a status, a range of
//! start times and `search:` attributes, read a bounded page at a time.
//!
//! With a search attribute the page comes from the search index (the instances with that
//! value, in id order), so finding a ticket's instance among millions reads a handful of
//! entries; without one it walks the instance index. Either way a page reads at most
//! [`MAX_SCAN`] entries and says where to go on from, so a filter that matches little of a
//! large store answers a short page quickly instead of reading everything.

use crate::runtime::{Millis, INDEX_STATUSES};
use crate::store::{InstanceMeta, Store};
use std::collections::BTreeMap;

/// Index entries read per store call.
pub const PAGE: usize = 1000;
/// Index entries one page reads at most.
pub const MAX_SCAN: usize = 20 * PAGE;

/// What instances are asked for. Attribute values are kept as the store's ids of them
/// ([`Store::search_id`]): the value itself is not needed past parsing.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub workflow: Option<String>,
    pub status: Option<String>,
    /// Started at or after, and before (epoch milliseconds).
    pub started_after: Option<Millis>,
    pub started_before: Option<Millis>,
    /// (attribute, value id), at least one only with a workflow.
    pub search: Vec<(String, String)>,
}

/// A page of a [`Selection`]: the matches, and the id to go on after (`None`: the end).
#[derive(Debug)]
pub struct Page {
    pub found: Vec<InstanceMeta>,
    pub next: Option<String>,
}

/// Why a selection cannot be made: said to the caller as it is.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused(pub String);

impl Selection {
    /// A selection from what a caller wrote: `known` gives the search attributes a
    /// workflow declares (in any of its loaded versions), `search` the attribute filters
    /// as name → value.
    pub fn new(
        store: &dyn Store,
        known: impl Fn(&str) -> Vec<String>,
        workflow: Option<String>,
        status: Option<String>,
        started: (Option<&str>, Option<&str>),
        search: &BTreeMap<String, String>,
    ) -> Result<Selection, Refused> {
        if let Some(s) = status.as_deref().filter(|s| !INDEX_STATUSES.contains(s)) {
            return Err(Refused(format!(
                "status `{s}` is not one an instance can have; use one of: {}",
                INDEX_STATUSES.join(", ")
            )));
        }
        let started_after = started.0.map(|t| instant(t, "started_after")).transpose()?;
        let started_before = started
            .1
            .map(|t| instant(t, "started_before"))
            .transpose()?;
        if let (Some(a), Some(b)) = (started_after, started_before) {
            if a >= b {
                return Err(Refused(
                    "`started_after` must be before `started_before`".into(),
                ));
            }
        }
        let mut ids = Vec::new();
        if !search.is_empty() {
            let Some(w) = workflow.as_deref() else {
                let names: Vec<&str> = search.keys().map(String::as_str).collect();
                return Err(Refused(format!(
                    "`{}` is not a filter of the instance list; a search attribute needs `workflow=` to say whose it is",
                    names.join("`, `")
                )));
            };
            let declared = known(w);
            for (name, value) in search {
                if !declared.contains(name) {
                    let has = match declared.is_empty() {
                        true => format!("workflow `{w}` declares no search attributes"),
                        false => format!("its attributes are: {}", declared.join(", ")),
                    };
                    return Err(Refused(format!(
                        "`{name}` is not a search attribute of workflow `{w}`; {has} (and the filters workflow, status, started_after, started_before, limit, cursor)"
                    )));
                }
                ids.push((name.clone(), store.search_id(name, value)));
            }
        }
        Ok(Selection {
            workflow,
            status,
            started_after,
            started_before,
            search: ids,
        })
    }

    pub fn matches(&self, m: &InstanceMeta) -> bool {
        self.workflow.as_ref().is_none_or(|w| &m.workflow == w)
            && self.status.as_ref().is_none_or(|s| &m.status == s)
            && self.started_after.is_none_or(|t| m.created_at >= t)
            && self.started_before.is_none_or(|t| m.created_at < t)
            && self
                .search
                .iter()
                .all(|(name, id)| m.search.get(name) == Some(id))
    }

    /// Up to `limit` matches after `cursor`, reading at most [`MAX_SCAN`] entries.
    pub fn page(
        &self,
        store: &dyn Store,
        cursor: Option<&str>,
        limit: usize,
    ) -> crate::store::Result<Page> {
        let mut found = Vec::new();
        let mut cursor = cursor.map(str::to_string);
        let mut scanned = 0;
        loop {
            // From the search index the entry names the instance, and its instance entry
            // (read only as far as the page needs) says whether the value is still its own.
            let (batch, exhausted): (Vec<(String, Option<InstanceMeta>)>, bool) =
                match (self.workflow.as_deref(), self.search.first()) {
                    (Some(w), Some((name, id))) => {
                        let ids = store.search(w, name, id, cursor.as_deref(), PAGE)?;
                        let exhausted = ids.len() < PAGE;
                        (ids.into_iter().map(|i| (i, None)).collect(), exhausted)
                    }
                    _ => {
                        let metas = store.instances(cursor.as_deref(), PAGE)?;
                        let exhausted = metas.len() < PAGE;
                        let batch = metas.into_iter().map(|m| (m.id.clone(), Some(m))).collect();
                        (batch, exhausted)
                    }
                };
            scanned += batch.len();
            for (id, meta) in batch {
                let meta = match meta {
                    Some(m) => Some(m),
                    None => store.instance(&id)?,
                };
                cursor = Some(id);
                if let Some(m) = meta.filter(|m| self.matches(m)) {
                    found.push(m);
                    if found.len() == limit {
                        return Ok(Page {
                            found,
                            next: cursor,
                        });
                    }
                }
            }
            if exhausted {
                return Ok(Page { found, next: None });
            }
            if scanned >= MAX_SCAN {
                return Ok(Page {
                    found,
                    next: cursor,
                });
            }
        }
    }
}

/// An RFC 3339 instant in epoch milliseconds.
fn instant(text: &str, field: &str) -> Result<Millis, Refused> {
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            Refused(format!(
                "`{field}` must be an RFC 3339 time, like 2026-11-30T09:00:00Z; `{text}` is not one"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{memory::MemoryStore, Batch, Searched};

    fn put(store: &MemoryStore, id: &str, tier: &str, status: &str, at: Millis) {
        let tier_id = store.search_id("tier", tier);
        store
            .write(&Batch {
                instance: id.into(),
                meta: Some(InstanceMeta {
                    id: id.into(),
                    workflow: "escalation".into(),
                    status: status.into(),
                    created_at: at,
                    search: [("tier".to_string(), tier_id.clone())].into(),
                    ..Default::default()
                }),
                search_add: vec![Searched {
                    workflow: "escalation".into(),
                    attribute: "tier".into(),
                    id: tier_id,
                    instance: id.into(),
                }],
                ..Default::default()
            })
            .unwrap();
    }

    fn select(store: &MemoryStore, search: &[(&str, &str)], status: Option<&str>) -> Selection {
        let search = search
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Selection::new(
            store,
            |_| vec!["tier".into()],
            Some("escalation".into()),
            status.map(str::to_string),
            (None, None),
            &search,
        )
        .unwrap()
    }

    #[test]
    fn a_search_reads_the_index_and_drops_entries_whose_value_has_changed() {
        let store = MemoryStore::new();
        for i in 0..2500 {
            let tier = if i % 500 == 7 { "gold" } else { "basic" };
            put(&store, &format!("i{i:05}"), tier, "parked", i);
        }
        // A stale entry: i00001 was gold once, and the crash that lost the removal of its
        // old entry kept the new value in its instance entry.
        store
            .write(&Batch {
                instance: "i00001".into(),
                search_add: vec![Searched {
                    workflow: "escalation".into(),
                    attribute: "tier".into(),
                    id: store.search_id("tier", "gold"),
                    instance: "i00001".into(),
                }],
                ..Default::default()
            })
            .unwrap();
        let gold = select(&store, &[("tier", "gold")], None);
        let page = gold.page(&store, None, 3).unwrap();
        let ids: Vec<&str> = page.found.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["i00007", "i00507", "i01007"]);
        let rest = gold.page(&store, page.next.as_deref(), 100).unwrap();
        let ids: Vec<&str> = rest.found.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["i01507", "i02007"]);
        assert_eq!(rest.next, None);
        // Status and time filters apply to the hits.
        put(&store, "i00507", "gold", "completed", 507);
        let parked = select(&store, &[("tier", "gold")], Some("parked"));
        assert_eq!(parked.page(&store, None, 100).unwrap().found.len(), 4);
    }

    #[test]
    fn a_filter_that_could_never_match_is_refused_with_what_would() {
        let store = MemoryStore::new();
        let known = |_: &str| vec!["ticket_id".to_string()];
        let search = |k: &str| [(k.to_string(), "x".to_string())].into();
        let refused = |w: Option<&str>,
                       s: BTreeMap<String, String>,
                       started: (Option<&str>, Option<&str>)| {
            Selection::new(&store, known, w.map(str::to_string), None, started, &s)
                .unwrap_err()
                .0
        };
        let e = refused(Some("escalation"), search("ticket"), (None, None));
        assert!(
            e.contains("`ticket` is not a search attribute of workflow `escalation`"),
            "{e}"
        );
        assert!(e.contains("ticket_id"), "{e}");
        let e = refused(None, search("ticket_id"), (None, None));
        assert!(e.contains("needs `workflow=`"), "{e}");
        let e = refused(None, BTreeMap::new(), (Some("yesterday"), None));
        assert!(
            e.contains("`started_after` must be an RFC 3339 time"),
            "{e}"
        );
        let e = refused(
            None,
            BTreeMap::new(),
            (Some("2026-12-02T00:00:00Z"), Some("2026-12-01T00:00:00Z")),
        );
        assert!(e.contains("must be before"), "{e}");
    }
}
