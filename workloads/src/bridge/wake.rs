//! Waking the reader when the tailed file changes, instead of looking at it every poll interval.
//!
//! An inotify watch on the file's directory reports appends and truncation of the file, and its
//! rotation (renamed away, created anew) too. The poll interval stays as the longest wait, so a
//! change inotify does not report (another mount, a network file system, a directory that does
//! not exist yet, the inotify limits of the node reached) is still seen, only later.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

/// Waits for a change in the tailed file's directory, or the poll interval.
pub struct Wake {
    dir: PathBuf,
    poll_interval: Duration,
    inotify: Option<Inotify>,
    watching: bool,
}

impl Wake {
    /// Watches the directory of `file` (when it exists; it is tried again on every wait until it
    /// does), never waiting longer than `poll_interval`.
    pub fn new(file: &Path, poll_interval: Duration) -> Self {
        let dir = match file.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        let inotify = match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) {
            Ok(inotify) => Some(inotify),
            Err(error) => {
                tracing::warn!(%error, "inotify unavailable; looking at the file every poll interval");
                None
            }
        };
        let mut wake = Self {
            dir,
            poll_interval,
            inotify,
            watching: false,
        };
        wake.watch();
        wake
    }

    /// Whether changes wake the reader (else it only polls).
    pub fn is_watching(&self) -> bool {
        self.watching
    }

    fn watch(&mut self) {
        let Some(inotify) = &self.inotify else {
            return;
        };
        let mask = AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_ATTRIB
            | AddWatchFlags::IN_CLOSE_WRITE;
        match inotify.add_watch(&self.dir, mask) {
            Ok(_) => {
                tracing::debug!(dir = %self.dir.display(), "watching for changes");
                self.watching = true;
            }
            Err(error) => {
                tracing::debug!(%error, dir = %self.dir.display(), "cannot watch the directory yet");
            }
        }
    }

    /// Returns once something changed in the directory, or after the poll interval; `true` when
    /// woken by a change.
    pub fn wait(&mut self) -> bool {
        if !self.watching {
            self.watch();
        }
        let Some(inotify) = self.inotify.as_ref().filter(|_| self.watching) else {
            std::thread::sleep(self.poll_interval);
            return false;
        };
        let timeout = PollTimeout::try_from(self.poll_interval).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
        let woken = match poll(&mut fds, timeout) {
            Ok(ready) => ready > 0,
            Err(Errno::EINTR) => false,
            Err(error) => {
                tracing::warn!(%error, "waiting for inotify failed; polling instead");
                std::thread::sleep(self.poll_interval);
                false
            }
        };
        // Take every queued event: one read of the file covers them all.
        loop {
            match inotify.read_events() {
                Ok(events) if events.is_empty() => break,
                Ok(events) => {
                    if events
                        .iter()
                        .any(|event| event.mask.contains(AddWatchFlags::IN_IGNORED))
                    {
                        // The directory went away: watch it again once it is back.
                        self.watching = false;
                    }
                }
                Err(Errno::EAGAIN) => break,
                Err(error) => {
                    tracing::debug!(%error, "reading inotify events failed");
                    break;
                }
            }
        }
        woken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn an_append_wakes_long_before_the_poll_interval() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cdr.jsonl");
        std::fs::write(&file, b"").unwrap();
        let mut wake = Wake::new(&file, Duration::from_secs(30));
        assert!(wake.is_watching());
        let writer = {
            let file = file.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&file)
                    .unwrap();
                f.write_all(b"line\n").unwrap();
            })
        };
        // Not the 30 s poll interval: the append itself ends the wait.
        assert!(wake.wait(), "woken by the append");
        writer.join().unwrap();
    }

    #[test]
    fn without_a_change_it_returns_after_the_poll_interval() {
        let dir = tempfile::tempdir().unwrap();
        let mut wake = Wake::new(&dir.path().join("cdr.jsonl"), Duration::from_millis(20));
        assert!(!wake.wait(), "nothing changed");
    }

    #[test]
    fn a_missing_directory_is_polled_then_watched_once_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("acc");
        let mut wake = Wake::new(&sub.join("cdr.jsonl"), Duration::from_millis(10));
        assert!(!wake.is_watching());
        assert!(!wake.wait());
        std::fs::create_dir(&sub).unwrap();
        wake.wait();
        assert!(wake.is_watching());
    }
}
