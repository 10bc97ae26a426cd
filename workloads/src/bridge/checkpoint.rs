//! The persisted read position: which file, how far, and how to recognise that file again.
//!
//! A checkpoint names the file by its identity (device + inode) and by a fingerprint of its
//! first bytes (SHA-256 of the first `fingerprint_len` bytes, at most [`FINGERPRINT_LEN`]), and
//! holds the offset just past the last line whose publish was acknowledged, with every line
//! before it. It is written atomically: temp file, fsync, rename, fsync of the directory.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Most bytes from the start of a file that its fingerprint covers.
pub const FINGERPRINT_LEN: u64 = 256;

/// Version of the checkpoint format.
const VERSION: u32 = 1;

/// Device and inode of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

impl FileId {
    /// The identity of an open file.
    pub fn of(metadata: &std::fs::Metadata) -> Self {
        Self {
            dev: metadata.dev(),
            ino: metadata.ino(),
        }
    }
}

/// A position in a file, with what recognises the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Format version.
    pub version: u32,
    /// Identity of the file.
    #[serde(flatten)]
    pub file: FileId,
    /// Offset just past the last acknowledged line.
    pub offset: u64,
    /// How many leading bytes the fingerprint covers (`min(offset, FINGERPRINT_LEN)`).
    pub fingerprint_len: u64,
    /// Hex SHA-256 of the first `fingerprint_len` bytes.
    pub fingerprint: String,
}

impl Checkpoint {
    /// A checkpoint at `offset` of `file`, whose first bytes hash to `fingerprint`.
    pub fn new(file: FileId, offset: u64, fingerprint_len: u64, fingerprint: String) -> Self {
        Self {
            version: VERSION,
            file,
            offset,
            fingerprint_len,
            fingerprint,
        }
    }
}

/// Failure to read or write the checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The checkpoint file exists but cannot be read.
    #[error("cannot read checkpoint {path}")]
    Read {
        /// The checkpoint path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The checkpoint file is not a checkpoint.
    #[error("checkpoint {path} is not valid JSON of the expected shape")]
    Decode {
        /// The checkpoint path.
        path: PathBuf,
        /// The decode error.
        #[source]
        source: serde_json::Error,
    },
    /// The checkpoint cannot be written.
    #[error("cannot write checkpoint {path}")]
    Write {
        /// The checkpoint path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl CheckpointError {
    /// Short category for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Read { .. } => "checkpoint_read",
            Self::Decode { .. } => "checkpoint_decode",
            Self::Write { .. } => "checkpoint_write",
        }
    }
}

/// Reads the checkpoint; `None` when there is none yet.
pub fn load(path: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CheckpointError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| CheckpointError::Decode {
            path: path.to_owned(),
            source,
        })
}

/// Writes `checkpoint` atomically: temp file, fsync, rename over `path`, fsync of the directory.
pub fn store(path: &Path, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
    let write_err = |source| CheckpointError::Write {
        path: path.to_owned(),
        source,
    };
    let json = serde_json::to_vec(checkpoint).map_err(|e| write_err(std::io::Error::other(e)))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(write_err)?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut file = File::create(&tmp).map_err(write_err)?;
    file.write_all(&json).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(write_err)?;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(write_err)?;
    Ok(())
}

/// Hex SHA-256 of `bytes`.
pub fn fingerprint(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Reads up to `len` bytes from the start of `file`.
pub fn read_head(file: &File, len: u64) -> std::io::Result<Vec<u8>> {
    let mut head = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
    let mut filled = 0;
    while filled < head.len() {
        let n = file.read_at(&mut head[filled..], filled as u64)?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    head.truncate(filled);
    Ok(head)
}

/// Where to start reading `file` given the checkpoint: the checkpoint's offset when it is the
/// same file (same identity or same fingerprint) and still at least that long, else 0 (a new
/// file, or one truncated by copytruncate).
pub fn resume_offset(
    checkpoint: Option<&Checkpoint>,
    file: &File,
    size: u64,
) -> std::io::Result<u64> {
    let Some(checkpoint) = checkpoint else {
        return Ok(0);
    };
    if size < checkpoint.offset {
        return Ok(0);
    }
    let head = read_head(file, checkpoint.fingerprint_len)?;
    let same_content = head.len() as u64 == checkpoint.fingerprint_len
        && fingerprint(&head) == checkpoint.fingerprint;
    // Same inode with other first bytes: truncated and rewritten, so start over. Another inode
    // with the same first bytes is the same content (e.g. restored from a copy): resume.
    Ok(if same_content { checkpoint.offset } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(dir: &Path, content: &[u8]) -> (File, FileId, u64) {
        let path = dir.join("f");
        std::fs::write(&path, content).unwrap();
        let file = File::open(&path).unwrap();
        let meta = file.metadata().unwrap();
        (file, FileId::of(&meta), meta.len())
    }

    #[test]
    fn store_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/checkpoint.json");
        assert!(load(&path).unwrap().is_none());
        let ck = Checkpoint::new(FileId { dev: 1, ino: 2 }, 42, 3, fingerprint(b"abc"));
        store(&path, &ck).unwrap();
        assert_eq!(load(&path).unwrap(), Some(ck));
        assert!(!dir.path().join("sub/checkpoint.json.tmp").exists());
    }

    #[test]
    fn garbage_checkpoint_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint.json");
        std::fs::write(&path, b"{nope").unwrap();
        assert_eq!(load(&path).unwrap_err().reason(), "checkpoint_decode");
    }

    #[test]
    fn resumes_in_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let (file, id, size) = file_with(dir.path(), b"line1\nline2\n");
        let ck = Checkpoint::new(id, 6, 6, fingerprint(b"line1\n"));
        assert_eq!(resume_offset(Some(&ck), &file, size).unwrap(), 6);
        assert_eq!(resume_offset(None, &file, size).unwrap(), 0);
    }

    #[test]
    fn restarts_a_truncated_or_rewritten_file() {
        let dir = tempfile::tempdir().unwrap();
        let (file, id, size) = file_with(dir.path(), b"other\nline2\n");
        let ck = Checkpoint::new(id, 6, 6, fingerprint(b"line1\n"));
        assert_eq!(resume_offset(Some(&ck), &file, size).unwrap(), 0);
        let ck = Checkpoint::new(id, 100, 6, fingerprint(b"other\n"));
        assert_eq!(resume_offset(Some(&ck), &file, size).unwrap(), 0);
    }
}
