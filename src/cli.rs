//! The command line: global flags and one subcommand per job. Parsing only; each command's
//! file turns its arguments into work.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

use crate::domain::Outcome;
use crate::util::duration_arg;

const EXIT_CODES: &str = "\
Exit codes:
  0    all requested work done
  1    operational error (database, I/O, an endpoint unreachable or throttling past
       --unavailable-limit, an exhausted API quota)
  2    usage or bad input (bad flag, malformed input line, unknown job id, missing database)
  3    some jobs ended failed
  129  interrupted by SIGHUP, e.g. a closed terminal (not under nohup)
  130  interrupted by SIGINT (jobs in flight went back to pending)
  143  interrupted by SIGTERM (jobs in flight went back to pending)

Environment: LLMBATCH_DB (database path), OLLAMA_HOST (default Ollama endpoint), RUST_LOG,
LLMBATCH_BUSY_TIMEOUT (how long a write waits for another writer, default 30s).";

#[derive(Parser, Debug)]
#[command(
    name = "llmbatch",
    version,
    about = "Run batches of LLM prompts against several models, from cron and shell pipelines",
    long_about = "Run batches of LLM prompts against several models — Ollama, any OpenAI-compatible \
server, or any command reading a prompt on stdin — with hard per-model timeouts, automatic \
retries, crash recovery and every attempt on record in one SQLite file (or one PostgreSQL \
database shared by several hosts).",
    after_help = EXIT_CODES,
    after_long_help = EXIT_CODES
)]
pub struct Cli {
    /// The database file (the only state), or a postgres:// URL: one queue for several hosts.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "PATH|URL",
        env = "LLMBATCH_DB",
        // The value may be a URL with a password: never shown in --help.
        hide_env_values = true,
        default_value = "llmbatch.db"
    )]
    pub db: PathBuf,
    /// More log output (-vv for debug).
    #[arg(short, long, global = true, help_heading = "Global options", action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr; no progress bars or summaries.
    #[arg(short, long, global = true, help_heading = "Global options")]
    pub quiet: bool,
    /// Also append log lines to this file.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        help_heading = "Global options"
    )]
    pub log_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Set or list per-model settings (backend, command or endpoints, timeout, concurrency).
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Read prompts (CSV, TSV, JSONL or an OpenAI Batch API file; file or stdin) × models
    /// into jobs; idempotent.
    #[command(after_help = "Examples:
  llmbatch enqueue --model qwen2.5:7b --model llama3.2 prompts.csv
  llmbatch enqueue --model echo --template joke.txt --batch jokes topics.jsonl
  cat prompts.jsonl | llmbatch enqueue --model m --input-format jsonl -
  llmbatch enqueue --model m new.csv --format ids | llmbatch run --ids-file -
  llmbatch enqueue requests.jsonl            # an OpenAI Batch API file: each line names its model

Formats:
  csv, tsv, jsonl  one item per record: `id` (default: the record number), and `prompt`, or
                   `messages` (a JSON array of {role, content}, sent as chat), or the fields
                   a --template uses; for a messages item the template fills the last user
                   message.
  openai-batch     {\"custom_id\", \"method\": \"POST\", \"url\": \"/v1/chat/completions\",
                   \"body\"} per line: custom_id is the item id, body.model the job's model,
                   body.messages the chat, every other body field (max_tokens, temperature,
                   seed, response_format, …) a request option over the model's; url
                   /v1/completions takes body.prompt. Results: export --format openai-batch.

An input with no records exits 2. An item already queued (same batch and id) never changes:
one with a different prompt or field exits 2; enqueue changed input under another --batch.")]
    Enqueue(EnqueueArgs),
    /// Claim jobs and run each attempt as a killable child process with a hard timeout.
    #[command(after_help = "Examples:
  llmbatch run                          # everything pending, then exit
  llmbatch run --model qwen2.5:7b --jobs 4
  llmbatch run --max-runtime 9m         # a cron tick that never overlaps the next
  llmbatch run --batch sweep --max-cost 5   # stop claiming once the batch has cost $5
  llmbatch report jobs --state pending --batch jokes --format ids | llmbatch run --ids-file -

Exit codes: 0 all done, 1 operational error, 2 bad input, 3 some jobs failed, 130/143 interrupted.")]
    Run(RunArgs),
    /// Return jobs whose runner died (process gone; or, for a runner on another host or one
    /// stopped by a signal, lease expired) to the queue, or fail them.
    #[command(after_help = "Example:\n  llmbatch reap --dry-run

A running runner on this host keeps its jobs even past its lease. A lost attempt is not charged
to the job's budget; a job lost more times than its budget fails.")]
    Reap(ReapArgs),
    /// Put failed or cancelled jobs back in the queue with a fresh attempt budget.
    #[command(after_help = "Examples:
  llmbatch resume --model qwen3:4b --outcome timeout
  llmbatch report jobs --state failed --outcome timeout --format ids | llmbatch resume --ids-file -")]
    Resume(ResumeArgs),
    /// Queue grading jobs: grader models score each output against a rubric.
    #[command(after_help = "Examples:
  llmbatch grade --grader qwen2.5:7b --rubric joke
  llmbatch grade --grader judge-a --grader judge-b --rubric summary.txt --batch news

--batch, --model (the graded model) and --ids-file choose the outputs to grade; grading again
only adds what is missing. Grade jobs run with `llmbatch run`.")]
    Grade(GradeArgs),
    /// Status, latency, failures, the leaderboard, timeouts, grades, runners, cost; or one HTML page.
    #[command(after_help = "Examples:
  llmbatch report                       # status, latency, failures, the leaderboard
  llmbatch report latency --by batch,model --since 24h
  llmbatch report latency --breakdown --model qwen3:4b   # load / prompt / generation / overhead
  llmbatch report timeouts throughput --format json
  llmbatch report jobs --state failed --format ids
  llmbatch report models --since 24h    # the leaderboard: which model is best, and why
  llmbatch report cost --by batch       # tokens and USD per batch and model
  llmbatch report --format html > /srv/www/night.html   # one page, charts, works offline

Streamed HTTP attempts also give, in `latency` (vLLM's definitions):
  ttft          request sent → first chunk carrying generated text (answer or reasoning)
  tpot          (e2e − ttft) / (output tokens − 1); never includes the first token
                (llmperf's inter-token latency does; guidellm swaps the names)
  tokens_per_s  output tokens (server usage / eval_count) / e2e, mean per attempt
`timeouts` advises a --stall-timeout from the longest silences between chunks.")]
    Report(ReportArgs),
    /// Outputs and grades as JSONL, CSV, a GNU parallel joblog or a Batch API output file.
    #[command(after_help = "Examples:
  llmbatch export --batch jokes --with-grades > jokes.jsonl
  llmbatch export --format joblog > joblog.tsv
  llmbatch export --batch requests --format openai-batch > results.jsonl

openai-batch writes what the OpenAI Batch API returns, one line per done or failed job:
  {\"id\": \"llmbatch-42\", \"custom_id\": ITEM, \"response\": {\"status_code\": 200,
   \"request_id\": \"llmbatch-attempt-57\", \"body\": {chat.completion}}, \"error\": null}
A failed job has error: {code: its last outcome, message}, and a response only when the server
answered with an HTTP status. `created` is the attempt's finish time; jobs not finished yet are
left out (their count goes to stderr).")]
    Export(ExportArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_help = "Install (pick your shell):
  llmbatch completions bash > ~/.local/share/bash-completion/completions/llmbatch
  llmbatch completions zsh > ~/.zfunc/_llmbatch     # with fpath+=(~/.zfunc) before compinit
  llmbatch completions fish > ~/.config/fish/completions/llmbatch.fish")]
    Completions(CompletionsArgs),
    /// Print the man page (roff), or write one page per subcommand with --out-dir.
    #[command(after_help = "Install:
  llmbatch man --out-dir ~/.local/share/man/man1   # llmbatch.1, llmbatch-enqueue.1, ...
  man llmbatch-enqueue
  llmbatch man | man -l -                          # read it without installing")]
    Man(ManArgs),
    /// One HTTP call for an attempt: request JSON on stdin, result JSON on stdout (internal).
    #[command(hide = true)]
    Worker,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Write llmbatch.1 and llmbatch-SUBCOMMAND.1 into this directory instead of printing
    /// llmbatch.1.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to write a completion script for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Subcommand, Debug)]
pub enum ModelsCommand {
    /// Create or change a model's settings (unset flags keep their current values).
    #[command(after_help = "Examples:
  llmbatch models set qwen3:4b --timeout 10m --think false --option num_ctx=8192
  llmbatch models set llama3.1:70b --endpoint http://gpu1:11434 \\
      --endpoint http://gpu2:11434 --concurrency 2
  llmbatch models set Qwen/Qwen2.5-7B-Instruct --backend openai \\
      --endpoint http://localhost:8000 --option max_tokens=512
  llmbatch models set gpt-4o-mini --backend openai --endpoint https://api.openai.com/v1 \\
      --api-key-env OPENAI_API_KEY
  llmbatch models set qwen3:32b --timeout 15m --stall-timeout 30s --first-token-timeout 2m
  llmbatch models set echo --backend command --command 'sh -c cat' --timeout 10
  llmbatch models set qwen-t0 --remote-model qwen2.5:7b --option temperature=0
  llmbatch models set qwen-t9 --remote-model qwen2.5:7b --option temperature=0.9
  llmbatch models set gpt-4o-mini --rpm 500 --tpm 200000 --price-in 0.15 --price-out 0.60

A name never configured runs on Ollama at $OLLAMA_HOST (default http://127.0.0.1:11434).")]
    Set(Box<ModelSetArgs>),
    /// List configured models.
    List(FormatArgs),
}

#[derive(Args, Debug)]
pub struct ModelSetArgs {
    /// The name jobs use with --model (for Ollama, the model tag, e.g. qwen2.5:7b).
    pub name: String,
    /// How the model is called (default: ollama; --command alone means command). ollama: POST
    /// {endpoint}/api/generate (/api/chat for chat items); openai: POST {endpoint}/v1/chat/completions; command: run a
    /// command with the prompt on stdin.
    #[arg(long, value_enum)]
    pub backend: Option<crate::models::Backend>,
    /// Command template: split like a shell would, but no shell runs; `{model}` and item
    /// variables are filled per argument; the prompt goes to stdin.
    #[arg(long, value_name = "TEMPLATE")]
    pub command: Option<String>,
    /// Server base URL, e.g. http://gpu1:11434 or https://api.openai.com/v1 (default for
    /// ollama: $OLLAMA_HOST). Repeat for several servers: the lane spreads work over them.
    #[arg(long = "endpoint", value_name = "URL")]
    pub endpoints: Vec<String>,
    /// Seconds (or a duration like 10m) per attempt, or `auto` (2 × p99 of recent successes).
    #[arg(long, value_name = "SECS|auto")]
    pub timeout: Option<String>,
    /// Attempts at once (per endpoint for HTTP models). Default 1. Variants that send one
    /// served model (--remote-model) to one endpoint share their slots there: together they
    /// never have more in flight on it than this.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(1..))]
    pub concurrency: Option<i64>,
    /// Attempt budget per job (retries included). Default 3.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(1..))]
    pub max_attempts: Option<i64>,
    /// Backend option, repeatable: Ollama `options` (num_ctx=8192, num_predict=256,
    /// temperature=0.2); for openai, request body fields (max_tokens=512, temperature=0).
    #[arg(long = "option", value_name = "KEY=VALUE")]
    pub options: Vec<String>,
    /// Ollama keep_alive: how long the model stays loaded after a call, e.g. 10m (-1 = always).
    #[arg(long, value_name = "DUR")]
    pub keep_alive: Option<String>,
    /// Thinking on or off, or a level. Ollama gets `think` explicitly (thinking models think
    /// when it is absent); openai gets chat_template_kwargs.enable_thinking, or
    /// reasoning_effort for a level.
    #[arg(long, value_name = "true|false|low|medium|high")]
    pub think: Option<String>,
    /// System prompt (Ollama `system`; a system message for openai).
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// Make NAME a variant: the backend is sent this model (and `{model}` in a command template
    /// is it), with NAME's own options, think, system prompt and format. Each variant is its
    /// own lane, report row and grade set.
    #[arg(long, value_name = "SERVED")]
    pub remote_model: Option<String>,
    /// Structured output: `json` or a JSON schema (Ollama `format`; openai `response_format`).
    #[arg(long, value_name = "json|SCHEMA")]
    pub format_output: Option<String>,
    /// What a command model reads on stdin: text (the prompt; a chat item's conversation as
    /// `role: content` blocks) or json (the messages as a JSON array of {role, content}, the
    /// model's --system first unless the messages have one).
    #[arg(long, value_enum, value_name = "text|json")]
    pub stdin: Option<crate::models::StdinFormat>,
    /// Name of the environment variable holding the API key, sent as a Bearer token. The key
    /// itself is never stored or logged (one given here instead is refused): set the variable
    /// where `llmbatch run` runs.
    #[arg(long, value_name = "VAR")]
    pub api_key_env: Option<String>,
    /// Requests per minute this runner sends the model, evenly spaced (no burst, also at
    /// start). Each runner paces itself: with several runners, divide the limit. 0 = unpaced.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(0..))]
    pub rpm: Option<i64>,
    /// Tokens per minute, paced like --rpm: each request counts its prompt (about 4 characters
    /// a token) plus its max tokens option, corrected by the usage the server reports. 0 = unpaced.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(0..))]
    pub tpm: Option<i64>,
    /// Price in USD per million input (prompt) tokens, for `report cost` and `run --max-cost`.
    #[arg(long, value_name = "USD", value_parser = price_arg)]
    pub price_in: Option<f64>,
    /// Price in USD per million output tokens.
    #[arg(long, value_name = "USD", value_parser = price_arg)]
    pub price_out: Option<f64>,
    /// Stream the answer (default true): Ollama NDJSON, OpenAI SSE. Streaming gives time to
    /// first token, time per output token and stall detection; `false` asks for one body, for
    /// servers that mishandle streams.
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub stream: Option<bool>,
    /// Once the answer has started streaming, stop an attempt that receives nothing for this
    /// long (e.g. 30s): it ends `stall` (retried, charged) instead of holding its slot until
    /// --timeout. `0` turns it off. See `report timeouts` for advice.
    #[arg(long, value_name = "DUR")]
    pub stall_timeout: Option<String>,
    /// The longest wait for the first bytes of the answer (loading a big model can take a
    /// minute); past it the attempt ends `timeout`. `0` turns it off. --timeout still bounds
    /// the whole attempt.
    #[arg(long, value_name = "DUR")]
    pub first_token_timeout: Option<String>,
}

/// A price or cap in USD: a finite number, zero or more.
pub fn price_arg(text: &str) -> Result<f64, String> {
    match text.trim().trim_start_matches('$').parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!(
            "expected an amount in USD, zero or more (e.g. 0.15), not {text:?}"
        )),
    }
}

#[derive(Args, Debug)]
pub struct EnqueueArgs {
    /// Model to run each prompt on (repeat for several). Required but for openai-batch input,
    /// whose lines name their model (--model then overrides it).
    #[arg(long = "model", value_name = "M")]
    pub models: Vec<String>,
    /// Batch name (default: the input file's stem, `stdin` for -).
    #[arg(long)]
    pub batch: Option<String>,
    /// Prompt template with {column} placeholders (default: the `prompt` field).
    #[arg(long, value_name = "FILE")]
    pub template: Option<PathBuf>,
    /// Input format (default: openai-batch when the first line has custom_id and body; else
    /// from the file extension, .tsv is tab-separated; for stdin or another extension, jsonl
    /// when the input starts with `{`, else csv).
    #[arg(long, value_enum)]
    pub input_format: Option<InputFormat>,
    /// Samples per prompt and model: N jobs numbered 1..N (`{repeat}`, LLMBATCH_REPEAT). A
    /// larger N later adds only the missing repeats.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(i64).range(1..=10000))]
    pub repeat: i64,
    #[command(flatten)]
    pub format: FormatArgs,
    /// CSV, TSV or JSONL file, or - for stdin.
    pub input: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InputFormat {
    /// Comma-separated with a header row; `id`, `prompt` or `messages` columns.
    Csv,
    /// Tab-separated with a header row (the default for .tsv files).
    Tsv,
    /// One JSON object per line; `id`, `prompt` or `messages` fields.
    Jsonl,
    /// The OpenAI Batch API's input file: {custom_id, method, url, body} per line.
    OpenaiBatch,
}

impl InputFormat {
    /// What a record looks like, for error messages.
    pub fn expected(self) -> &'static str {
        match self {
            InputFormat::Csv => "a header row such as id,prompt, then one row per prompt",
            InputFormat::Tsv => {
                "a tab-separated header row such as id<TAB>prompt, then one row per prompt"
            }
            InputFormat::Jsonl => {
                "one JSON object per line, such as {\"id\": 1, \"prompt\": \"...\"}"
            }
            InputFormat::OpenaiBatch => {
                "one Batch API request per line: {\"custom_id\", \"method\", \"url\", \"body\"}"
            }
        }
    }
}

#[derive(Args, Debug, Clone, Default)]
pub struct ScopeArgs {
    /// Only jobs of this batch.
    #[arg(long)]
    pub batch: Option<String>,
    /// Only jobs of this model (repeatable).
    #[arg(long = "model", value_name = "M")]
    pub models: Vec<String>,
    /// Only these job ids: one per line (# comments allowed), or CSV with the id in the first
    /// column (header `id` or `job_id` allowed, e.g. from export --format csv); - = stdin.
    #[arg(long, value_name = "FILE|-")]
    pub ids_file: Option<String>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// Attempts at once over all models (default: each model's concurrency, at most 64 in all).
    #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub jobs: Option<u64>,
    /// Claim at most N jobs, then finish.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Lease on each running job, renewed by a heartbeat every third of it.
    #[arg(long, value_parser = duration_arg, default_value = "30s", value_name = "DUR")]
    pub lease: Duration,
    /// Time between SIGTERM and SIGKILL when an attempt is killed.
    #[arg(long, value_parser = duration_arg, default_value = "5s", value_name = "DUR")]
    pub kill_grace: Duration,
    /// First retry delay; doubles per attempt, with jitter.
    #[arg(long, value_parser = duration_arg, default_value = "2s", value_name = "DUR")]
    pub retry_base: Duration,
    /// Stop claiming after this long, let attempts in flight finish, exit 0.
    #[arg(long, value_parser = duration_arg, value_name = "DUR")]
    pub max_runtime: Option<Duration>,
    /// Stop claiming after N failed attempts (or P% of attempts), finish, exit 3.
    #[arg(long, value_name = "N|P%")]
    pub max_failures: Option<String>,
    /// Stop a model's lane when all its endpoints stay unreachable this long (jobs stay pending).
    #[arg(long, value_parser = duration_arg, default_value = "2m", value_name = "DUR")]
    pub unavailable_limit: Duration,
    /// Answer a job from an earlier `done` attempt of the identical request (same backend,
    /// served model, answer-changing settings, prompt and repeat), from any batch, without
    /// calling the model. Recorded as outcome `cached`.
    #[arg(long)]
    pub cache: bool,
    /// Stop claiming once the recorded cost of this run's scope (--batch / --model, counted
    /// over all runs, so cron ticks share one budget) reaches USD; attempts in flight finish,
    /// the rest stay pending, exit 0. Needs prices (`models set --price-in/--price-out`).
    #[arg(long, value_name = "USD", value_parser = price_arg)]
    pub max_cost: Option<f64>,
    /// Keep polling for new work instead of exiting (for a daemon).
    #[arg(long)]
    pub watch: bool,
    /// Polling interval with --watch.
    #[arg(long, value_parser = duration_arg, default_value = "5s", value_name = "DUR")]
    pub poll: Duration,
}

#[derive(Args, Debug)]
pub struct ReapArgs {
    /// Only list what would be reaped.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub format: FormatArgs,
}

#[derive(Args, Debug)]
pub struct ResumeArgs {
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// Only jobs whose last attempt ended so.
    #[arg(long, value_enum)]
    pub outcome: Option<OutcomeArg>,
    /// Attempts granted to each job (default: a fresh budget, the model's max attempts).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(1..))]
    pub extra_attempts: Option<i64>,
    /// Only say what would be resumed.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub format: FormatArgs,
}

#[derive(Args, Debug)]
pub struct GradeArgs {
    /// Grader model (repeat for several).
    #[arg(long = "grader", value_name = "M", required = true)]
    pub graders: Vec<String>,
    /// Rubric template file, or a built-in name (joke).
    #[arg(long, default_value = "joke", value_name = "FILE|joke")]
    pub rubric: String,
    #[command(flatten)]
    pub scope: ScopeArgs,
    #[command(flatten)]
    pub format: FormatArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Section {
    Status,
    Latency,
    Failures,
    Jobs,
    Runners,
    Timeouts,
    Throughput,
    Grades,
    /// The leaderboard: one row per model, best first.
    Models,
    /// Agreement across the repeats of one prompt (`enqueue --repeat`), per model and grader:
    /// all passed, all agreed, pass@k, score mean and spread.
    Consistency,
    /// Tokens and USD per model (and --by batch), from the models' prices.
    Cost,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Sections to show (default: status latency failures models, and cost once a model has prices).
    #[arg(value_enum)]
    pub sections: Vec<Section>,
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// Only this window, e.g. 24h, 7d: attempts started in it (latency, failures, timeouts
    /// seen), jobs done in it (throughput, default 1h), jobs enqueued in it (status), changed
    /// in it (jobs), runners active in it (runners).
    #[arg(long, value_parser = duration_arg, value_name = "DUR")]
    pub since: Option<Duration>,
    /// Group latency and failures by these, e.g. batch,model or endpoint.
    #[arg(long, value_delimiter = ',', value_enum, value_name = "KEYS")]
    pub by: Vec<GroupKey>,
    /// `jobs`: only jobs in this state.
    #[arg(long, value_name = "pending|running|done|failed|cancelled")]
    pub state: Option<String>,
    /// `jobs`: only jobs whose last attempt ended so.
    #[arg(long, value_enum)]
    pub outcome: Option<OutcomeArg>,
    /// `latency`: where the time went (load, prompt, generation, overhead), cold and warm apart.
    #[arg(long)]
    pub breakdown: bool,
    /// table for people; csv or json for pipes; ids for `jobs` (one job id per line); html
    /// for one self-contained page with charts of every section (sections are ignored).
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GroupKey {
    Batch,
    Model,
    Endpoint,
}

/// An attempt's outcome as a flag value: the domain's [`Outcome`], named and explained here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutcomeArg(pub Outcome);

impl clap::ValueEnum for OutcomeArg {
    fn value_variants<'a>() -> &'a [Self] {
        const ALL: [OutcomeArg; Outcome::ALL.len()] = {
            let mut all = [OutcomeArg(Outcome::Ok); Outcome::ALL.len()];
            let mut i = 0;
            while i < all.len() {
                all[i] = OutcomeArg(Outcome::ALL[i]);
                i += 1;
            }
            all
        };
        &ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.0.as_str()).help(self.0.about()))
    }
}

impl From<GroupKey> for crate::db::GroupKey {
    fn from(k: GroupKey) -> Self {
        match k {
            GroupKey::Batch => crate::db::GroupKey::Batch,
            GroupKey::Model => crate::db::GroupKey::Model,
            GroupKey::Endpoint => crate::db::GroupKey::Endpoint,
        }
    }
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// jsonl or csv: one record per output; joblog: GNU parallel's joblog, one row per attempt;
    /// openai-batch: the OpenAI Batch API's output file, one line per finished job.
    #[arg(long, value_enum, default_value = "jsonl")]
    pub format: ExportFormat,
    /// Include each output's grades.
    #[arg(long)]
    pub with_grades: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Jsonl,
    Csv,
    Joblog,
    /// The OpenAI Batch API's output: `id`, `custom_id` (the item id), `response`, `error`.
    OpenaiBatch,
}

/// Output formats: the renderer's own, a flag value here.
pub use crate::report::render::Format;

#[derive(Args, Debug, Clone, Copy)]
pub struct FormatArgs {
    /// table for people; csv or json for pipes (ids where the output lists jobs).
    #[arg(long, value_parser = plain_format, default_value = "table")]
    pub format: Format,
}

/// Every format but html, which only `report` writes.
fn plain_format(text: &str) -> Result<Format, String> {
    match Format::from_str(text, true)? {
        Format::Html => Err("html is for `llmbatch report` only".to_string()),
        f => Ok(f),
    }
}
