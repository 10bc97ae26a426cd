//! Reading complete lines from the tailed file, across rotations.
//!
//! The [`Tailer`] is plain blocking code: [`Tailer::poll`] reads what is new and returns complete
//! lines; at the end of the file it checks for rotation. [`spawn`] runs it on its own thread and
//! hands batches of lines to the async side through a bounded channel, so a slow publisher stops
//! the reading (backpressure).
//!
//! - A file that does not exist yet is waited for.
//! - A partial line at the end of the file is kept until its newline arrives.
//! - Rename-and-create: once the path names another file, the old one is read to its end and,
//!   after it has been quiet for the rotation grace time, left for the new one (read from 0).
//! - Copytruncate: when the file is shorter than what was read, or its first bytes changed, it is
//!   read again from 0.
//! - A line longer than the in-memory limit is cut; the rest is skipped up to its newline and the
//!   line is reported with its original length.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::checkpoint::{self, Checkpoint, FINGERPRINT_LEN, FileId};
use super::wake::Wake;
use crate::backoff::Backoff;

/// Bytes read from the file at a time.
const CHUNK: usize = 64 * 1024;

/// The file a line came from, as a checkpoint names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMark {
    /// Device and inode.
    pub id: FileId,
    /// How many leading bytes the fingerprint covers.
    pub fingerprint_len: u64,
    /// Hex SHA-256 of those bytes.
    pub fingerprint: String,
}

/// One complete line.
#[derive(Debug, Clone)]
pub struct Line {
    /// The bytes as read, without the trailing `\n` or `\r\n`; cut when oversized.
    pub bytes: Bytes,
    /// The file it was read from.
    pub file: Arc<FileMark>,
    /// Offset just past its newline.
    pub end_offset: u64,
    /// The full length when the line was longer than the in-memory limit and was cut.
    pub original_len: Option<u64>,
}

impl Line {
    /// A checkpoint just past this line.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint::new(
            self.file.id,
            self.end_offset,
            self.file.fingerprint_len,
            self.file.fingerprint.clone(),
        )
    }
}

/// Failure to read the tailed file.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// The file exists but cannot be opened.
    #[error("cannot open {path}")]
    Open {
        /// The tailed path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Reading or inspecting the open file failed.
    #[error("cannot read {path}")]
    Read {
        /// The tailed path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl TailError {
    /// Short category for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Open { .. } => "tail_open",
            Self::Read { .. } => "tail_read",
        }
    }
}

/// What one poll found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Lines were added (or a rotation is being handled): poll again now.
    Busy,
    /// Nothing new: wait a poll interval.
    Idle,
}

/// The current file and its size, for the checkpoint-lag metric.
pub type CurrentFile = Arc<Mutex<Option<(FileId, u64)>>>;

struct OpenFile {
    file: File,
    id: FileId,
    /// Next offset to read.
    read_pos: u64,
    /// The start of the current incomplete line (at most `max_line` bytes of it).
    partial: Vec<u8>,
    /// Set while skipping the rest of an oversized line: its length so far.
    cut_len: Option<u64>,
    /// The first bytes of the file known so far (at most [`FINGERPRINT_LEN`]).
    head: Vec<u8>,
    /// The mark once `head` is complete.
    full_mark: Option<Arc<FileMark>>,
    /// When the path was first seen to name another file.
    rotated_since: Option<Instant>,
}

/// Follows one path.
pub struct Tailer {
    path: PathBuf,
    max_line: usize,
    rotate_grace: Duration,
    resume: Option<Checkpoint>,
    open: Option<OpenFile>,
    chunk: Vec<u8>,
    current: CurrentFile,
}

impl Tailer {
    /// Follows `path`, starting at `resume` when it still names the same file.
    pub fn new(
        path: PathBuf,
        resume: Option<Checkpoint>,
        max_line: usize,
        rotate_grace: Duration,
    ) -> Self {
        Self {
            path,
            max_line: max_line.max(1),
            rotate_grace,
            resume,
            open: None,
            chunk: vec![0; CHUNK],
            current: CurrentFile::default(),
        }
    }

    /// The shared view of the current file and its size.
    pub fn current_file(&self) -> CurrentFile {
        self.current.clone()
    }

    /// Reads what is new, appending at most about `max_lines` complete lines to `out`.
    pub fn poll(&mut self, out: &mut Vec<Line>, max_lines: usize) -> Result<Progress, TailError> {
        if self.open.is_none() && !self.try_open()? {
            return Ok(Progress::Idle);
        }
        let read_err = |path: &Path| {
            let path = path.to_owned();
            move |source| TailError::Read { path, source }
        };
        if self.truncated().map_err(read_err(&self.path))? {
            return Ok(Progress::Busy);
        }
        let before = out.len();
        while out.len() - before < max_lines {
            let Some(open) = self.open.as_mut() else {
                break;
            };
            let n = open
                .file
                .read_at(&mut self.chunk, open.read_pos)
                .map_err(read_err(&self.path))?;
            if n == 0 {
                break;
            }
            let Some(data) = self.chunk.get(..n) else {
                break;
            };
            open.rotated_since = None;
            consume(open, data, self.max_line, out).map_err(read_err(&self.path))?;
        }
        if out.len() > before {
            return Ok(Progress::Busy);
        }
        self.at_end_of_file(out).map_err(read_err(&self.path))
    }

    /// Opens the path if it exists; `false` when it does not (yet).
    fn try_open(&mut self) -> Result<bool, TailError> {
        let file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(source) => {
                return Err(TailError::Open {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let open_err = |source| TailError::Open {
            path: self.path.clone(),
            source,
        };
        let (file, metadata) = match self.rotated_checkpoint_file(&file) {
            Some(rotated) => rotated,
            None => {
                let metadata = file.metadata().map_err(open_err)?;
                (file, metadata)
            }
        };
        let id = FileId::of(&metadata);
        let offset = checkpoint::resume_offset(self.resume.take().as_ref(), &file, metadata.len())
            .map_err(open_err)?;
        let head = checkpoint::read_head(&file, offset.min(FINGERPRINT_LEN)).map_err(open_err)?;
        tracing::info!(path = %self.path.display(), dev = id.dev, ino = id.ino, offset, "tailing file");
        self.open = Some(OpenFile {
            file,
            id,
            read_pos: offset,
            partial: Vec::new(),
            cut_len: None,
            head,
            full_mark: None,
            rotated_since: None,
        });
        Ok(true)
    }

    /// At start-up, when the path names another file than the checkpoint: the checkpoint's file
    /// if it was rotated (renamed) into the same directory and still has its first bytes, so
    /// its unacknowledged end is read before the new file.
    fn rotated_checkpoint_file(&self, at_path: &File) -> Option<(File, std::fs::Metadata)> {
        let resume = self.resume.as_ref()?;
        if FileId::of(&at_path.metadata().ok()?) == resume.file {
            return None;
        }
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if !metadata.is_file() || FileId::of(&metadata) != resume.file {
                continue;
            }
            let file = File::open(entry.path()).ok()?;
            let offset = checkpoint::resume_offset(Some(resume), &file, metadata.len()).ok()?;
            if offset == 0 {
                return None;
            }
            tracing::info!(rotated = %entry.path().display(), offset, "finishing the rotated file of the checkpoint first");
            return Some((file, metadata));
        }
        None
    }

    /// Notices copytruncate (the file is shorter than what was read, or its first bytes
    /// changed) and starts the file over; also records the file's size.
    fn truncated(&mut self) -> std::io::Result<bool> {
        let Some(open) = self.open.as_mut() else {
            return Ok(false);
        };
        let size = open.file.metadata()?.len();
        if let Ok(mut current) = self.current.lock() {
            *current = Some((open.id, size));
        }
        let head_changed = !open.head.is_empty()
            && checkpoint::read_head(&open.file, open.head.len() as u64)? != open.head;
        if size >= open.read_pos && !head_changed {
            return Ok(false);
        }
        tracing::warn!(
            path = %self.path.display(),
            size,
            offset = open.read_pos,
            "file was truncated (copytruncate); reading it again from the start"
        );
        open.read_pos = 0;
        open.partial.clear();
        open.cut_len = None;
        open.head.clear();
        open.full_mark = None;
        Ok(true)
    }

    /// At the end of the file: notices rename rotation.
    fn at_end_of_file(&mut self, out: &mut Vec<Line>) -> std::io::Result<Progress> {
        let Some(open) = self.open.as_mut() else {
            return Ok(Progress::Idle);
        };
        let renamed = match std::fs::metadata(&self.path) {
            Ok(metadata) => FileId::of(&metadata) != open.id,
            Err(_) => false,
        };
        if !renamed {
            open.rotated_since = None;
            return Ok(Progress::Idle);
        }
        let since = *open.rotated_since.get_or_insert_with(Instant::now);
        if since.elapsed() < self.rotate_grace {
            return Ok(Progress::Idle);
        }
        if !open.partial.is_empty() {
            tracing::warn!(
                path = %self.path.display(),
                bytes = open.partial.len(),
                "rotated file ends without a newline; taking its last line as it is"
            );
            let end = open.read_pos;
            let bytes = std::mem::take(&mut open.partial);
            let original_len = open.cut_len.take();
            let line = make_line(open, bytes, end, original_len)?;
            out.push(line);
        }
        tracing::info!(path = %self.path.display(), "file was rotated; switching to the new file");
        self.open = None;
        Ok(Progress::Busy)
    }
}

/// Splits `data` (read at `open.read_pos`) into lines.
fn consume(
    open: &mut OpenFile,
    data: &[u8],
    max_line: usize,
    out: &mut Vec<Line>,
) -> std::io::Result<()> {
    let base = open.read_pos;
    let mut start = 0;
    while let Some(i) = data
        .get(start..)
        .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
    {
        let segment = data.get(start..start + i).unwrap_or_default();
        let end = base + (start + i + 1) as u64;
        start += i + 1;
        let total = open.cut_len.take().unwrap_or(open.partial.len() as u64) + segment.len() as u64;
        let room = max_line.saturating_sub(open.partial.len());
        open.partial
            .extend_from_slice(segment.get(..room.min(segment.len())).unwrap_or_default());
        let mut bytes = std::mem::take(&mut open.partial);
        let original_len = (total > max_line as u64).then_some(total);
        if original_len.is_none() && bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        if bytes.is_empty() {
            continue;
        }
        out.push(make_line(open, bytes, end, original_len)?);
    }
    let rest = data.get(start..).unwrap_or_default();
    let total = open.cut_len.unwrap_or(open.partial.len() as u64) + rest.len() as u64;
    let room = max_line.saturating_sub(open.partial.len());
    open.partial
        .extend_from_slice(rest.get(..room.min(rest.len())).unwrap_or_default());
    if total > max_line as u64 || open.cut_len.is_some() {
        open.cut_len = Some(total);
    }
    open.read_pos = base + data.len() as u64;
    Ok(())
}

/// A line ending at `end`, marked with the file's identity and fingerprint.
fn make_line(
    open: &mut OpenFile,
    bytes: Vec<u8>,
    end: u64,
    original_len: Option<u64>,
) -> std::io::Result<Line> {
    let file = match &open.full_mark {
        Some(mark) => mark.clone(),
        None => {
            let want = end.min(FINGERPRINT_LEN);
            if (open.head.len() as u64) < want {
                open.head = checkpoint::read_head(&open.file, want)?;
            }
            let mark = Arc::new(FileMark {
                id: open.id,
                fingerprint_len: open.head.len() as u64,
                fingerprint: checkpoint::fingerprint(&open.head),
            });
            if open.head.len() as u64 == FINGERPRINT_LEN {
                open.full_mark = Some(mark.clone());
            }
            mark
        }
    };
    Ok(Line {
        bytes: Bytes::from(bytes),
        file,
        end_offset: end,
        original_len,
    })
}

/// Runs `tailer` on its own thread, sending batches of lines to `tx` until `stop` is cancelled
/// or the receiver is dropped. At the end of the file it waits for a change of the file
/// ([`Wake`]: inotify, or at most `poll_interval`). Read errors are logged and retried with
/// back-off.
pub fn spawn(
    mut tailer: Tailer,
    tx: mpsc::Sender<Vec<Line>>,
    poll_interval: Duration,
    lines_read: Counter,
    stop: CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("bridge-tail".into())
        .spawn(move || {
            let mut backoff = Backoff::new(poll_interval, Duration::from_secs(10));
            let mut wake = Wake::new(&tailer.path, poll_interval);
            while !stop.is_cancelled() {
                let mut batch = Vec::with_capacity(512);
                match tailer.poll(&mut batch, 512) {
                    Ok(progress) => {
                        backoff.reset();
                        if !batch.is_empty() {
                            lines_read.inc_by(batch.len() as u64);
                            if tx.blocking_send(batch).is_err() {
                                return;
                            }
                        } else if progress == Progress::Idle {
                            wake.wait();
                        }
                    }
                    Err(error) => {
                        tracing::warn!(error = %error, reason = error.reason(), "reading the file failed; retrying");
                        std::thread::sleep(backoff.next_delay());
                    }
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn append(path: &Path, bytes: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(bytes).unwrap();
    }

    fn poll_all(tailer: &mut Tailer) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..10 {
            tailer.poll(&mut out, 1000).unwrap();
        }
        out.iter()
            .map(|l| String::from_utf8_lossy(&l.bytes).into_owned())
            .collect()
    }

    #[test]
    fn waits_for_the_file_and_for_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdr.jsonl");
        let mut tailer = Tailer::new(path.clone(), None, 1024, Duration::ZERO);
        assert!(poll_all(&mut tailer).is_empty());
        append(&path, b"one\r\ntw");
        assert_eq!(poll_all(&mut tailer), ["one"]);
        append(&path, b"o\n\nthree\n");
        assert_eq!(poll_all(&mut tailer), ["two", "three"]);
    }

    #[test]
    fn resumes_at_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdr.jsonl");
        append(&path, b"a\nb\nc\n");
        let mut tailer = Tailer::new(path.clone(), None, 1024, Duration::ZERO);
        let mut out = Vec::new();
        tailer.poll(&mut out, 10).unwrap();
        let ck = out[1].checkpoint();
        assert_eq!(ck.offset, 4);
        let mut again = Tailer::new(path, Some(ck), 1024, Duration::ZERO);
        assert_eq!(poll_all(&mut again), ["c"]);
    }

    #[test]
    fn follows_rename_and_copytruncate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdr.jsonl");
        append(&path, b"a\n");
        let mut tailer = Tailer::new(path.clone(), None, 1024, Duration::ZERO);
        assert_eq!(poll_all(&mut tailer), ["a"]);
        append(&path, b"b\n");
        std::fs::rename(&path, dir.path().join("cdr.jsonl.1")).unwrap();
        append(&path, b"c\n");
        assert_eq!(poll_all(&mut tailer), ["b", "c"]);
        // copytruncate: shorter file.
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        assert!(poll_all(&mut tailer).is_empty());
        append(&path, b"d\n");
        assert_eq!(poll_all(&mut tailer), ["d"]);
        // copytruncate then regrowth past the old offset before the next poll.
        std::fs::write(&path, b"eeeeeeeeee\n").unwrap();
        assert_eq!(poll_all(&mut tailer), ["eeeeeeeeee"]);
    }

    #[test]
    fn finishes_the_rotated_file_of_the_checkpoint_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdr.jsonl");
        append(&path, b"a\nb\n");
        let mut tailer = Tailer::new(path.clone(), None, 1024, Duration::ZERO);
        let mut out = Vec::new();
        tailer.poll(&mut out, 10).unwrap();
        let ck = out[0].checkpoint(); // only "a" acked before the crash
        std::fs::rename(&path, dir.path().join("cdr.jsonl.1")).unwrap();
        append(&path, b"c\n");
        let mut again = Tailer::new(path, Some(ck), 1024, Duration::ZERO);
        assert_eq!(poll_all(&mut again), ["b", "c"]);
    }

    #[test]
    fn cuts_oversized_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdr.jsonl");
        append(&path, &[b"x".repeat(100).as_slice(), b"\nok\n"].concat());
        let mut tailer = Tailer::new(path, None, 10, Duration::ZERO);
        let mut out = Vec::new();
        tailer.poll(&mut out, 10).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].bytes.len(), 10);
        assert_eq!(out[0].original_len, Some(100));
        assert_eq!(&out[1].bytes[..], b"ok");
        assert_eq!(out[1].original_len, None);
        assert_eq!(out[1].end_offset, 104);
    }
}
