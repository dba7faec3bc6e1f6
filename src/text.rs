//! Text helpers shared by every backend: reasoning apart from the answer, lossy UTF-8.

/// Splits `<think>…</think>` (or `<thinking>…</thinking>`) blocks from the answer. Returns the
/// answer (trimmed) and the reasoning, if any. An unclosed block at the start is all reasoning:
/// the model ran out of budget while thinking.
pub fn split_thinking(text: &str) -> (String, Option<String>) {
    let mut answer = String::new();
    let mut reasoning: Vec<String> = Vec::new();
    let mut rest = text;
    loop {
        let Some((open, tag_len, close)) = find_open(rest) else {
            answer.push_str(rest);
            break;
        };
        answer.push_str(&rest[..open]);
        let body = &rest[open + tag_len..];
        match body.find(close) {
            Some(end) => {
                reasoning.push(body[..end].trim().to_string());
                rest = &body[end + close.len()..];
            }
            None => {
                reasoning.push(body.trim().to_string());
                break;
            }
        }
    }
    let reasoning = (!reasoning.is_empty()).then(|| reasoning.join("\n\n"));
    (answer.trim().to_string(), reasoning)
}

fn find_open(text: &str) -> Option<(usize, usize, &'static str)> {
    [("<think>", "</think>"), ("<thinking>", "</thinking>")]
        .iter()
        .filter_map(|(open, close)| text.find(open).map(|i| (i, open.len(), *close)))
        .min_by_key(|(i, _, _)| *i)
}

/// Bytes as text, replacing invalid UTF-8 rather than losing the attempt.
pub fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The last non-empty line of a text, for one-line error messages.
pub fn last_line(text: &str) -> Option<&str> {
    text.lines().rev().map(str::trim).find(|l| !l.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_reasoning() {
        let (a, r) = split_thinking("<think>\nhmm, cats\n</think>\n\nWhy did the cat…");
        assert_eq!(a, "Why did the cat…");
        assert_eq!(r.as_deref(), Some("hmm, cats"));
    }

    #[test]
    fn unclosed_thinking_leaves_no_answer() {
        let (a, r) = split_thinking("<think>still thinking when the budget ran out");
        assert_eq!(a, "");
        assert!(r.is_some());
    }

    #[test]
    fn plain_text_is_all_answer() {
        assert_eq!(split_thinking(" hi ").0, "hi");
    }
}
