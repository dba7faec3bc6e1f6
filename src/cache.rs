//! The answer cache of `run --cache`: a key per exact request. Everything that can change the
//! answer is in it — backend, served model (not the endpoint: any server of one model gives
//! the same kind of answer), the command line and stdin format for the command backend,
//! options (the model's and a chat item's own), system prompt, think, format, the exact prompt
//! or chat messages, and the repeat number, so two samples never share an answer. `keep_alive` is not: it changes how long a model stays loaded, not what it says.
//! A grade job's key has no repeat: the same grader, rubric and output give the same verdict.

use anyhow::Result;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::domain::Claim;
use crate::grading::Rubric;
use crate::models::{Backend, ModelConfig};

/// Bumped when what goes into a key changes, so old keys stop matching.
const KEY_VERSION: i64 = 1;

/// The key of the request `claim` makes with `prompt` (as rendered for it) on `model`.
pub fn key(
    model: &ModelConfig,
    rubric: Option<&Rubric>,
    claim: &Claim,
    prompt: &str,
) -> Result<String> {
    let settings = crate::attempt::request_settings(model, rubric);
    let command = match model.backend {
        Backend::Command => Some(crate::attempt::command_argv(model, claim, prompt)?),
        _ => None,
    };
    let grade = claim.kind == crate::domain::JobKind::Grade;
    let repeat = (!grade).then_some(claim.repeat);
    // A grade job sends the rubric as a plain prompt, never the graded item's chat.
    let (messages, item_options) = if grade {
        (None, serde_json::Map::new())
    } else {
        (claim.messages.clone(), claim.options.clone())
    };
    let stdin = match model.backend {
        Backend::Command => settings.stdin,
        _ => None,
    };
    // serde_json keeps object keys sorted, so equal requests serialize equally.
    let material = json!({
        "v": KEY_VERSION,
        "backend": model.backend.as_str(),
        "model": model.served(),
        "command": command,
        "stdin": stdin,
        "options": Value::Object(settings.options),
        "item_options": Value::Object(item_options),
        "think": settings.think,
        "system": settings.system,
        "format": settings.format,
        "prompt": prompt,
        "messages": messages,
        "repeat": repeat,
    });
    let digest = Sha256::digest(material.to_string().as_bytes());
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}

/// The key of a pending job, computed the way its attempt would.
pub fn key_of(model: &ModelConfig, rubric: Option<&Rubric>, claim: &Claim) -> Result<String> {
    let prompt = crate::attempt::prompt_text(rubric, claim)?;
    key(model, rubric, claim, &prompt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn claim() -> Claim {
        Claim {
            job_id: 1,
            attempt_id: 1,
            number: 1,
            token: 1,
            started_at: 0,
            kind: crate::domain::JobKind::Generate,
            batch: "b".into(),
            item_id: "1".into(),
            repeat: 1,
            model: "m".into(),
            endpoint: "http://gpu1:11434".into(),
            prompt: "hello".into(),
            vars: Map::new(),
            messages: None,
            options: Map::new(),
            charged: 0,
            max_attempts: None,
            parent_id: None,
            rubric_id: None,
            parent_output: None,
        }
    }

    fn key_for(model: &ModelConfig, c: &Claim) -> String {
        key_of(model, None, c).unwrap()
    }

    #[test]
    fn what_changes_the_answer_changes_the_key_and_nothing_else_does() {
        let model = ModelConfig::unconfigured("m");
        let base = key_for(&model, &claim());
        // Not the batch, the item, the endpoint or keep_alive.
        let mut other = claim();
        other.batch = "c".into();
        other.item_id = "9".into();
        other.endpoint = "http://gpu2:11434".into();
        let mut kept = model.clone();
        kept.settings.keep_alive = Some("1h".into());
        assert_eq!(key_for(&kept, &other), base);
        // The repeat, the prompt, messages, an item's options.
        let mut c = claim();
        c.repeat = 2;
        assert_ne!(key_for(&model, &c), base);
        let mut c = claim();
        c.prompt = "hello!".into();
        assert_ne!(key_for(&model, &c), base);
        let mut c = claim();
        c.messages = Some(vec![json!({"role": "user", "content": "hello"})]);
        assert_ne!(key_for(&model, &c), base);
        let mut c = claim();
        c.options.insert("temperature".into(), json!(1));
        assert_ne!(key_for(&model, &c), base);
        // The served model, an option, the system prompt, think, the backend.
        let mut m = model.clone();
        m.settings.remote_model = Some("other".into());
        assert_ne!(key_for(&m, &claim()), base);
        let mut m = model.clone();
        m.settings.options.insert("temperature".into(), json!(0));
        assert_ne!(key_for(&m, &claim()), base);
        let mut m = model.clone();
        m.settings.system = Some("Be brief.".into());
        assert_ne!(key_for(&m, &claim()), base);
        let mut m = model.clone();
        m.settings.think = Some(json!(false));
        assert_ne!(key_for(&m, &claim()), base);
        let mut m = model.clone();
        m.backend = Backend::Openai;
        assert_ne!(key_for(&m, &claim()), base);
    }
}
