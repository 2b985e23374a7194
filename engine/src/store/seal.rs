//! Encryption at rest: every stored value that holds instance data is sealed with
//! XChaCha20-Poly1305 before it reaches the disk.
//!
//! A sealed value is `[format: 1 byte][nonce: 24 bytes][ciphertext + 16-byte tag]`. The nonce
//! is random for every value (192 bits, so random nonces do not collide in practice). The
//! associated data is the tree name and the value's key, so a value cannot be moved to
//! another key or tree without failing authentication. The leading byte is the format
//! version ([`FORMAT_V1`]); a later format gets a new number and `open` can tell them apart.
//!
//! Client-chosen strings that are used as index *keys* (correlation keys of waits,
//! idempotency keys, event ids) cannot be encrypted with a random nonce and still be looked
//! up, so they are stored as a keyed hash ([`Sealer::index_id`]): equal inputs give equal
//! ids, but nobody without the key can tell what they were.
//!
//! The key comes from, in order: an explicit key given when opening the store
//! ([`KeySource::Explicit`]: 64 hex characters, e.g. from `CASEWORK_JOURNAL_KEY`), or the key
//! file `<data dir>/journal.key` ([`KeySource::DataDir`]), created with mode 0600 on the
//! first open of an empty data directory. A key file next to the data protects copies and
//! backups of the data that leave the key behind; for production, move the key into a secret
//! store and pass it through the environment instead, then delete the file.

use super::{Error, Result};
use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The sealed-value format written by this version.
pub const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Name of the key file inside the data directory.
pub const KEY_FILE: &str = "journal.key";

/// A 32-byte journal key. Its `Debug` never prints the key.
#[derive(Clone, PartialEq, Eq)]
pub struct JournalKey([u8; 32]);

impl std::fmt::Debug for JournalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JournalKey(..)")
    }
}

impl JournalKey {
    /// A fresh random key (from the operating system's generator).
    pub fn random() -> Result<JournalKey> {
        let k = chacha20poly1305::Key::try_generate()
            .map_err(|e| Error::Key(format!("the system random generator failed: {e}")))?;
        Ok(JournalKey(k.into()))
    }

    /// A key for values that never outlive the process (the memory store's write-only
    /// values): random, or if the generator fails, a hash of the time and process id,
    /// which is enough for data no one else ever sees.
    pub fn ephemeral() -> JournalKey {
        JournalKey::random().unwrap_or_else(|_| {
            let seed = format!("{:?} {}", std::time::SystemTime::now(), std::process::id());
            JournalKey(Sha256::digest(seed.as_bytes()).into())
        })
    }

    /// Parse 64 hex characters (surrounding whitespace is ignored). The error never echoes the input.
    pub fn from_hex(text: &str) -> Result<JournalKey> {
        let text = text.trim();
        let mut k = [0u8; 32];
        hex::decode_to_slice(text, &mut k).map_err(|_| {
            Error::Key(format!(
                "a journal key must be 64 hex characters (32 bytes); the one given has {} characters or is not hex",
                text.len()
            ))
        })?;
        Ok(JournalKey(k))
    }

    /// Read a key file holding 64 hex characters.
    pub fn from_file(path: &Path) -> Result<JournalKey> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Key(format!(
                "cannot read the journal key file {}: {e}",
                path.display()
            ))
        })?;
        JournalKey::from_hex(&text).map_err(|e| context(e, &path.display().to_string()))
    }

    /// The key as 64 lowercase hex characters (for writing a key file).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// Where the journal key comes from.
#[derive(Clone, Debug, Default)]
pub enum KeySource {
    /// A key given by the operator (flag, environment or secret store).
    Explicit(JournalKey),
    /// `<data dir>/journal.key`, created (mode 0600) on the first open of an empty data directory.
    #[default]
    DataDir,
}

fn context(e: Error, what: &str) -> Error {
    match e {
        Error::Key(m) => Error::Key(format!("{what}: {m}")),
        other => other,
    }
}

/// The environment variable holding a hex journal key.
pub const KEY_ENV: &str = "CASEWORK_JOURNAL_KEY";

impl KeySource {
    /// From operator options: a hex key or a key file (not both); with neither, the data
    /// directory's own key file is used.
    pub fn from_options(hex: Option<&str>, file: Option<&Path>) -> Result<KeySource> {
        match (hex.filter(|h| !h.trim().is_empty()), file) {
            (Some(_), Some(f)) => Err(Error::Key(format!(
                "both {KEY_ENV} and the key file {} are given; pass only one",
                f.display()
            ))),
            (Some(h), None) => JournalKey::from_hex(h)
                .map(KeySource::Explicit)
                .map_err(|e| context(e, KEY_ENV)),
            (None, Some(f)) => Ok(KeySource::Explicit(JournalKey::from_file(f)?)),
            (None, None) => Ok(KeySource::DataDir),
        }
    }

    /// `CASEWORK_JOURNAL_KEY` from the environment, or `file` (e.g. `--journal-key-file`).
    pub fn from_env(file: Option<&Path>) -> Result<KeySource> {
        KeySource::from_options(std::env::var(KEY_ENV).ok().as_deref(), file)
    }
}

/// The path of the key file of a data directory.
pub fn key_file(dir: &Path) -> PathBuf {
    dir.join(KEY_FILE)
}

/// Create `<dir>/journal.key` with a new random key, readable by its owner only.
pub fn create_key_file(dir: &Path) -> Result<JournalKey> {
    let key = JournalKey::random()?;
    write_key_file(dir, &key)?;
    Ok(key)
}

/// Create `<dir>/journal.key` holding `key`, readable by its owner only.
pub fn write_key_file(dir: &Path, key: &JournalKey) -> Result<()> {
    use std::io::Write;
    let path = key_file(dir);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&path).map_err(|e| {
        Error::Key(format!(
            "cannot create the journal key file {}: {e}",
            path.display()
        ))
    })?;
    f.write_all(format!("{}\n", key.to_hex()).as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| {
            Error::Key(format!(
                "cannot write the journal key file {}: {e}",
                path.display()
            ))
        })
}

/// Warn when a key file can be read by other users.
pub fn check_key_file_mode(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(path) {
            if m.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    file = %path.display(),
                    "the journal key file can be read by other users; chmod 600 it, or better, move the key to a secret store and pass it as CASEWORK_JOURNAL_KEY"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Seals and opens stored values with one key.
pub struct Sealer {
    cipher: XChaCha20Poly1305,
    index_key: [u8; 32],
}

/// Why a sealed value could not be opened. Says nothing about the plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("the value is too short to be sealed")]
    Truncated,
    #[error("sealed with format {0}, which this casework does not understand (newer version?)")]
    UnknownFormat(u8),
    #[error("the value failed authentication: it was altered, moved to another key, or sealed with a different journal key")]
    Auth,
}

impl Sealer {
    pub fn new(key: &JournalKey) -> Sealer {
        Sealer {
            cipher: XChaCha20Poly1305::new(&key.0.into()),
            index_key: hmac_sha256(&key.0, &[b"casework index key v1"]),
        }
    }

    /// Seal `plain`, bound to `tree` and `key`.
    pub fn seal(&self, tree: &str, key: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
        let nonce = XNonce::try_generate()
            .map_err(|e| Error::Io(format!("the system random generator failed: {e}")))?;
        let aad = aad(tree, key);
        let ct = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            .map_err(|_| Error::Io("could not seal a value".into()))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// An event answer (or an engine slot kept with them) as stored under `key` in the
    /// `events` table, opened and read back.
    pub fn open_answer(&self, key: &[u8], sealed: &[u8]) -> Result<serde_json::Value> {
        let plain = self
            .open("events", key, sealed)
            .map_err(|e| Error::Io(format!("a stored event answer: {e}")))?;
        serde_json::from_slice(&plain).map_err(|e| Error::Io(format!("a stored event answer: {e}")))
    }

    /// Open a value sealed by [`Sealer::seal`] with the same `tree` and `key`.
    pub fn open(
        &self,
        tree: &str,
        key: &[u8],
        sealed: &[u8],
    ) -> std::result::Result<Vec<u8>, OpenError> {
        let (&format, rest) = sealed.split_first().ok_or(OpenError::Truncated)?;
        if format != FORMAT_V1 {
            return Err(OpenError::UnknownFormat(format));
        }
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(OpenError::Truncated);
        }
        let (nonce, ct) = rest.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| OpenError::Truncated)?;
        let aad = aad(tree, key);
        self.cipher
            .decrypt(&nonce, Payload { msg: ct, aad: &aad })
            .map_err(|_| OpenError::Auth)
    }

    /// A keyed hash of a client-chosen string used in an index key: 16 bytes, stable for one key.
    pub fn index_id(&self, what: &str, value: &str) -> [u8; 16] {
        let full = hmac_sha256(&self.index_key, &[what.as_bytes(), &[0], value.as_bytes()]);
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }

    /// Seal a write-only value (a one-time code, [`crate::daemon::driver::write_only`]).
    pub fn seal_write_only(&self, plain: &[u8]) -> Result<Vec<u8>> {
        self.seal(WRITE_ONLY_TREE, b"", plain)
    }

    /// Open a value sealed by [`Sealer::seal_write_only`] under the same journal key.
    pub fn open_write_only(&self, sealed: &[u8]) -> std::result::Result<Vec<u8>, OpenError> {
        self.open(WRITE_ONLY_TREE, b"", sealed)
    }

    /// The id a search attribute's value is indexed under ([`super::Store::search_id`]):
    /// the keyed hash of the value, in the attribute's own domain, as hex.
    pub fn search_id(&self, attribute: &str, value: &str) -> String {
        hex::encode(self.index_id(&format!("search.{attribute}"), value))
    }
}

/// The domain write-only values are sealed in: never the name of a stored tree or table,
/// so a write-only value cannot be passed off as a record and back.
const WRITE_ONLY_TREE: &str = "\0write-only";

fn aad(tree: &str, key: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(tree.len() + 1 + key.len());
    a.extend_from_slice(tree.as_bytes());
    a.push(0);
    a.extend_from_slice(key);
    a
}

/// HMAC-SHA256 (RFC 2104) over the concatenation of `parts`.
fn hmac_sha256(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for (i, b) in key.iter().enumerate() {
        ipad[i] ^= b;
        opad[i] ^= b;
    }
    let mut inner = Sha256::new();
    inner.update(ipad);
    for p in parts {
        inner.update(p);
    }
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(opad);
    outer.update(inner);
    outer.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> Sealer {
        Sealer::new(&JournalKey::random().unwrap())
    }

    #[test]
    fn round_trip_and_binding_to_the_key() {
        let s = sealer();
        let sealed = s
            .seal("journal", b"a\0\x01", b"4111 1111 1111 1111")
            .unwrap();
        assert_eq!(sealed[0], FORMAT_V1);
        assert!(
            !sealed.windows(4).any(|w| w == b"4111"),
            "plaintext visible"
        );
        assert_eq!(
            s.open("journal", b"a\0\x01", &sealed).unwrap(),
            b"4111 1111 1111 1111"
        );
        // Moved to another key or tree: refused.
        assert_eq!(s.open("journal", b"a\0\x02", &sealed), Err(OpenError::Auth));
        assert_eq!(s.open("events", b"a\0\x01", &sealed), Err(OpenError::Auth));
        // Another journal key: refused.
        assert_eq!(
            sealer().open("journal", b"a\0\x01", &sealed),
            Err(OpenError::Auth)
        );
        // A flipped bit: refused.
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(s.open("journal", b"a\0\x01", &bad), Err(OpenError::Auth));
        // Unknown format, truncated.
        let mut v2 = sealed.clone();
        v2[0] = 2;
        assert_eq!(
            s.open("journal", b"a\0\x01", &v2),
            Err(OpenError::UnknownFormat(2))
        );
        assert_eq!(
            s.open("journal", b"a\0\x01", &sealed[..10]),
            Err(OpenError::Truncated)
        );
        // Nonces differ: the same value seals differently each time.
        assert_ne!(
            sealed,
            s.seal("journal", b"a\0\x01", b"4111 1111 1111 1111")
                .unwrap()
        );
    }

    #[test]
    fn keys_parse_from_hex_without_echoing_it() {
        let k = JournalKey::random().unwrap();
        assert_eq!(
            JournalKey::from_hex(&format!(" {}\n", k.to_hex())).unwrap(),
            k
        );
        let err = JournalKey::from_hex("secretsecret")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secretsecret"), "{err}");
        assert_eq!(format!("{k:?}"), "JournalKey(..)");
    }

    #[test]
    fn index_ids_are_stable_per_key() {
        // Keyed hashes are stable for one key and differ across keys and domains.
        let k = JournalKey::random().unwrap();
        let a = Sealer::new(&k);
        let b = Sealer::new(&k);
        assert_eq!(a.index_id("wait", "A-1"), b.index_id("wait", "A-1"));
        assert_ne!(a.index_id("wait", "A-1"), a.index_id("event", "A-1"));
        assert_ne!(a.index_id("wait", "A-1"), sealer().index_id("wait", "A-1"));
    }

    #[test]
    fn hmac_sha256_known_answer() {
        // RFC 4231 test case 1 uses a 20-byte key; pad it to our fixed 32 bytes with zeros,
        // which HMAC does anyway for keys shorter than the block.
        let mut key = [0u8; 32];
        key[..20].copy_from_slice(&[0x0b; 20]);
        let mac = hmac_sha256(&key, &[b"Hi ", b"There"]);
        assert_eq!(
            hex::encode(mac),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
    }
}
