//! `casework test`: run workflow tests (`*.test.yaml`) on a virtual clock, without code.

use crate::compile::rules::Rules;
use crate::compile::CompiledWorkflow;
use crate::daemon::registry::{load_files, workflow_files};
use crate::diagnostic::Diagnostic;
use crate::testing::report::{case_lines, file_heading, summary_line, Summary};
use crate::testing::runner::{run_tests, Suite};
use crate::testing::{self, check_against, is_test_file};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct TestArgs {
    /// Test files (`*.test.yaml`), folders holding them, or workflow files (their
    /// `<name>.test.yaml` runs). Default: workflows/.
    pub paths: Vec<PathBuf>,
    /// Run only the tests whose name contains this text (ignoring case).
    #[arg(long)]
    pub filter: Option<String>,
    /// Instead of running tests, print a test file made from this instance's journal:
    /// its input, every plugin answer as a mock, every event at the time it came, and
    /// what it did as the expectation (the workflow is read from the first path, default
    /// workflows/). Reads the data directory, or asks the daemon that holds it.
    #[arg(long, value_name = "INSTANCE")]
    pub record: Option<String>,
    /// With `--record`: the daemon's data directory.
    #[arg(long, default_value = "data", requires = "record")]
    pub data: PathBuf,
    /// With `--record`: file holding the journal key (default: CASEWORK_JOURNAL_KEY, else DATA/journal.key).
    #[arg(long, env = "CASEWORK_JOURNAL_KEY_FILE")]
    pub journal_key_file: Option<PathBuf>,
    /// With `--record`: read a PostgreSQL store (postgres://USER@HOST:PORT/DB) instead.
    #[arg(long, env = "CASEWORK_STORE", value_name = "URL")]
    pub store: Option<String>,
    // With `--record`: the daemon to ask when it holds the data directory.
    #[command(flatten)]
    pub daemon: super::client::DaemonArgs,
}

/// `casework test --record ID`: prints the test file; 0 written, 1 the instance or its
/// workflow could not be read.
pub fn record(args: &TestArgs, id: &str) -> anyhow::Result<u8> {
    let source = super::StoreSource {
        url: args.store.as_deref(),
        data: &args.data,
        key_file: args.journal_key_file.as_deref(),
    };
    let view = super::instance_view_json(id, &source, &args.daemon)?;
    let name = view["workflow"].as_str().unwrap_or_default().to_string();
    let dir = args
        .paths
        .first()
        .cloned()
        .unwrap_or_else(|| PathBuf::from("workflows"));
    let rules = std::sync::Arc::new(Rules::new(crate::compile::rules::Limits::default()));
    let files = workflow_files(&dir)
        .map_err(|e| anyhow::anyhow!("cannot read the workflow folder {}: {e}", dir.display()))?;
    let (workflows, _) = load_files(&files, None, &rules);
    let Some(wf) = workflows.into_iter().find(|w| w.name == name) else {
        anyhow::bail!(
            "no workflow `{name}` loads from {}; give the folder the workflow is in (casework test --record {id} FOLDER)",
            dir.display()
        );
    };
    let ran = view["version"].as_u64().unwrap_or(0);
    if u64::from(wf.version) != ran {
        eprintln!(
            "casework: note: the instance ran {name} v{ran} and {} has v{}: the test expects what v{ran} did, so it shows what the new version changes",
            dir.display(),
            wf.version
        );
    }
    let records: Vec<crate::journal::Record> = view["journal"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(crate::daemon::view::record_of_entry)
        .collect();
    let text =
        testing::record::test_file(id, &view, &wf, &records).map_err(|e| anyhow::anyhow!(e))?;
    out(text.trim_end());
    Ok(0)
}

/// Run the tests; returns the exit code: 0 all passed, 1 a test failed, 2 the tests could
/// not run (a path that does not exist or names no test file, a test file that cannot be
/// read, a filter that matches no test).
pub async fn test(args: TestArgs) -> anyhow::Result<u8> {
    Ok(tokio::task::spawn_blocking(move || run(args)).await?)
}

/// A closed stdout (e.g. piped into `head`) must not panic the runner.
fn out(line: &str) {
    let _ = writeln!(std::io::stdout(), "{line}");
}

fn run(args: TestArgs) -> u8 {
    let began = Instant::now();
    let paths = if args.paths.is_empty() {
        vec![PathBuf::from("workflows")]
    } else {
        args.paths
    };
    let mut summary = Summary::default();
    let mut files: Vec<PathBuf> = Vec::new();
    for p in &paths {
        match test_files_for(p) {
            Ok(found) => {
                if found.is_empty() {
                    eprintln!("casework: no test files (*.test.yaml) in {}", p.display());
                    summary.broken_files += 1;
                }
                for f in found {
                    if !files.contains(&f) {
                        files.push(f);
                    }
                }
            }
            Err(e) => {
                eprintln!("casework: {e}");
                summary.broken_files += 1;
            }
        }
    }
    let filter = args.filter.as_deref().map(str::to_lowercase);
    for file in &files {
        run_file(file, filter.as_deref(), &mut summary);
    }
    summary.elapsed = began.elapsed();
    if let Some(f) = &args.filter {
        // Nothing ran: a typo in the filter must not look like a passing run.
        if summary.passed + summary.failed == 0 && summary.broken_files == 0 {
            summary.nothing_matched = true;
            eprintln!(
                "casework: no test name contains `{f}` ({} test(s) in {} file(s) filtered out)",
                summary.filtered_out,
                files.len()
            );
        }
    }
    out(&summary_line(&summary));
    summary.exit_code()
}

/// The test files a command-line path stands for.
fn test_files_for(p: &Path) -> Result<Vec<PathBuf>, String> {
    if p.is_dir() {
        return testing::test_files(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    }
    if !p.is_file() {
        return Err(format!("{} does not exist", p.display()));
    }
    if is_test_file(p) {
        return Ok(vec![p.to_path_buf()]);
    }
    // A workflow file: its tests sit next to it.
    let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    for ext in ["test.yaml", "test.yml"] {
        let sibling = p.with_file_name(format!("{stem}.{ext}"));
        if sibling.is_file() {
            return Ok(vec![sibling]);
        }
    }
    Err(format!(
        "{} is not a test file, and there is no {stem}.test.yaml next to it",
        p.display()
    ))
}

fn run_file(file: &Path, filter: Option<&str>, summary: &mut Summary) {
    let name = file.display().to_string();
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            out(
                &Diagnostic::error(&name, Default::default(), format!("cannot read file: {e}"))
                    .to_string(),
            );
            summary.broken_files += 1;
            return;
        }
    };
    let (parsed, diags) = testing::read(&name, &text);
    for d in &diags {
        out(&d.to_string());
    }
    let Some(tf) = parsed else {
        summary.broken_files += 1;
        return;
    };
    let dir = folder_of(file);
    let workflow_files = workflow_files(dir).unwrap_or_default();
    let (workflows, workflow_diags) = load_files(&workflow_files, None, &Rules::shared());
    let selected: Vec<_> = tf
        .tests
        .iter()
        .filter(|t| filter.is_none_or(|f| t.name.value.to_lowercase().contains(f)))
        .cloned()
        .collect();
    summary.filtered_out += tf.tests.len() - selected.len();
    if !workflows.iter().any(|w| w.name == tf.workflow.value)
        && workflow_diags.iter().any(Diagnostic::is_error)
    {
        // The workflow is probably there but broken: that fails its tests.
        for d in workflow_diags.iter().filter(|d| d.is_error()) {
            out(&d.to_string());
        }
        out(&file_heading(&name, &tf.workflow.value));
        for t in &selected {
            out(&format!(
                "  FAIL  {}\n        the workflow `{}` did not load (errors above)",
                t.name.value, tf.workflow.value
            ));
            summary.failed += 1;
        }
        return;
    }
    let refs: Vec<&CompiledWorkflow> = workflows.iter().collect();
    let checks = check_against(&tf, &refs);
    for d in &checks {
        out(&d.to_string());
    }
    if checks.iter().any(Diagnostic::is_error) {
        summary.broken_files += 1;
        return;
    }
    if selected.is_empty() {
        return;
    }
    out(&file_heading(&name, &tf.workflow.value));
    let suite = Suite {
        folder: folder_of(file).to_path_buf(),
        files: workflow_files,
        workflow: tf.workflow.value.clone(),
    };
    run_tests(&suite, &selected, |r| {
        for l in case_lines(&r) {
            out(&l);
        }
        summary.add(&r);
    });
}

fn folder_of(file: &Path) -> &Path {
    file.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// For `casework validate`: read each test file and check it against the workflows in its
/// folder (syntax and structure errors; unknown steps, calls and events as warnings).
pub fn check_test_files(files: &[PathBuf]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for file in files {
        let name = file.display().to_string();
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                out.push(Diagnostic::error(
                    &name,
                    Default::default(),
                    format!("cannot read file: {e}"),
                ));
                continue;
            }
        };
        let (parsed, diags) = testing::read(&name, &text);
        out.extend(diags);
        let Some(tf) = parsed else { continue };
        let files = workflow_files(folder_of(file)).unwrap_or_default();
        let (workflows, _) = load_files(&files, None, &Rules::shared());
        let refs: Vec<&CompiledWorkflow> = workflows.iter().collect();
        out.extend(check_against(&tf, &refs));
    }
    out
}
