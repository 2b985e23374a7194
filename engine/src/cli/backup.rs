//! `casework backup` (a running daemon's store, over its API) and `casework restore`
//! (a backup into a new data directory, with the daemon stopped).

use super::client::{Client, DaemonArgs};
use crate::store::seal::{self, KeySource};
use crate::store::sled::SledStore;
use anyhow::{anyhow, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct BackupArgs {
    /// The file to write (it must not exist yet). It holds the store as stored: sealed
    /// with the journal key, which it does not contain; keep the key separately.
    #[arg(long, value_name = "FILE")]
    pub to: PathBuf,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// The backup file (from `casework backup`).
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,
    /// The data directory to create; it must not exist or be empty.
    #[arg(long, default_value = "data")]
    pub data: PathBuf,
    /// The journal key of the store the backup came from, e.g. OLD_DATA/journal.key
    /// (or CASEWORK_JOURNAL_KEY). A key file is copied into the new data directory.
    #[arg(long, env = "CASEWORK_JOURNAL_KEY_FILE", value_name = "FILE")]
    pub journal_key_file: Option<PathBuf>,
}

pub fn backup(args: BackupArgs) -> Result<u8> {
    if args.to.exists() {
        return Err(anyhow!(
            "{} exists; name a new file (a backup never overwrites one)",
            args.to.display()
        ));
    }
    let client = Client::new(&args.daemon)?;
    let partial = args.to.with_extension("partial");
    let written = (|| -> Result<u64> {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&partial)?);
        let bytes = client.download(&["v1", "backup"], &mut file)?;
        let file = file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        // A download cut short would end without its checksum: check before keeping it.
        let entries = crate::store::backup::read(
            std::io::BufReader::new(std::fs::File::open(&partial)?),
            |_| Ok(()),
        )
        .map_err(|e| {
            anyhow!(
                "the backup received from {} is unusable: {e}",
                client.base()
            )
        })?;
        std::fs::rename(&partial, &args.to)?;
        eprintln!(
            "casework: backed up {entries} entries ({bytes} bytes) to {}",
            args.to.display()
        );
        Ok(entries)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written.map(|_| 0)
}

pub fn restore(args: RestoreArgs) -> Result<u8> {
    let key = match KeySource::from_env(args.journal_key_file.as_deref())? {
        KeySource::Explicit(k) => k,
        KeySource::DataDir => {
            return Err(anyhow!(
                "give the journal key of the store the backup came from: \
                 --journal-key-file OLD_DATA/journal.key, or CASEWORK_JOURNAL_KEY"
            ))
        }
    };
    let entries = SledStore::restore(&args.from, &args.data, &key)?;
    if std::env::var_os("CASEWORK_JOURNAL_KEY").is_none() && args.journal_key_file.is_some() {
        // So that `casework serve --data DIR` opens it as it opened the original.
        seal::write_key_file(&args.data, &key)?;
    }
    eprintln!(
        "casework: restored {entries} entries from {} into {}; start it with `casework serve --data {}`",
        args.from.display(),
        args.data.display(),
        args.data.display()
    );
    Ok(0)
}
