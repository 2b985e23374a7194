//! The `casework` command line.

pub mod bench;
pub mod graph;
pub mod report;
pub mod run;
pub mod serve;
pub mod test;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "casework",
    version,
    about = "A durable workflow engine for customer-support operations"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check workflow files and print every problem as file:line:col.
    Validate {
        /// Files or directories (default: workflows/).
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
    /// Show an instance: status, current steps, variables (sensitive values redacted), journal.
    Inspect {
        id: String,
        /// Data directory of the daemon.
        #[arg(long, default_value = "data")]
        data: PathBuf,
        /// Where a running daemon listens (used when the data directory is in use).
        #[arg(long, default_value = serve::DEFAULT_LISTEN)]
        addr: String,
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
    },
    /// Run workflow tests (`*.test.yaml`) on a virtual clock: ok/FAIL per test, exit 1 if one failed.
    Test(test::TestArgs),
    /// Support metrics per workflow: outcomes, first response and resolution times, SLA attainment, surveys.
    Report(report::ReportArgs),
    /// Print a Mermaid flowchart of a workflow.
    Graph { file: PathBuf },
    /// Print the JSON Schema of workflow files (for editor autocompletion).
    Schema,
    /// Measure throughput, latency, memory and restart time (see README).
    Bench(bench::BenchArgs),
}

/// Run a parsed command; returns the process exit code.
pub async fn execute(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Validate { paths, plugins } => validate(paths, &plugins),
        Command::Run(args) => Ok(run::run(args).await? as u8),
        Command::Serve(args) => serve::serve(*args).await.map(|_| 0),
        Command::Test(args) => test::test(args).await,
        Command::Report(args) => report::report(args),
        Command::Inspect {
            id,
            data,
            addr,
            json,
            journal_key_file,
            store,
        } => {
            let source = StoreSource {
                url: store.as_deref(),
                data: &data,
                key_file: journal_key_file.as_deref(),
            };
            inspect(&id, &source, &addr, json).await
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
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&crate::definition::schema::workflow_schema())?
            );
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
    for p in &paths {
        if p.is_dir() {
            files.extend(
                crate::daemon::registry::workflow_files(p)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?,
            );
            tests.extend(crate::testing::test_files(p).unwrap_or_default());
        } else if p.is_file() && crate::testing::is_test_file(p) {
            tests.push(p.clone());
        } else if p.is_file() {
            files.push(p.clone());
        } else {
            anyhow::bail!("{} does not exist", p.display());
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

async fn inspect(
    id: &str,
    source: &StoreSource<'_>,
    addr: &str,
    as_json: bool,
) -> anyhow::Result<u8> {
    let view = match source.open() {
        Ok(store) => {
            let meta = store
                .instance(id)?
                .ok_or_else(|| anyhow::anyhow!("no instance `{id}` in {}", source.describe()))?;
            let registry = crate::daemon::registry::Registry::default();
            let wf = registry
                .pinned(
                    store.as_ref(),
                    &meta.hash,
                    &crate::compile::rules::Rules::shared(),
                )
                .map_err(|e| anyhow::anyhow!(e))?;
            let journal = store.journal(id)?;
            serde_json::to_value(crate::daemon::view::instance_view(
                id,
                &meta.status,
                &wf,
                &journal,
            ))?
        }
        Err(crate::store::Error::Locked { .. }) => {
            let url = format!("http://{addr}/v1/instances/{id}");
            let mut resp = ureq::get(&url).call().map_err(|e| {
                anyhow::anyhow!(
                    "the data directory is in use and the daemon at {addr} did not answer: {e}"
                )
            })?;
            resp.body_mut().read_json::<serde_json::Value>()?
        }
        Err(e) => return Err(e.into()),
    };
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
        let rec: Result<crate::runtime::Record, _> = serde_json::from_value(r.clone());
        match rec {
            Ok(rec) => println!("  {}", run::describe(id, &rec)),
            Err(_) => println!("  {r}"),
        }
    }
    Ok(0)
}
