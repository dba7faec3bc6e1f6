//! Writing records as items and jobs, in chunks, idempotently: a (batch, item, model) already
//! queued is counted, and an item stored with different content is refused.

use anyhow::Result;
use serde_json::{Map, Value};
use std::collections::BTreeSet;

use super::read::{first_line_of, Record};
use super::Counts;
use crate::cli::InputFormat;
use crate::db::{Enqueue, NewItem};
use crate::exec::template;
use crate::usage;

/// Records written per statement: one multi-row insert per chunk keeps the database cursors open
/// across rows (a row per statement cost half the time of a million-prompt enqueue).
const CHUNK: usize = 128;

/// Writes items and jobs in chunks, counting new and existing ones.
pub(super) struct Sink<'a> {
    tx: &'a dyn Enqueue,
    batch: &'a str,
    models: &'a [String],
    template: Option<&'a str>,
    name: &'a str,
    /// Jobs per item and model (`--repeat`), numbered 1..repeats.
    pub(super) repeats: i64,
    /// Records waiting for the next chunk, with their rendered prompt and stored columns.
    pending: Vec<(Record, Stored)>,
    pub(super) format: InputFormat,
    /// Every model a job was queued for (or found queued).
    pub(super) models_seen: BTreeSet<String>,
}

/// An item's columns as stored: the prompt (for a chat item, the rendered conversation) and
/// the JSON texts of its variables, messages and options.
struct Stored {
    prompt: String,
    vars: String,
    messages: Option<String>,
    options: Option<String>,
}

impl<'a> Sink<'a> {
    pub(super) fn new(
        tx: &'a dyn Enqueue,
        batch: &'a str,
        models: &'a [String],
        template: Option<&'a str>,
        name: &'a str,
    ) -> Result<Sink<'a>> {
        if let Some(m) = models.iter().find(|m| m.trim().is_empty()) {
            usage!("--model {m:?}: a model name cannot be empty");
        }
        Ok(Sink {
            tx,
            batch,
            models,
            template,
            name,
            repeats: 1,
            pending: Vec::with_capacity(CHUNK),
            format: InputFormat::Csv,
            models_seen: BTreeSet::new(),
        })
    }

    pub(super) fn add(&mut self, mut rec: Record, counts: &mut Counts) -> Result<()> {
        self.take_messages(&mut rec)?;
        if self.models.is_empty() && rec.model.is_none() {
            usage!(
                "{} line {}: the request names no body.model: add one, or give --model",
                self.name,
                rec.line
            );
        }
        let prompt = match rec.messages.as_mut() {
            Some(messages) => {
                if let Some(t) = self.template {
                    let text = self.render(t, &rec.vars, rec.line)?;
                    crate::chat::set_last_user(messages, text);
                }
                crate::chat::render(messages)
            }
            None => self.prompt(&rec)?,
        };
        let stored = Stored {
            prompt,
            vars: serde_json::to_string(&rec.vars)?,
            messages: rec
                .messages
                .as_ref()
                .map(serde_json::to_string)
                .transpose()?,
            options: rec
                .options
                .as_ref()
                .map(serde_json::to_string)
                .transpose()?,
        };
        self.pending.push((rec, stored));
        if self.pending.len() >= CHUNK {
            self.flush(counts)?;
        }
        Ok(())
    }

    /// Writes the pending records: items (an item already there must have the same prompt),
    /// then one job per item and model, in input order.
    pub(super) fn flush(&mut self, counts: &mut Counts) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let n = self.pending.len();
        let items: Vec<NewItem> = self
            .pending
            .iter()
            .map(|(rec, st)| NewItem {
                id: &rec.id,
                prompt: &st.prompt,
                vars: &st.vars,
                messages: st.messages.as_deref(),
                options: st.options.as_deref(),
            })
            .collect();
        if let Some(found) = self.tx.add_items(self.batch, &items)? {
            // Some ids were there already (or twice in this input): an item never changes
            // once queued, so each must come again exactly as stored.
            for ((rec, st), old) in self.pending.iter().zip(found) {
                let old = Stored {
                    prompt: old.prompt,
                    vars: old.vars,
                    messages: old.messages,
                    options: old.options,
                };
                let differs = differences(&old, st, &rec.vars);
                if differs.is_empty() {
                    continue;
                }
                let what = differs.join(", ");
                if self.tx.queued_before(self.batch, &rec.id)? {
                    usage!(
                        "{} line {}: item {:?} is already in batch {:?} with a different {what}; a queued item never changes (its outputs were made from it): enqueue the changed input under another --batch",
                        self.name, rec.line, rec.id, self.batch
                    );
                }
                let first = match first_line_of(self.name, self.format, &rec.id) {
                    Some(line) => format!("line {line}"),
                    None => "an earlier record".to_string(),
                };
                usage!(
                    "{} line {}: item {:?} repeats {first} with a different {what}: ids must be unique within an input",
                    self.name, rec.line, rec.id
                );
            }
        }
        counts.items += n as u64;
        // An explicit --model list overrides the model a Batch API line names.
        let pairs: Vec<(&Record, &String)> = self
            .pending
            .iter()
            .flat_map(|(rec, _)| {
                match (&rec.model, self.models.is_empty()) {
                    (Some(own), true) => std::slice::from_ref(own).iter(),
                    _ => self.models.iter(),
                }
                .map(move |m| (rec, m))
            })
            .collect();
        for (_, m) in &pairs {
            if !self.models_seen.contains(*m) {
                self.models_seen.insert(m.to_string());
            }
        }
        // Repeats of one item and model are adjacent, so a sweep runs item by item.
        let mut keys: Vec<(&str, &str, i64)> = Vec::new();
        for (rec, model) in &pairs {
            for repeat in 1..=self.repeats {
                keys.push((&rec.id, model, repeat));
            }
        }
        let jobs = keys.len();
        let new = self.tx.add_jobs(self.batch, &keys)?;
        counts.new += new;
        counts.existing += jobs as u64 - new;
        self.pending.clear();
        Ok(())
    }

    /// A `messages` field or column (JSON text in a CSV) makes a chat item.
    fn take_messages(&self, rec: &mut Record) -> Result<()> {
        let Some(raw) = rec.vars.remove("messages") else {
            return Ok(());
        };
        let value = match raw {
            Value::String(text) => serde_json::from_str(&text).map_err(|e| {
                crate::error::UsageError(format!(
                    "{} line {}: field `messages` is not JSON: {e}",
                    self.name, rec.line
                ))
            })?,
            other => other,
        };
        let messages = crate::chat::check(&value).map_err(|why| {
            crate::error::UsageError(format!("{} line {}: {why}", self.name, rec.line))
        })?;
        rec.messages = Some(messages);
        Ok(())
    }

    fn render(&self, t: &str, vars: &Map<String, Value>, line: u64) -> Result<String> {
        template::render(t, &template::vars_lookup(vars)).map_err(|e| {
            crate::error::UsageError(format!(
                "{} line {}: {e} (fields: {})",
                self.name,
                line,
                vars.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
            .into()
        })
    }

    fn prompt(&self, rec: &Record) -> Result<String> {
        match self.template {
            Some(t) => self.render(t, &rec.vars, rec.line),
            None => match rec.vars.get("prompt") {
                Some(Value::String(p)) if !p.trim().is_empty() => Ok(p.clone()),
                Some(Value::String(_)) => {
                    usage!("{} line {}: field `prompt` is empty", self.name, rec.line)
                }
                Some(other) => usage!(
                    "{} line {}: field `prompt` must be text, not {other}",
                    self.name,
                    rec.line
                ),
                None => usage!(
                    "{} line {}: no `prompt` or `messages` field (give one, or a --template using the fields {})",
                    self.name,
                    rec.line,
                    rec.vars.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            },
        }
    }
}

/// What differs between a stored item and a record: `prompt`, `messages`, `options` and the
/// names of changed fields.
fn differences(old: &Stored, new: &Stored, vars: &Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    if old.prompt != new.prompt {
        out.push("prompt".to_string());
    }
    if old.messages != new.messages {
        out.push("messages".to_string());
    }
    if old.options != new.options {
        out.push("request options".to_string());
    }
    if old.vars != new.vars {
        let old: Map<String, Value> = serde_json::from_str(&old.vars).unwrap_or_default();
        let mut keys: Vec<&String> = old.keys().chain(vars.keys()).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            if k != "prompt" && old.get(k) != vars.get(k) {
                out.push(format!("field `{k}`"));
            }
        }
        if out.is_empty() && old != *vars {
            out.push("fields".to_string());
        }
    }
    out
}
