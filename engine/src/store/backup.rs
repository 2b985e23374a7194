//! The backup file: every tree of a sled store, entry by entry, as stored (values stay
//! sealed with the journal key, which is not in the file), ending with a SHA-256 of all
//! that came before it, so a cut-short or altered file is refused before anything is
//! restored.
//!
//! ```text
//! "CASEWORK-BACKUP 1\n"
//! per tree:  b'T' u16 name-length name
//! per entry: b'E' u32 key-length key u32 value-length value
//! end:       b'Z' u64 entries sha256(everything before this 32-byte digest)
//! ```
//! Integers are big-endian.

use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};

const MAGIC: &[u8] = b"CASEWORK-BACKUP 1\n";
/// Keys and values are far smaller in practice; this bounds what a bad file can make
/// the reader allocate.
const MAX_PART: u32 = 64 << 20;

/// Writes a backup; `finish` writes the trailer.
pub struct Writer<W: Write> {
    out: W,
    hash: Sha256,
    entries: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> io::Result<Self> {
        let mut w = Writer {
            out,
            hash: Sha256::new(),
            entries: 0,
        };
        w.put(MAGIC)?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.hash.update(bytes);
        self.out.write_all(bytes)
    }

    pub fn tree(&mut self, name: &str) -> io::Result<()> {
        let len = u16::try_from(name.len()).map_err(|_| io::Error::other("tree name too long"))?;
        self.put(b"T")?;
        self.put(&len.to_be_bytes())?;
        self.put(name.as_bytes())
    }

    pub fn entry(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        let part = |b: &[u8]| {
            u32::try_from(b.len())
                .ok()
                .filter(|n| *n <= MAX_PART)
                .ok_or_else(|| io::Error::other("a stored value is over 64 MiB"))
        };
        let (k, v) = (part(key)?, part(value)?);
        self.put(b"E")?;
        self.put(&k.to_be_bytes())?;
        self.put(key)?;
        self.put(&v.to_be_bytes())?;
        self.put(value)?;
        self.entries += 1;
        Ok(())
    }

    /// Writes the trailer and flushes; the number of entries, and the output.
    pub fn finish(mut self) -> io::Result<(u64, W)> {
        let entries = self.entries;
        self.put(b"Z")?;
        self.put(&entries.to_be_bytes())?;
        let digest = self.hash.finalize();
        self.out.write_all(&digest)?;
        self.out.flush()?;
        Ok((entries, self.out))
    }
}

/// One item of a backup, in file order.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    Tree(String),
    Entry(Vec<u8>, Vec<u8>),
}

/// Why a file cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("it is not a Casework backup (it does not start with the backup header)")]
    NotABackup,
    #[error("it is cut short or damaged ({0}); take the backup again")]
    Damaged(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Reads every item of a backup, calling `each` for each; checks the trailer at the end.
/// The caller must not keep what it was given if this fails: call it once with a no-op
/// to verify a file, then again to restore it.
pub fn read(
    mut input: impl Read,
    mut each: impl FnMut(Item) -> io::Result<()>,
) -> Result<u64, ReadError> {
    let mut hash = Sha256::new();
    let take = |input: &mut dyn Read, n: usize, hash: &mut Sha256| -> Result<Vec<u8>, ReadError> {
        let mut buf = vec![0; n];
        input.read_exact(&mut buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => ReadError::Damaged("it ends early".into()),
            _ => ReadError::Io(e),
        })?;
        hash.update(&buf);
        Ok(buf)
    };
    let magic = take(&mut input, MAGIC.len(), &mut hash).map_err(|e| match e {
        ReadError::Damaged(_) => ReadError::NotABackup,
        e => e,
    })?;
    if magic != MAGIC {
        return Err(ReadError::NotABackup);
    }
    let mut entries = 0u64;
    let mut in_tree = false;
    loop {
        let tag = take(&mut input, 1, &mut hash)?[0];
        match tag {
            b'T' => {
                let len = u16::from_be_bytes(
                    take(&mut input, 2, &mut hash)?
                        .try_into()
                        .unwrap_or_default(),
                );
                let name = String::from_utf8(take(&mut input, len as usize, &mut hash)?)
                    .map_err(|_| ReadError::Damaged("a tree name is not text".into()))?;
                in_tree = true;
                each(Item::Tree(name))?;
            }
            b'E' if in_tree => {
                let part = |input: &mut dyn Read, hash: &mut Sha256| {
                    let n =
                        u32::from_be_bytes(take(input, 4, hash)?.try_into().unwrap_or_default());
                    if n > MAX_PART {
                        return Err(ReadError::Damaged("an entry is over 64 MiB".into()));
                    }
                    take(input, n as usize, hash)
                };
                let key = part(&mut input, &mut hash)?;
                let value = part(&mut input, &mut hash)?;
                entries += 1;
                each(Item::Entry(key, value))?;
            }
            b'Z' => {
                let count = u64::from_be_bytes(
                    take(&mut input, 8, &mut hash)?
                        .try_into()
                        .unwrap_or_default(),
                );
                let digest = hash.finalize();
                let mut stored = [0u8; 32];
                input
                    .read_exact(&mut stored)
                    .map_err(|_| ReadError::Damaged("its checksum is cut short".into()))?;
                if stored[..] != digest[..] {
                    return Err(ReadError::Damaged("its checksum does not match".into()));
                }
                if count != entries {
                    return Err(ReadError::Damaged("its entry count does not match".into()));
                }
                let mut rest = [0u8; 1];
                if input.read(&mut rest)? != 0 {
                    return Err(ReadError::Damaged("there is data after its end".into()));
                }
                return Ok(entries);
            }
            other => {
                return Err(ReadError::Damaged(format!("unexpected byte {other:#04x}")));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = Writer::new(Vec::new()).unwrap();
        w.tree("journal").unwrap();
        w.entry(b"a", b"1").unwrap();
        w.entry(b"b", &[0u8; 300]).unwrap();
        w.tree("empty").unwrap();
        w.tree("timers").unwrap();
        w.entry(b"", b"").unwrap();
        let (n, file) = w.finish().unwrap();
        assert_eq!(n, 3);
        file
    }

    #[test]
    fn a_backup_reads_back_item_by_item() {
        let file = sample();
        let mut items = Vec::new();
        let n = read(&file[..], |i| {
            items.push(i);
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 3);
        assert_eq!(items[0], Item::Tree("journal".into()));
        assert_eq!(items[1], Item::Entry(b"a".to_vec(), b"1".to_vec()));
        assert_eq!(items[3], Item::Tree("empty".into()));
        assert_eq!(items.len(), 6);
    }

    #[test]
    fn every_cut_and_every_flipped_byte_is_refused() {
        let file = sample();
        for cut in 0..file.len() {
            assert!(read(&file[..cut], |_| Ok(())).is_err(), "cut at {cut}");
        }
        for i in 0..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 0x01;
            assert!(read(&bad[..], |_| Ok(())).is_err(), "byte {i} flipped");
        }
        let mut longer = file.clone();
        longer.push(0);
        assert!(read(&longer[..], |_| Ok(())).is_err());
        assert!(matches!(
            read(&b"hello"[..], |_| Ok(())),
            Err(ReadError::NotABackup)
        ));
    }
}
