//! One claimed job → one child process → one recorded result. Runs on a pool thread; touches
//! no database.

use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

use crate::backends::{WorkerRequest, WorkerResponse};
use crate::domain::{Claim, Finish, Outcome};
use crate::exec::{self, template, ChildOutcome, ChildSpec, Status, StopSignal};
use crate::models::{Backend, ModelConfig, Settings};
use crate::text::{last_line, lossy, split_thinking};

/// Everything an attempt needs, owned, so it can move to a pool thread.
pub struct AttemptJob {
    pub claim: Claim,
    pub model: Arc<ModelConfig>,
    pub timeout: Duration,
    pub kill_grace: Duration,
    /// For grade jobs: the rubric the grader answers.
    pub rubric: Option<Arc<crate::grading::Rubric>>,
}

pub fn execute(job: &AttemptJob, stop: &StopSignal) -> Finish {
    let prompt = match prompt_for(job) {
        Ok(p) => p,
        Err(e) => return Finish::new(Outcome::Spawn, 0).error(format!("{e:#}")),
    };
    let spec = match spec_for(job, &prompt) {
        Ok(s) => s,
        Err(e) => return Finish::new(Outcome::Spawn, 0).error(format!("{e:#}")),
    };
    let key = crate::cache::key(&job.model, job.rubric.as_deref(), &job.claim, &prompt);
    let child = exec::run(&spec, stop);
    let mut finish = match job.model.backend {
        Backend::Command => from_command(job, child),
        Backend::Ollama | Backend::Openai => from_worker(job, child),
    };
    if finish.outcome == Outcome::Ok {
        if let Some(rubric) = &job.rubric {
            crate::grading::judge(rubric, &mut finish);
        }
    }
    redact_api_key(job, &mut finish);
    finish.cache_key = key.ok();
    finish
}

/// A server may echo the API key (in an error body, or in the answer itself), and a command
/// child can print it: the key named by `--api-key-env` is replaced everywhere the attempt's
/// record keeps text, so it never reaches the database.
fn redact_api_key(job: &AttemptJob, finish: &mut Finish) {
    let Some(var) = job.model.api_key_env.as_deref() else {
        return;
    };
    let Ok(key) = std::env::var(var) else {
        return;
    };
    let key = key.trim();
    // Too short to be a key: replacing it would garble ordinary text.
    if key.len() < 8 {
        return;
    }
    let redact = |text: &mut String| {
        if text.contains(key) {
            *text = text.replace(key, "[redacted]");
        }
    };
    for field in [
        &mut finish.output,
        &mut finish.reasoning,
        &mut finish.raw_output,
        &mut finish.stderr,
        &mut finish.error,
    ] {
        if let Some(text) = field.as_mut() {
            redact(text);
        }
    }
    if let Some(timings) = finish.timings.as_mut() {
        redact_json(timings, &redact);
    }
}

fn redact_json(v: &mut Value, redact: &dyn Fn(&mut String)) {
    match v {
        Value::String(s) => redact(s),
        Value::Array(items) => items.iter_mut().for_each(|i| redact_json(i, redact)),
        Value::Object(map) => map.values_mut().for_each(|i| redact_json(i, redact)),
        _ => {}
    }
}

fn prompt_for(job: &AttemptJob) -> anyhow::Result<String> {
    prompt_text(job.rubric.as_deref(), &job.claim)
}

/// The text sent to the model: the item's prompt, or for a grade job the rubric filled in.
pub fn prompt_text(
    rubric: Option<&crate::grading::Rubric>,
    claim: &Claim,
) -> anyhow::Result<String> {
    match rubric {
        Some(rubric) => crate::grading::grade_prompt(rubric, claim),
        None => Ok(claim.prompt.clone()),
    }
}

/// The command backend's argv: the template with `{model}` (the served name), `{repeat}` and
/// the item's variables filled in.
pub fn command_argv(model: &ModelConfig, c: &Claim, prompt: &str) -> anyhow::Result<Vec<String>> {
    let Some(tpl) = model.command.as_deref() else {
        anyhow::bail!(
            "model {} has no command: set one with `llmbatch models set {} --command '…'`",
            c.model,
            c.model
        );
    };
    let lookup = |name: &str| lookup(model, c, prompt, name);
    template::command_argv(tpl, &lookup)
        .map_err(|e| anyhow::anyhow!("command template of model {}: {e}", c.model))
}

fn spec_for(job: &AttemptJob, prompt: &str) -> anyhow::Result<ChildSpec> {
    let c = &job.claim;
    let env = vec![
        ("LLMBATCH_JOB_ID".to_string(), c.job_id.to_string()),
        ("LLMBATCH_ATTEMPT".to_string(), c.number.to_string()),
        ("LLMBATCH_MODEL".to_string(), c.model.clone()),
        ("LLMBATCH_BATCH".to_string(), c.batch.clone()),
        ("LLMBATCH_ITEM_ID".to_string(), c.item_id.clone()),
        ("LLMBATCH_REPEAT".to_string(), c.repeat.to_string()),
        (
            "LLMBATCH_SERVED_MODEL".to_string(),
            job.model.served().to_string(),
        ),
        (
            "LLMBATCH_RUNNER".to_string(),
            crate::liveness::own_runner_token().to_string(),
        ),
    ];
    let (argv, stdin) = match job.model.backend {
        Backend::Command => {
            let argv = command_argv(&job.model, c, prompt)?;
            let stdin = match job.model.settings.stdin {
                Some(crate::models::StdinFormat::Json) => {
                    serde_json::to_vec(&crate::chat::request_messages(
                        item_messages(job),
                        prompt,
                        job.model.settings.system.as_deref(),
                    ))?
                }
                _ => prompt.as_bytes().to_vec(),
            };
            (argv, stdin)
        }
        backend => {
            let exe = std::env::current_exe()?;
            let request = WorkerRequest {
                backend,
                endpoint: c.endpoint.clone(),
                model: job.model.served().to_string(),
                prompt: prompt.to_string(),
                messages: item_messages(job).map(<[Value]>::to_vec),
                item_options: match job.rubric {
                    Some(_) => serde_json::Map::new(),
                    None => c.options.clone(),
                },
                settings: settings_for(job),
                api_key_env: job.model.api_key_env.clone(),
                timeout_s: worker_deadline(job.timeout).as_secs_f64(),
            };
            let argv = vec![exe.to_string_lossy().into_owned(), "worker".to_string()];
            (argv, serde_json::to_vec(&request)?)
        }
    };
    Ok(ChildSpec {
        argv,
        stdin,
        env,
        timeout: job.timeout,
        kill_grace: job.kill_grace,
    })
}

/// The item's chat messages; a grade job of a chat item sends the rubric's prompt instead.
fn item_messages(job: &AttemptJob) -> Option<&[Value]> {
    match job.rubric {
        Some(_) => None,
        None => job.claim.messages.as_deref(),
    }
}

/// The model's settings; an Ollama grader with no `format` of its own is asked for JSON in the
/// shape of the rubric's fields, so its verdict is machine-readable by construction.
fn settings_for(job: &AttemptJob) -> Settings {
    request_settings(&job.model, job.rubric.as_deref())
}

pub fn request_settings(model: &ModelConfig, rubric: Option<&crate::grading::Rubric>) -> Settings {
    let mut settings = model.settings.clone();
    if let Some(rubric) = rubric {
        if model.backend == Backend::Ollama && settings.format.is_none() {
            settings.format = Some(rubric.json_schema());
        }
    }
    settings
}

/// The worker gives up just before the coordinator would kill it, so a slow server ends as a
/// clean `timeout` with the worker's own message.
fn worker_deadline(timeout: Duration) -> Duration {
    let margin = (timeout / 20).clamp(Duration::from_millis(200), Duration::from_secs(2));
    timeout.saturating_sub(margin).max(timeout / 2)
}

fn lookup(model: &ModelConfig, c: &Claim, prompt: &str, name: &str) -> Option<String> {
    match name {
        "model" => Some(model.served().to_string()),
        "repeat" => Some(c.repeat.to_string()),
        "prompt" => Some(prompt.to_string()),
        "batch" => Some(c.batch.clone()),
        "item_id" => Some(c.item_id.clone()),
        "job_id" => Some(c.job_id.to_string()),
        "attempt" => Some(c.number.to_string()),
        _ => c.vars.get(name).map(template::value_text),
    }
}

/// Outcome of a child that was not (or not only) the judge of its own result.
fn killed_or_spawn(job: &AttemptJob, child: &ChildOutcome) -> Option<Finish> {
    let ms = child.duration.as_millis() as i64;
    let f = match &child.status {
        Status::SpawnFailed(msg) => Finish::new(Outcome::Spawn, ms).error(msg.clone()),
        // Out of processes or files is the machine's state, not the job's fault: the lane rests
        // and retries uncharged, as for a server that is down.
        Status::SpawnBusy(msg) => Finish::new(Outcome::Unavailable, ms).error(msg.clone()),
        Status::TimedOut => Finish::new(Outcome::Timeout, ms).error(format!(
            "no answer within the {} timeout: killed",
            crate::util::human_secs(job.timeout.as_secs_f64())
        )),
        Status::Interrupted => {
            Finish::new(Outcome::Interrupted, ms).error("runner stopped by a signal")
        }
        _ => return None,
    };
    Some(f)
}

fn from_command(job: &AttemptJob, child: ChildOutcome) -> Finish {
    let stderr = (!child.stderr_tail.is_empty()).then(|| lossy(&child.stderr_tail));
    let mut f = killed_or_spawn(job, &child).unwrap_or_else(|| {
        let ms = child.duration.as_millis() as i64;
        match child.status {
            Status::Exited(0) => answer(lossy(&child.stdout), ms),
            Status::Exited(code) => {
                let mut f = Finish::new(Outcome::Exit, ms).error(format!(
                    "exited with code {code}{}",
                    tail_note(stderr.as_deref())
                ));
                f.exit_code = Some(code as i64);
                f
            }
            Status::Signaled(sig) => {
                let mut f = Finish::new(Outcome::Crash, ms).error(format!(
                    "killed by signal {}{}",
                    signal_name(sig),
                    tail_note(stderr.as_deref())
                ));
                f.signal = Some(sig as i64);
                f
            }
            _ => unreachable!("handled by killed_or_spawn"),
        }
    });
    if child.stdout_truncated {
        f.error
            .get_or_insert_with(|| format!("output truncated at {} bytes", exec::MAX_STDOUT));
        // An answer cut at a length, as a model's `done_reason: length`: `report failures`
        // counts it as truncated and `export` marks it.
        f.timings = Some(serde_json::json!({
            "done_reason": "length",
            "truncated_at_bytes": exec::MAX_STDOUT,
        }));
    }
    f.stderr = stderr;
    f
}

/// A finished answer: reasoning apart, `empty` when nothing is left of it.
pub fn answer(raw: String, ms: i64) -> Finish {
    let (text, reasoning) = split_thinking(&raw);
    let mut f = if text.is_empty() {
        let why = if reasoning.is_some() {
            "no answer after the reasoning (thinking used up the budget?)"
        } else {
            "no output"
        };
        Finish::new(Outcome::Empty, ms).error(why)
    } else {
        Finish::new(Outcome::Ok, ms)
    };
    if reasoning.is_some() || text != raw {
        f.raw_output = Some(raw);
    }
    f.output = Some(text);
    f.reasoning = reasoning;
    f
}

fn from_worker(job: &AttemptJob, child: ChildOutcome) -> Finish {
    let stderr = (!child.stderr_tail.is_empty()).then(|| lossy(&child.stderr_tail));
    let ms = child.duration.as_millis() as i64;
    let mut f = killed_or_spawn(job, &child).unwrap_or_else(|| {
        match serde_json::from_slice::<WorkerResponse>(&child.stdout) {
            Ok(r) if matches!(child.status, Status::Exited(0)) => from_response(r, ms),
            _ => Finish::new(Outcome::Crash, ms).error(format!(
                "the HTTP worker failed ({:?}){}",
                child.status,
                tail_note(stderr.as_deref())
            )),
        }
    });
    f.stderr = stderr;
    f
}

fn from_response(r: WorkerResponse, ms: i64) -> Finish {
    let outcome = Outcome::ALL
        .into_iter()
        .find(|o| o.as_str() == r.outcome)
        .unwrap_or(Outcome::Http);
    let mut f = Finish::new(outcome, ms);
    f.http_status = r.http_status;
    f.output = r.output;
    f.reasoning = r.reasoning;
    f.raw_output = r.raw_output;
    f.error = r.error;
    f.timings = r.timings;
    f.retry_after_ms = r.retry_after_ms;
    f.quota_exhausted = r.quota_exhausted;
    f.metrics = r.metrics;
    f
}

fn tail_note(stderr: Option<&str>) -> String {
    stderr
        .and_then(last_line)
        .map(|l| format!(": {}", l.chars().take(300).collect::<String>()))
        .unwrap_or_default()
}

pub fn signal_name(sig: i32) -> String {
    match exec::signal_abbrev(sig) {
        Some(name) => format!("{sig} ({name})"),
        None => format!("{sig}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::JobKind;

    fn grade_job(backend: Backend, format: Option<Value>) -> AttemptJob {
        let mut model = ModelConfig::unconfigured("judge");
        model.backend = backend;
        model.settings.format = format;
        AttemptJob {
            claim: Claim {
                job_id: 2,
                attempt_id: 1,
                number: 1,
                token: 1,
                started_at: 0,
                kind: JobKind::Grade,
                batch: "b".into(),
                item_id: "1".into(),
                repeat: 1,
                model: "judge".into(),
                endpoint: "http://127.0.0.1:11434".into(),
                prompt: "p".into(),
                vars: serde_json::Map::new(),
                messages: None,
                options: serde_json::Map::new(),
                charged: 0,
                max_attempts: None,
                parent_id: Some(1),
                rubric_id: Some(1),
                parent_output: Some("out".into()),
            },
            model: Arc::new(model),
            timeout: Duration::from_secs(10),
            kill_grace: Duration::from_secs(1),
            rubric: Some(Arc::new(
                crate::grading::Rubric::parse("joke", crate::grading::JOKE).unwrap(),
            )),
        }
    }

    #[test]
    fn ollama_graders_ask_for_the_rubric_schema() {
        let job = grade_job(Backend::Ollama, None);
        let format = settings_for(&job).format.expect("a format");
        assert_eq!(format["required"][0], "IS_JOKE");
        // A format the user set wins; other backends get the text parser only.
        let own = grade_job(Backend::Ollama, Some(Value::String("json".into())));
        assert_eq!(
            settings_for(&own).format,
            Some(Value::String("json".into()))
        );
        assert!(settings_for(&grade_job(Backend::Openai, None))
            .format
            .is_none());
        let mut plain = grade_job(Backend::Ollama, None);
        plain.rubric = None;
        assert!(settings_for(&plain).format.is_none());
    }
}
