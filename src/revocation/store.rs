//! The durable local store: an append-only log of changes, each record framed
//! by its length and CRC-32, fsynced before a revocation is acknowledged.
//! A torn last record (a crash mid-write) fails its length or CRC check and is
//! cut off at load, so it can never poison the records before it. Compaction
//! rewrites the live entries to a new file in the background and swaps it in;
//! writers wait only for the final swap.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::entry::Op;

/// No record is this large; a length above it is a torn or foreign file.
const MAX_RECORD: usize = 1 << 20;

pub struct Store {
    path: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    file: File,
    /// While a compaction runs, the changes it must carry over.
    since_compaction: Option<Vec<Op>>,
    /// Records in the current file, to decide when compaction pays.
    records: usize,
}

fn frame(op: &Op, out: &mut Vec<u8>) {
    let payload = serde_json::to_vec(op).unwrap_or_default();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        }) {
            let _ = d.sync_all();
        }
    }
}

/// Reads every intact record; returns them and the length of the intact prefix.
fn read_records(bytes: &[u8]) -> (Vec<Op>, usize) {
    let mut ops = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        // The loop condition leaves 8 bytes at `at`: both 4-byte slices convert.
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        if len > MAX_RECORD || at + 8 + len > bytes.len() {
            break;
        }
        let payload = &bytes[at + 8..at + 8 + len];
        if crc32fast::hash(payload) != crc {
            break;
        }
        match serde_json::from_slice::<Op>(payload) {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
        at += 8 + len;
    }
    (ops, at)
}

impl Store {
    /// Opens (or creates) the log and replays it. A damaged tail is logged
    /// and cut off; everything before it is kept.
    pub fn open(path: &Path) -> Result<(Store, Vec<Op>), String> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let (ops, good) = read_records(&bytes);
        if good < bytes.len() {
            tracing::warn!(
                store = %path.display(),
                dropped_bytes = bytes.len() - good,
                "the revocation store ends in a torn record (an interrupted write); it is cut off"
            );
            file.set_len(good as u64)
                .map_err(|e| format!("cannot truncate {}: {e}", path.display()))?;
            file.sync_all()
                .map_err(|e| format!("cannot sync {}: {e}", path.display()))?;
        }
        let records = ops.len();
        Ok((
            Store {
                path: path.to_path_buf(),
                inner: Mutex::new(Inner {
                    file,
                    since_compaction: None,
                    records,
                }),
            },
            ops,
        ))
    }

    /// Reads the intact records without changing the file (for tools that
    /// run beside a serving gateway). A missing file is an empty list.
    pub fn read(path: &Path) -> Result<Vec<Op>, String> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(read_records(&bytes).0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Appends changes; with `sync`, returns only once they are on disk.
    pub fn append(&self, ops: &[Op], sync: bool) -> std::io::Result<()> {
        let mut buf = Vec::new();
        for op in ops {
            frame(op, &mut buf);
        }
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| std::io::Error::other("store lock poisoned"))?;
        inner.file.write_all(&buf)?;
        if sync {
            inner.file.sync_data()?;
        }
        inner.records += ops.len();
        if let Some(carry) = inner.since_compaction.as_mut() {
            carry.extend_from_slice(ops);
        }
        Ok(())
    }

    pub fn records(&self) -> usize {
        self.inner.lock().map(|i| i.records).unwrap_or(0)
    }

    /// Marks the start of a compaction: changes from now on are carried over.
    /// Call it while holding the lock that orders writes, together with
    /// taking the list of live entries, so that nothing falls between them.
    pub fn begin_compaction(&self) {
        if let Ok(mut i) = self.inner.lock() {
            i.since_compaction = Some(Vec::new());
        }
    }

    /// Writes `live` (entries and tombstones) to a new file, adds what
    /// changed meanwhile, and swaps it in.
    pub fn finish_compaction(&self, live: &[Op]) -> std::io::Result<()> {
        let tmp = self.path.with_extension("compacting");
        let result = (|| {
            let mut f = File::create(&tmp)?;
            let mut buf = Vec::with_capacity(live.len() * 96);
            for op in live {
                frame(op, &mut buf);
            }
            f.write_all(&buf)?;
            f.sync_data()?;
            let mut inner = self
                .inner
                .lock()
                .map_err(|_| std::io::Error::other("store lock poisoned"))?;
            let carry = inner.since_compaction.take().unwrap_or_default();
            let mut tail = Vec::new();
            for op in &carry {
                frame(op, &mut tail);
            }
            f.write_all(&tail)?;
            f.sync_data()?;
            drop(f);
            std::fs::rename(&tmp, &self.path)?;
            sync_dir(&self.path);
            inner.file = OpenOptions::new().append(true).open(&self.path)?;
            inner.records = live.len() + carry.len();
            Ok(())
        })();
        if result.is_err() {
            if let Ok(mut i) = self.inner.lock() {
                i.since_compaction = None;
            }
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::revocation::entry::Entry;

    fn add(j: &str) -> Op {
        Op::Add {
            entry: Entry::Jti {
                jti: j.into(),
                expires_at: 4_000_000_000,
            },
            at: 1,
        }
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.log");
        {
            let (s, ops) = Store::open(&p).unwrap();
            assert!(ops.is_empty());
            s.append(&[add("a"), add("b")], true).unwrap();
        }
        let mut bytes = std::fs::read(&p).unwrap();
        let mut torn = Vec::new();
        frame(&add("c"), &mut torn);
        bytes.extend_from_slice(&torn[..torn.len() - 3]);
        std::fs::write(&p, &bytes).unwrap();
        let (s, ops) = Store::open(&p).unwrap();
        assert_eq!(ops, vec![add("a"), add("b")]);
        s.append(&[add("d")], true).unwrap();
        drop(s);
        let (_, ops) = Store::open(&p).unwrap();
        assert_eq!(ops, vec![add("a"), add("b"), add("d")]);
    }

    #[test]
    fn a_corrupted_record_stops_the_replay_there() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.log");
        let (s, _) = Store::open(&p).unwrap();
        s.append(&[add("a"), add("b")], true).unwrap();
        drop(s);
        let mut bytes = std::fs::read(&p).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0xff;
        std::fs::write(&p, &bytes).unwrap();
        let (_, ops) = Store::open(&p).unwrap();
        assert_eq!(ops, vec![add("a")]);
    }

    #[test]
    fn compaction_keeps_live_entries_and_changes_made_during_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.log");
        let (s, _) = Store::open(&p).unwrap();
        s.append(&[add("a"), add("b"), add("c")], true).unwrap();
        s.begin_compaction();
        s.append(&[add("d")], true).unwrap();
        let live = vec![add("a")];
        s.finish_compaction(&live).unwrap();
        s.append(&[add("e")], true).unwrap();
        drop(s);
        let (_, ops) = Store::open(&p).unwrap();
        assert_eq!(ops, vec![add("a"), add("d"), add("e")]);
    }
}
