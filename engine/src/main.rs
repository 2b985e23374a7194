//! The `casework` binary: parses the command line and hands off to `casework::cli`.

use casework::cli::{self, Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse_with_color();
    // `serve` sets up its logs from its configuration.
    if !matches!(cli.command, Command::Serve(_)) {
        init_tracing(cli.color);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("casework: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli::execute(cli)) {
        Ok(code) => ExitCode::from(code),
        // Already in the daemon's JSON log.
        Err(e) if e.is::<cli::serve::Logged>() => ExitCode::from(1),
        Err(e) => {
            let msg = e.to_string();
            if msg.starts_with("casework:") {
                eprintln!("{msg}");
            } else {
                eprintln!("casework: {msg}");
            }
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(1)
        }
    }
}

fn init_tracing(color: clap::ColorChoice) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("CASEWORK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(match color {
            clap::ColorChoice::Always => true,
            clap::ColorChoice::Never => false,
            clap::ColorChoice::Auto => std::io::stderr().is_terminal(),
        });
    // `run` calls real plugins too: libraries stay at warn here as in `serve`.
    let cap = casework::daemon::config::library_log_cap();
    if std::io::stderr().is_terminal()
        || std::env::var("CASEWORK_LOG_FORMAT").as_deref() == Ok("pretty")
    {
        builder.finish().with(cap).init();
    } else {
        builder.json().flatten_event(true).finish().with(cap).init();
    }
}
