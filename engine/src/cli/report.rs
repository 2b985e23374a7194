//! `casework report`: support metrics per workflow from the journal.

use crate::daemon::report;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Only this workflow.
    #[arg(long)]
    pub workflow: Option<String>,
    /// Only instances started at or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    /// The daemon's data directory.
    #[arg(long, env = "CASEWORK_DATA", default_value = "data")]
    pub data: PathBuf,
    /// File holding the journal key (default: CASEWORK_JOURNAL_KEY, else DATA/journal.key).
    #[arg(long, env = "CASEWORK_JOURNAL_KEY_FILE")]
    pub journal_key_file: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Read a PostgreSQL store (postgres://USER@HOST:PORT/DB) instead of the data
    /// directory; needs the daemons' journal key.
    #[arg(long, env = "CASEWORK_STORE", value_name = "URL")]
    pub store: Option<String>,
    // The daemon to ask when it holds the data directory.
    #[command(flatten)]
    pub daemon: crate::cli::client::DaemonArgs,
}

pub fn report(args: ReportArgs) -> anyhow::Result<u8> {
    let since = match &args.since {
        Some(t) => Some(
            chrono::DateTime::parse_from_rfc3339(t)
                .map_err(|_| anyhow::anyhow!("--since must look like 2026-11-01T00:00:00Z"))?
                .timestamp_millis(),
        ),
        None => None,
    };
    let source = crate::cli::StoreSource {
        url: args.store.as_deref(),
        data: &args.data,
        key_file: args.journal_key_file.as_deref(),
    };
    let reports = match source.open() {
        Ok(store) => report::build(
            store.as_ref(),
            &crate::compile::rules::Rules::shared(),
            args.workflow.as_deref(),
            since,
        )
        .map_err(|e| anyhow::anyhow!(e))?,
        Err(crate::store::Error::Locked { .. }) => {
            let mut query = Vec::new();
            if let Some(w) = &args.workflow {
                query.push(("workflow", w.as_str()));
            }
            if let Some(s) = &args.since {
                query.push(("since", s.as_str()));
            }
            let body = crate::cli::ask_daemon(&args.daemon, &source, &["v1", "reports"], &query)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&body["workflows"])?);
                return Ok(0);
            }
            serde_json::from_value(body["workflows"].clone())?
        }
        Err(e) => return Err(e.into()),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print!("{}", report::render(&reports));
    }
    Ok(0)
}
