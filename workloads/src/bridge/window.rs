//! The publish window: what was handed to NATS and is not yet acked, in file order.
//!
//! Units (one line, or the lines of one atomic batch) are opened in the order they were read and
//! may be acked in any order. The checkpoint may only move past the longest acked prefix: a unit
//! acked while an earlier one still waits moves nothing until that one is acked too, so a crash
//! never skips an unacked line. The window holds at most `max_units` units and `max_lines` lines;
//! when it is empty it takes one unit of any size, so an oversized unit cannot stall it.
//!
//! Pure bookkeeping: no I/O, no clock. The caller publishes and reports acks with the
//! [`Ticket`] each unit got when it was opened.

use std::collections::VecDeque;

/// Names one open unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

#[derive(Debug)]
struct Slot<M> {
    /// What the checkpoint becomes once this unit and every one before it are acked.
    mark: M,
    lines: usize,
    acked: bool,
}

/// Units in flight, and the mark past the longest acked prefix.
#[derive(Debug)]
pub struct Window<M> {
    slots: VecDeque<Slot<M>>,
    /// Ticket number of `slots[0]`.
    first: u64,
    lines: usize,
    max_units: usize,
    max_lines: usize,
    acked: Option<M>,
}

impl<M> Window<M> {
    /// An empty window of at most `max_units` units and `max_lines` lines (each at least 1).
    pub fn new(max_units: usize, max_lines: usize) -> Self {
        Self {
            slots: VecDeque::new(),
            first: 0,
            lines: 0,
            max_units: max_units.max(1),
            max_lines: max_lines.max(1),
            acked: None,
        }
    }

    /// How many lines the next unit may hold: 0 when the window is full.
    pub fn room(&self) -> usize {
        if self.slots.is_empty() {
            return usize::MAX;
        }
        if self.slots.len() >= self.max_units {
            return 0;
        }
        self.max_lines.saturating_sub(self.lines)
    }

    /// Units in flight.
    pub fn units(&self) -> usize {
        self.slots.len()
    }

    /// Lines in flight.
    pub fn lines(&self) -> usize {
        self.lines
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Opens a unit of `lines` lines after every open one; `mark` is the checkpoint just past
    /// its last line. The caller checks [`room`](Self::room) first: the window does not refuse.
    pub fn open(&mut self, mark: M, lines: usize) -> Ticket {
        let ticket = Ticket(self.first + self.slots.len() as u64);
        self.slots.push_back(Slot {
            mark,
            lines,
            acked: false,
        });
        self.lines += lines;
        ticket
    }

    /// Records the ack of `ticket`'s unit. Returns whether the acked prefix moved. Acking an
    /// unknown or already acked ticket changes nothing.
    pub fn ack(&mut self, ticket: Ticket) -> bool {
        let Some(index) = ticket
            .0
            .checked_sub(self.first)
            .and_then(|i| usize::try_from(i).ok())
        else {
            return false;
        };
        match self.slots.get_mut(index) {
            Some(slot) => slot.acked = true,
            None => return false,
        }
        let mut moved = false;
        while self.slots.front().is_some_and(|slot| slot.acked) {
            if let Some(slot) = self.slots.pop_front() {
                self.first += 1;
                self.lines -= slot.lines;
                self.acked = Some(slot.mark);
                moved = true;
            }
        }
        moved
    }

    /// The mark past the longest acked prefix, once anything was acked.
    pub fn acked(&self) -> Option<&M> {
        self.acked.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_moves_only_over_acked_units() {
        let mut window = Window::new(10, 100);
        let a = window.open("a", 1);
        let b = window.open("b", 1);
        let c = window.open("c", 1);
        assert_eq!(window.acked(), None);
        assert!(!window.ack(b), "b acked before a moves nothing");
        assert!(!window.ack(c));
        assert_eq!(window.acked(), None);
        assert_eq!(window.units(), 3);
        assert!(window.ack(a), "a fills the gap: the prefix jumps to c");
        assert_eq!(window.acked(), Some(&"c"));
        assert!(window.is_empty());
        assert_eq!(window.lines(), 0);
    }

    #[test]
    fn acks_in_order_move_one_by_one() {
        let mut window = Window::new(10, 100);
        let tickets: Vec<Ticket> = (0..5).map(|i| window.open(i, 2)).collect();
        assert_eq!(window.lines(), 10);
        for (i, ticket) in tickets.into_iter().enumerate() {
            assert!(window.ack(ticket));
            assert_eq!(window.acked(), Some(&i));
        }
    }

    #[test]
    fn unknown_and_repeated_acks_change_nothing() {
        let mut window = Window::new(10, 100);
        let a = window.open(1, 1);
        let b = window.open(2, 1);
        assert!(window.ack(a));
        assert!(!window.ack(a), "a again");
        assert!(!window.ack(Ticket(99)), "never opened");
        assert_eq!(window.acked(), Some(&1));
        assert!(window.ack(b));
        assert_eq!(window.acked(), Some(&2));
        assert!(!window.ack(b));
    }

    #[test]
    fn room_is_bounded_by_units_and_lines() {
        let mut window = Window::new(2, 1000);
        assert_eq!(window.room(), usize::MAX, "an empty window takes any unit");
        let a = window.open((), 600);
        assert_eq!(window.room(), 400);
        let _b = window.open((), 400);
        assert_eq!(window.room(), 0, "two units: full");
        window.ack(a);
        assert_eq!(window.room(), 600);

        let mut lines = Window::new(100, 10);
        lines.open((), 10);
        assert_eq!(lines.room(), 0, "ten lines: full");
    }

    #[test]
    fn an_oversized_unit_enters_an_empty_window() {
        let mut window = Window::new(4, 10);
        let big = window.open("big", 50);
        assert_eq!(window.lines(), 50);
        assert_eq!(window.room(), 0);
        assert!(window.ack(big));
        assert_eq!(window.room(), usize::MAX);
    }
}
