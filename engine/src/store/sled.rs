//! [`Store`] on sled: one tree per index, records as versioned JSON.

use super::*;
use crate::runtime::record::{Stored, VERSION};
use std::path::Path;

pub struct SledStore {
    db: ::sled::Db,
    journal: ::sled::Tree,
    instances: ::sled::Tree,
    definitions: ::sled::Tree,
    keys: ::sled::Tree,
    timers: ::sled::Tree,
    waits: ::sled::Tree,
    events: ::sled::Tree,
}

fn io(e: ::sled::Error) -> Error {
    Error::Io(e.to_string())
}

impl SledStore {
    /// Open (or create) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let db = ::sled::Config::new()
            .path(dir)
            .mode(::sled::Mode::HighThroughput)
            .open()
            .map_err(|e| match e {
                ::sled::Error::Io(ref ioe)
                    if ioe.kind() == std::io::ErrorKind::WouldBlock
                        || ioe.to_string().contains("lock") =>
                {
                    Error::Locked {
                        path: dir.display().to_string(),
                    }
                }
                other => io(other),
            })?;
        Self::from_db(db)
    }

    /// A store that lives only as long as the process (for `casework run` and tests).
    pub fn temporary() -> Result<Self> {
        Self::from_db(::sled::Config::new().temporary(true).open().map_err(io)?)
    }

    fn from_db(db: ::sled::Db) -> Result<Self> {
        let t = |name: &str| db.open_tree(name).map_err(io);
        Ok(SledStore {
            journal: t("journal")?,
            instances: t("instances")?,
            definitions: t("definitions")?,
            keys: t("idempotency")?,
            timers: t("timers")?,
            waits: t("waits")?,
            events: t("events")?,
            db,
        })
    }
}

fn journal_key(instance: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(instance.len() + 9);
    k.extend_from_slice(instance.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn timer_key(t: &Timer) -> Vec<u8> {
    // Flip the sign bit so negative instants sort before positive ones.
    let mut k = ((t.at as u64) ^ (1 << 63)).to_be_bytes().to_vec();
    k.extend_from_slice(t.instance.as_bytes());
    k.push(0);
    k.extend_from_slice(&t.frame.to_be_bytes());
    k
}

fn parse_timer_key(k: &[u8]) -> Option<Timer> {
    let at = (u64::from_be_bytes(k.get(..8)?.try_into().ok()?) ^ (1 << 63)) as i64;
    let rest = &k[8..];
    let (inst, frame) = rest.split_at(rest.len().checked_sub(5)?);
    Some(Timer {
        at,
        instance: String::from_utf8(inst.to_vec()).ok()?,
        frame: u32::from_be_bytes(frame[1..].try_into().ok()?),
    })
}

fn wait_prefix(event_type: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::new();
    k.extend_from_slice(event_type.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k.push(0);
    k
}

fn wait_key(w: &Wait) -> Vec<u8> {
    let mut k = wait_prefix(&w.event_type, &w.key);
    k.extend_from_slice(w.instance.as_bytes());
    k.push(0);
    k.extend_from_slice(&w.frame.to_be_bytes());
    k
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::Io(e.to_string()))
}

impl Store for SledStore {
    fn write(&self, b: &Batch) -> Result<()> {
        // Index entries go first: after a crash an index entry without its record is
        // harmless (the instance ignores a stale timer or wait), the reverse would lose a wakeup.
        for t in &b.timers_add {
            self.timers.insert(timer_key(t), &[]).map_err(io)?;
        }
        for w in &b.waits_add {
            self.waits.insert(wait_key(w), &[]).map_err(io)?;
        }
        let mut batch = ::sled::Batch::default();
        for (i, r) in b.records.iter().enumerate() {
            let stored = Stored {
                v: VERSION,
                record: r.clone(),
            };
            batch.insert(
                journal_key(&b.instance, b.first_seq + i as u64),
                json(&stored)?,
            );
        }
        self.journal.apply_batch(batch).map_err(io)?;
        if let Some(m) = &b.meta {
            self.instances
                .insert(m.id.as_bytes(), json(m)?)
                .map_err(io)?;
        }
        for t in &b.timers_remove {
            self.timers.remove(timer_key(t)).map_err(io)?;
        }
        for w in &b.waits_remove {
            self.waits.remove(wait_key(w)).map_err(io)?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        self.db.flush().map(|_| ()).map_err(io)
    }

    fn journal(&self, instance: &str) -> Result<Vec<Record>> {
        let mut prefix = instance.as_bytes().to_vec();
        prefix.push(0);
        self.journal
            .scan_prefix(prefix)
            .map(|kv| {
                let (_, v) = kv.map_err(io)?;
                let stored: Stored = serde_json::from_slice(&v).map_err(|e| Error::Corrupt {
                    instance: instance.into(),
                    detail: e.to_string(),
                })?;
                if stored.v != VERSION {
                    return Err(Error::Corrupt {
                        instance: instance.into(),
                        detail: format!(
                            "journal version {} is newer than this casework understands",
                            stored.v
                        ),
                    });
                }
                Ok(stored.record)
            })
            .collect()
    }

    fn instance(&self, id: &str) -> Result<Option<InstanceMeta>> {
        match self.instances.get(id.as_bytes()).map_err(io)? {
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| Error::Corrupt {
                    instance: id.into(),
                    detail: e.to_string(),
                }),
            None => Ok(None),
        }
    }

    fn instances(&self, after: Option<&str>, limit: usize) -> Result<Vec<InstanceMeta>> {
        let iter = match after {
            Some(a) => {
                let mut start = a.as_bytes().to_vec();
                start.push(0);
                self.instances.range(start..)
            }
            None => self.instances.iter(),
        };
        iter.take(limit)
            .map(|kv| {
                let (k, v) = kv.map_err(io)?;
                serde_json::from_slice(&v).map_err(|e| Error::Corrupt {
                    instance: String::from_utf8_lossy(&k).into(),
                    detail: e.to_string(),
                })
            })
            .collect()
    }

    fn runnable(&self) -> Result<Vec<InstanceMeta>> {
        let mut out = Vec::new();
        for kv in self.instances.iter() {
            let (_, v) = kv.map_err(io)?;
            // Cheap pre-filter: most instances are finished or parked.
            let has = |needle: &[u8]| v.windows(needle.len()).any(|w| w == needle);
            if has(br#""status":"running""#) || has(br#""status":"compensating""#) {
                if let Ok(m) = serde_json::from_slice::<InstanceMeta>(&v) {
                    out.push(m);
                }
            }
        }
        Ok(out)
    }

    fn put_definition(&self, hash: &str, def: &StoredDefinition) -> Result<()> {
        self.definitions
            .insert(hash.as_bytes(), json(def)?)
            .map_err(io)?;
        Ok(())
    }

    fn definition(&self, hash: &str) -> Result<Option<StoredDefinition>> {
        match self.definitions.get(hash.as_bytes()).map_err(io)? {
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| Error::Io(e.to_string())),
            None => Ok(None),
        }
    }

    fn claim_key(&self, workflow: &str, key: &str, id: &str) -> Result<Option<String>> {
        let k = wait_prefix(workflow, key);
        loop {
            match self
                .keys
                .compare_and_swap(&k, None as Option<&[u8]>, Some(id.as_bytes()))
                .map_err(io)?
            {
                Ok(()) => return Ok(None),
                Err(cas) => {
                    let holder = cas
                        .current
                        .map(|v| String::from_utf8_lossy(&v).into_owned())
                        .unwrap_or_default();
                    // A claim whose instance never got journaled (crash in between) is free again.
                    if self.instance(&holder)?.is_some() || holder == id {
                        return Ok(Some(holder));
                    }
                    if self
                        .keys
                        .compare_and_swap(&k, Some(holder.as_bytes()), Some(id.as_bytes()))
                        .map_err(io)?
                        .is_ok()
                    {
                        return Ok(None);
                    }
                }
            }
        }
    }

    fn due_timers(&self, now: Millis, limit: usize) -> Result<Vec<Timer>> {
        let mut out = Vec::new();
        for kv in self.timers.iter() {
            let (k, _) = kv.map_err(io)?;
            let Some(t) = parse_timer_key(&k) else {
                continue;
            };
            if t.at > now || out.len() >= limit {
                break;
            }
            out.push(t);
        }
        Ok(out)
    }

    fn next_timer(&self) -> Result<Option<Millis>> {
        Ok(self
            .timers
            .first()
            .map_err(io)?
            .and_then(|(k, _)| parse_timer_key(&k))
            .map(|t| t.at))
    }

    fn waiters(&self, event_type: &str, key: &str) -> Result<Vec<Wait>> {
        let prefix = wait_prefix(event_type, key);
        self.waits
            .scan_prefix(&prefix)
            .map(|kv| {
                let (k, _) = kv.map_err(io)?;
                let rest = &k[prefix.len()..];
                let split = rest.len().saturating_sub(5);
                Ok(Wait {
                    event_type: event_type.into(),
                    key: key.into(),
                    instance: String::from_utf8_lossy(&rest[..split]).into_owned(),
                    frame: u32::from_be_bytes(rest[split + 1..].try_into().unwrap_or([0; 4])),
                })
            })
            .collect()
    }

    fn event_answer(&self, event_id: &str) -> Result<Option<serde_json::Value>> {
        match self.events.get(event_id.as_bytes()).map_err(io)? {
            Some(v) => Ok(serde_json::from_slice(&v).ok()),
            None => Ok(None),
        }
    }

    fn put_event_answer(&self, event_id: &str, answer: &serde_json::Value) -> Result<()> {
        self.events
            .insert(event_id.as_bytes(), json(answer)?)
            .map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_come_out_in_time_order() {
        let s = SledStore::temporary().unwrap();
        let mk = |at, i: &str| Timer {
            at,
            instance: i.into(),
            frame: 1,
        };
        let b = Batch {
            instance: "x".into(),
            timers_add: vec![mk(300, "c"), mk(-5, "a"), mk(100, "b")],
            ..Batch::default()
        };
        s.write(&b).unwrap();
        let due = s.due_timers(200, 10).unwrap();
        assert_eq!(due, vec![mk(-5, "a"), mk(100, "b")]);
        assert_eq!(s.next_timer().unwrap(), Some(-5));
    }

    #[test]
    fn runnable_lists_only_running_instances() {
        let s = SledStore::temporary().unwrap();
        for (id, status) in [
            ("a", "running"),
            ("b", "parked"),
            ("c", "completed"),
            ("d", "compensating"),
        ] {
            let meta = InstanceMeta {
                id: id.into(),
                workflow: "w".into(),
                version: 1,
                hash: "h".into(),
                status: status.into(),
                created_at: 0,
                updated_at: 0,
                parent: None,
            };
            s.write(&Batch {
                instance: id.into(),
                meta: Some(meta),
                ..Batch::default()
            })
            .unwrap();
        }
        let ids: Vec<String> = s.runnable().unwrap().into_iter().map(|m| m.id).collect();
        assert_eq!(ids, vec!["a", "d"]);
    }

    #[test]
    fn idempotency_key_is_claimed_once() {
        let s = SledStore::temporary().unwrap();
        assert_eq!(s.claim_key("refund", "k1", "i1").unwrap(), None);
        // i1 was never journaled, so a second claimant takes the key over.
        assert_eq!(s.claim_key("refund", "k1", "i2").unwrap(), None);
        let meta = InstanceMeta {
            id: "i2".into(),
            workflow: "refund".into(),
            version: 1,
            hash: "h".into(),
            status: "running".into(),
            created_at: 0,
            updated_at: 0,
            parent: None,
        };
        s.write(&Batch {
            instance: "i2".into(),
            meta: Some(meta),
            ..Batch::default()
        })
        .unwrap();
        assert_eq!(
            s.claim_key("refund", "k1", "i3").unwrap(),
            Some("i2".into())
        );
    }
}
