//! The `casework` command line.
//!
//! Exit codes shared by the commands: 0 success, 1 the command ran and found failures
//! (invalid workflows, a failed test, an API error), 2 it could not run (a missing path,
//! a filter that matches nothing). clap's own usage errors exit 2 as well.

pub mod backup;
pub mod bench;
pub mod client;
pub mod graph;
pub mod remote;
pub mod report;
pub mod run;
pub mod serve;
pub mod test;

use clap::{CommandFactory, Parser, Subcommand};
use std::path::PathBuf;

/// Exit code of a command that could not run: bad usage, a path that does not exist.
pub const EXIT_CANNOT_RUN: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "casework",
    version,
    about = "A durable workflow engine for customer-support operations"
)]
pub struct Cli {
    /// When to use colors in help, errors and logs.
    #[arg(long, global = true, value_enum, default_value_t = clap::ColorChoice::Auto)]
    pub color: clap::ColorChoice,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parse the process arguments, with `--color` applied to clap's own help and errors
    /// (which are printed while parsing, before the flag's parsed value exists).
    pub fn parse_with_color() -> Cli {
        use clap::FromArgMatches;
        let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
        let matches = Cli::command()
            .color(color_in(&args))
            .get_matches_from(&args);
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

/// The `--color` value among raw arguments (before `--`); `auto` if absent or invalid
/// (clap then reports an invalid one).
fn color_in(args: &[std::ffi::OsString]) -> clap::ColorChoice {
    use clap::ValueEnum;
    let mut it = args.iter().skip(1).map(|a| a.to_string_lossy());
    while let Some(a) = it.next() {
        if a == "--" {
            break;
        }
        let value = match a.strip_prefix("--color") {
            Some("") => it.next().map(|v| v.to_string()),
            Some(rest) => rest.strip_prefix('=').map(str::to_string),
            None => None,
        };
        if let Some(v) = value {
            return clap::ColorChoice::from_str(&v, false).unwrap_or_default();
        }
    }
    clap::ColorChoice::Auto
}

/// The files `casework schema` describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SchemaOf {
    Workflow,
    Test,
    Calendar,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check workflow files and print every problem as file:line:col (exit 1 if any, 2 if a path is missing).
    Validate {
        /// Workflow files, test files or folders holding them (default: workflows/).
        paths: Vec<PathBuf>,
        /// Plugin folder whose manifests name the valid `call:` targets; checks are
        /// skipped when it does not exist.
        #[arg(long, env = "CASEWORK_PLUGINS", default_value = "plugins")]
        plugins: PathBuf,
    },
    /// Run one instance on a temporary store with a virtual clock, printing each step.
    Run(run::RunArgs),
    /// Run the daemon: load workflows, serve the HTTP API, resume instances after a restart.
    // Boxed: its flags make it far larger than the other commands.
    Serve(Box<serve::ServeArgs>),
    /// List a running daemon's instances (GET /v1/instances), filtered by workflow, status,
    /// start time and the workflow's search attributes (--where ticket_id=T-1).
    List(remote::ListArgs),
    /// Cancel an instance on a running daemon: its compensations run, then it ends cancelled.
    Cancel(remote::CancelArgs),
    /// Retry a failed instance on a running daemon: the step that failed runs again.
    Retry(remote::RetryArgs),
    /// Send an event to a running daemon: it wakes the instances waiting for TYPE and KEY and
    /// starts the workflows whose triggers match.
    SendEvent(remote::SendEventArgs),
    /// Pause an instance on a running daemon: no step begins, no timer fires and no event
    /// is taken until it is resumed (journaled with the reason).
    Pause(remote::HoldArgs),
    /// Resume a paused instance on a running daemon.
    Resume(remote::HoldArgs),
    /// Retry, cancel, pause or resume every instance of a workflow (with a status, start
    /// time or search attributes) on a running daemon, bounded by --limit, printing what
    /// was done and what was refused.
    Bulk(remote::BulkArgs),
    /// Run an ended instance again from a step, as a new instance with its input and its
    /// variables (with --set changes), linked to the old one in both journals.
    Rerun(remote::RerunArgs),
    /// Move a workflow's waiting instances on a running daemon to its newest version, at
    /// the waits that version's `migrate:` rules name (--dry-run lists who would move and
    /// why the others stay). Journaled with the reason and the token's name.
    Migrate(remote::MigrateArgs),
    /// Events a running daemon keeps because nothing waited for them yet: list, purge.
    #[command(subcommand)]
    Inbox(remote::InboxCommand),
    /// Write a consistent snapshot of a running daemon's store to a file (sled; admin token).
    Backup(backup::BackupArgs),
    /// Restore a backup into a new data directory (the daemon stopped).
    Restore(backup::RestoreArgs),
    /// Show an instance: status, current steps, variables (sensitive values redacted), journal.
    Inspect {
        /// The instance id (from `casework list` or the API's answer to a start).
        id: String,
        /// Data directory of the daemon.
        #[arg(long, default_value = "data")]
        data: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// File holding the journal key (default: CASEWORK_JOURNAL_KEY, else DATA/journal.key).
        #[arg(long, env = "CASEWORK_JOURNAL_KEY_FILE")]
        journal_key_file: Option<PathBuf>,
        /// Read a PostgreSQL store (postgres://USER@HOST:PORT/DB) instead of the data
        /// directory; needs the daemons' journal key.
        #[arg(long, env = "CASEWORK_STORE", value_name = "URL")]
        store: Option<String>,
        // The daemon to ask when it holds the data directory.
        #[command(flatten)]
        daemon: client::DaemonArgs,
    },
    /// Run workflow tests (`*.test.yaml`) on a virtual clock: ok/FAIL per test, exit 1 if one failed, 2 if they could not run.
    Test(test::TestArgs),
    /// Support metrics per workflow: outcomes, first response and resolution times, SLA attainment, surveys.
    Report(report::ReportArgs),
    /// Print a Mermaid flowchart of a workflow.
    Graph {
        /// The workflow file.
        file: PathBuf,
    },
    /// Print the JSON Schema of workflow, test or calendar files (for editor autocompletion).
    Schema {
        /// Which files: workflow (the default), test (`*.test.yaml`) or calendar.
        #[arg(value_enum, default_value_t = SchemaOf::Workflow)]
        of: SchemaOf,
    },
    /// Measure throughput, latency, memory and restart time (see README).
    Bench(bench::BenchArgs),
    /// Print a shell completion script (e.g. `casework completions bash > /etc/bash_completion.d/casework`).
    Completions {
        /// The shell to complete in.
        shell: clap_complete::Shell,
    },
    /// Print the manual page in roff (e.g. `casework man | man -l -`).
    Man,
}

/// Run a parsed command; returns the process exit code.
pub async fn execute(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Validate { paths, plugins } => validate(paths, &plugins),
        Command::Run(args) => Ok(run::run(args).await? as u8),
        Command::Serve(mut args) => {
            args.color = cli.color;
            serve::serve(*args).await.map(|_| 0)
        }
        Command::Test(args) => match args.record.clone() {
            Some(id) => tokio::task::spawn_blocking(move || test::record(&args, &id)).await?,
            None => test::test(args).await,
        },
        Command::Report(args) => report::report(args),
        Command::List(args) => remote::list(args),
        Command::Cancel(args) => remote::cancel(args),
        Command::Retry(args) => remote::retry(args),
        Command::Migrate(args) => remote::migrate(args),
        Command::Rerun(args) => remote::rerun(args),
        Command::SendEvent(args) => remote::send_event(args),
        Command::Inbox(command) => remote::inbox(command),
        Command::Backup(args) => backup::backup(args),
        Command::Restore(args) => backup::restore(args),
        Command::Bulk(args) => remote::bulk(args),
        Command::Pause(args) => remote::hold(args, true),
        Command::Resume(args) => remote::hold(args, false),
        Command::Inspect {
            id,
            data,
            json,
            journal_key_file,
            store,
            daemon,
        } => {
            let source = StoreSource {
                url: store.as_deref(),
                data: &data,
                key_file: journal_key_file.as_deref(),
            };
            inspect(&id, &source, &daemon, json).await
        }
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "casework", &mut std::io::stdout());
            Ok(0)
        }
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut page)?;
            use std::io::Write;
            let _ = std::io::stdout().write_all(&page);
            Ok(0)
        }
        Command::Graph { file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let (def, diags) = crate::definition::read(&file.display().to_string(), &text);
            for d in &diags {
                eprintln!("{d}");
            }
            let def = def.ok_or_else(|| {
                anyhow::anyhow!(
                    "{} has errors; run `casework validate {}`",
                    file.display(),
                    file.display()
                )
            })?;
            print!("{}", graph::mermaid(&def));
            Ok(0)
        }
        Command::Schema { of } => {
            let schema = match of {
                SchemaOf::Workflow => crate::definition::schema::workflow_schema(),
                SchemaOf::Test => crate::testing::schema::test_schema(),
                SchemaOf::Calendar => crate::calendar::schema::calendar_schema(),
            };
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(0)
        }
        Command::Bench(args) => bench::bench(args).await.map(|_| 0),
    }
}

fn validate(paths: Vec<PathBuf>, plugins: &std::path::Path) -> anyhow::Result<u8> {
    let paths = if paths.is_empty() {
        vec![PathBuf::from("workflows")]
    } else {
        paths
    };
    let mut files = Vec::new();
    let mut tests = Vec::new();
    // A path that cannot be read is a usage error (exit 2, as in `casework test`); problems
    // found in files that were read are findings (exit 1).
    for p in &paths {
        if p.is_dir() {
            match crate::daemon::registry::workflow_files(p) {
                Ok(found) => files.extend(found),
                Err(e) => {
                    eprintln!("casework: cannot read {}: {e}", p.display());
                    return Ok(EXIT_CANNOT_RUN);
                }
            }
            tests.extend(crate::testing::test_files(p).unwrap_or_default());
        } else if p.is_file() && crate::testing::is_test_file(p) {
            tests.push(p.clone());
        } else if p.is_file() {
            files.push(p.clone());
        } else {
            eprintln!("casework: {} does not exist", p.display());
            return Ok(EXIT_CANNOT_RUN);
        }
    }
    let catalog = plugins.is_dir().then(|| {
        let found = crate::plugin_host::directory::PluginDirectory::scan(plugins);
        for problem in &found.problems {
            eprintln!("casework: warning: {problem}");
        }
        found.catalog()
    });
    let (ok, diags) = crate::daemon::registry::load_files(
        &files,
        catalog,
        &crate::compile::rules::Rules::shared(),
    );
    for d in &diags {
        println!("{d}");
    }
    let test_diags = test::check_test_files(&tests);
    for d in &test_diags {
        println!("{d}");
    }
    let errors = diags
        .iter()
        .chain(&test_diags)
        .filter(|d| d.is_error())
        .count();
    if errors > 0 {
        eprintln!(
            "casework: {errors} error(s) in {} file(s)",
            files.len() + tests.len()
        );
        return Ok(1);
    }
    let calendars = crate::compile::rules::Rules::shared().calendars().len();
    eprintln!(
        "casework: {} workflow(s) and {calendars} calendar(s) valid",
        ok.len()
    );
    Ok(0)
}

/// Where `inspect` and `report` read instances: a PostgreSQL store, or a data directory.
pub struct StoreSource<'a> {
    pub url: Option<&'a str>,
    pub data: &'a std::path::Path,
    pub key_file: Option<&'a std::path::Path>,
}

impl StoreSource<'_> {
    /// Open the store for reading. On sled, `Err(Locked)` means a daemon holds the data
    /// directory (ask it over HTTP instead); PostgreSQL is shared, so it opens beside the
    /// daemons.
    pub fn open(&self) -> Result<std::sync::Arc<dyn crate::store::Store>, crate::store::Error> {
        let key = crate::store::seal::KeySource::from_env(self.key_file)
            .map_err(|e| crate::store::Error::Key(e.to_string()))?;
        Ok(match self.url {
            Some(url) => std::sync::Arc::new(crate::store::postgres::PgStore::open(url, key)?),
            None => std::sync::Arc::new(crate::store::sled::SledStore::open_with(self.data, key)?),
        })
    }

    /// The store, for messages (never a password).
    pub fn describe(&self) -> String {
        match self.url {
            Some(url) => crate::store::postgres::redact_url(url),
            None => self.data.display().to_string(),
        }
    }
}

/// The data directory is held by a daemon: ask it instead. A daemon that does not answer
/// is reported with the reason it was asked.
pub fn ask_daemon(
    daemon: &client::DaemonArgs,
    source: &StoreSource<'_>,
    segments: &[&str],
    query: &[(&str, &str)],
) -> anyhow::Result<serde_json::Value> {
    let c = client::Client::new(daemon)?;
    c.get(segments, query).map_err(|e| match e {
        client::Error::Unreachable { .. } => anyhow::anyhow!(
            "the data directory {} is in use (a daemon holds it), so casework asked the daemon: {e}",
            source.describe()
        ),
        other => other.into(),
    })
}

/// An instance's redacted view (as `GET /v1/instances/{id}` gives it), read from the
/// store, or from the daemon that holds the data directory.
pub fn instance_view_json(
    id: &str,
    source: &StoreSource<'_>,
    daemon: &client::DaemonArgs,
) -> anyhow::Result<serde_json::Value> {
    Ok(match source.open() {
        Ok(store) => {
            let meta = store
                .instance(id)?
                .ok_or_else(|| anyhow::anyhow!("no instance `{id}` in {}", source.describe()))?;
            let registry = crate::daemon::registry::Registry::default();
            let journal = store.journal(id)?;
            let (inst, wf) = registry
                .replay_journal(
                    store.as_ref(),
                    &meta,
                    &journal,
                    &crate::compile::rules::Rules::shared(),
                )
                .map_err(|e| anyhow::anyhow!(e))?;
            serde_json::to_value(crate::daemon::view::instance_view(
                id,
                &meta.status,
                &inst,
                &wf,
                &journal,
            ))?
        }
        Err(crate::store::Error::Locked { .. }) => {
            ask_daemon(daemon, source, &["v1", "instances", id], &[])?
        }
        Err(e) => return Err(e.into()),
    })
}

async fn inspect(
    id: &str,
    source: &StoreSource<'_>,
    daemon: &client::DaemonArgs,
    as_json: bool,
) -> anyhow::Result<u8> {
    let view = instance_view_json(id, source, daemon)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(0);
    }
    println!(
        "instance {}  workflow {} v{}  status {}",
        view["id"].as_str().unwrap_or(""),
        view["workflow"].as_str().unwrap_or(""),
        view["version"],
        view["status"].as_str().unwrap_or("")
    );
    if let Some(cur) = view["current"].as_array().filter(|c| !c.is_empty()) {
        let steps: Vec<String> = cur
            .iter()
            .map(|c| {
                format!(
                    "{} ({})",
                    c["step"].as_str().unwrap_or(""),
                    c["doing"].as_str().unwrap_or("")
                )
            })
            .collect();
        println!("current: {}", steps.join(", "));
    }
    println!("input: {}", view["input"]);
    println!("vars: {}", serde_json::to_string_pretty(&view["vars"])?);
    if !view["error"].is_null() {
        println!("error: {}", view["error"]);
    }
    println!("journal:");
    for r in view["journal"].as_array().into_iter().flatten() {
        match crate::daemon::view::record_of_entry(r) {
            Some(rec) => println!("  {}", run::describe(id, &rec)),
            None => println!("  {r}"),
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every positional argument of every command says what it is, in `--help`, the man
    /// page and completions.
    #[test]
    fn every_positional_argument_is_described() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_positionals() {
                if a.get_help().is_none_or(|h| h.to_string().trim().is_empty()) {
                    missing.push(format!("{path} <{}>", a.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "casework", &mut missing);
        assert!(missing.is_empty(), "no description: {missing:?}");
    }

    #[test]
    fn color_is_found_before_parsing_in_either_spelling() {
        let args = |a: &[&str]| -> Vec<std::ffi::OsString> {
            a.iter().map(std::ffi::OsString::from).collect()
        };
        use clap::ColorChoice::*;
        assert_eq!(color_in(&args(&["casework", "list"])), Auto);
        assert_eq!(
            color_in(&args(&["casework", "--color", "never", "list"])),
            Never
        );
        assert_eq!(
            color_in(&args(&["casework", "list", "--color=always"])),
            Always
        );
        assert_eq!(
            color_in(&args(&["casework", "run", "--", "--color=always"])),
            Auto
        );
        assert_eq!(color_in(&args(&["casework", "--color=pink"])), Auto);
    }

    #[test]
    fn the_client_commands_share_url_and_token_and_addr_still_works() {
        let cli = Cli::try_parse_from([
            "casework",
            "inspect",
            "abc",
            "--addr",
            "127.0.0.1:9",
            "--token",
            "t0ken",
        ])
        .unwrap();
        let Command::Inspect { daemon, .. } = cli.command else {
            panic!("not inspect")
        };
        assert_eq!(daemon.url, "127.0.0.1:9");
        assert_eq!(daemon.token.as_deref(), Some("t0ken"));
        for sub in [
            "list",
            "cancel",
            "retry",
            "send-event",
            "inspect",
            "report",
            "migrate",
            "rerun",
        ] {
            let cmd = Cli::command();
            let sub = cmd.find_subcommand(sub).unwrap();
            let names: Vec<_> = sub.get_arguments().filter_map(|a| a.get_long()).collect();
            assert!(
                names.contains(&"url") && names.contains(&"token"),
                "{}: {names:?}",
                sub.get_name()
            );
        }
    }
}
