//! `run --cache`: before anything is claimed, jobs whose exact request was answered before
//! get that answer, recorded as a `cached` attempt.

use anyhow::Result;

use super::Coordinator;
use crate::domain::{Claim, Finish, Outcome};

impl Coordinator<'_> {
    /// `--cache`: gives every runnable job in scope whose exact request was answered before
    /// that answer, lane by lane, in pages; again while it answers anything, since a grade job
    /// becomes runnable once its graded job was answered. Checked once, when the run starts.
    pub(super) fn answer_from_cache(&mut self) -> Result<()> {
        loop {
            let models: Vec<String> = self.lanes.keys().cloned().collect();
            let mut answered = 0;
            for model in models {
                answered += self.answer_lane_from_cache(&model)?;
            }
            if answered == 0 {
                return Ok(());
            }
        }
    }

    pub(super) fn answer_lane_from_cache(&mut self, model: &str) -> Result<u64> {
        const PAGE: usize = 1000;
        let config = self.lanes[model].model.clone();
        let Some(first) = self.store.first_pending(model)? else {
            return Ok(0);
        };
        let mut after = first - 1;
        let mut answered = 0;
        loop {
            let page = self.store.runnable(model, &self.opts.filter, after, PAGE)?;
            let Some(last) = page.last() else {
                return Ok(answered);
            };
            after = last.job_id;
            let mut hits = Vec::new();
            for claim in page {
                let rubric = match claim.rubric_id {
                    Some(id) => Some(self.rubric(id)?),
                    None => None,
                };
                // A job whose request cannot be built fails when it runs, with the reason.
                let Ok(key) = crate::cache::key_of(&config, rubric.as_deref(), &claim) else {
                    continue;
                };
                let Some(mut f) = self.store.cached_answer(&key)? else {
                    log::trace!("job {} not in the cache: key {key}", claim.job_id);
                    continue;
                };
                if let Some(rubric) = &rubric {
                    // The verdict is read again under this rubric's fields.
                    crate::grading::judge(rubric, &mut f);
                    if f.outcome != Outcome::Cached {
                        continue;
                    }
                }
                hits.push((claim, f));
            }
            if hits.is_empty() {
                continue;
            }
            let taken = self.store.answer_cached(self.runner_id, &hits)?;
            let recorded: Vec<(Claim, Finish)> = hits
                .into_iter()
                .zip(taken)
                .filter_map(|((mut claim, f), taken)| {
                    let (attempt_id, number) = taken?;
                    claim.attempt_id = attempt_id;
                    claim.number = number;
                    Some((claim, f))
                })
                .collect();
            for (claim, f) in &recorded {
                log::debug!(
                    "job {} ({}, {}/{}) answered from the cache: key {} from attempt {}",
                    claim.job_id,
                    claim.model,
                    claim.batch,
                    claim.item_id,
                    f.cache_key.as_deref().unwrap_or(""),
                    f.cached_from.unwrap_or(0)
                );
            }
            let n = recorded.len() as u64;
            answered += n;
            self.summary.done += n;
            self.summary.cached += n;
            if let Some(lane) = self.lanes.get_mut(model) {
                lane.done += n;
            }
        }
    }
}
