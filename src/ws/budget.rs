//! The inbound budget: a bound on the bytes all connections together hold
//! in messages that have not arrived whole. tungstenite buffers a message
//! until its last fragment, so without it 10,000 peers each sending most of
//! a `--max-message-size` message, slowly, would hold tens of GiB.
//!
//! Each connection counts the bytes it has read since its last complete
//! data message, and takes those past its first [`UNCOUNTED`] from the
//! shared budget as it reads them (so the small messages of a chat never
//! touch the shared counter). A read that would overdraw the budget fails
//! with [`InboundFull`], and that connection is closed with `1013` (try
//! again later); the others go on.

use std::error::Error;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What every connection together may hold in unfinished messages.
pub(super) struct InboundBudget {
    held: AtomicUsize,
    /// Zero: no limit.
    limit: usize,
}

/// What a connection may hold without drawing on the budget: a chat
/// message's worth, so the shared counter is touched only by large ones.
pub(super) const UNCOUNTED: usize = 4 << 10;

/// A client control frame's header: 2 bytes, then the 4-byte mask (its
/// payload is at most 125 bytes, so no extended length).
const CONTROL_HEADER: usize = 6;

/// The error a read returns when the budget is spent.
#[derive(Debug)]
pub(super) struct InboundFull;

impl fmt::Display for InboundFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("inbound budget spent: the server holds too many unfinished messages")
    }
}

impl Error for InboundFull {}

/// Whether an I/O error is the budget's refusal.
pub(super) fn is_inbound_full(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<InboundFull>())
}

impl InboundBudget {
    pub fn new(limit: usize) -> InboundBudget {
        InboundBudget {
            held: AtomicUsize::new(0),
            limit,
        }
    }

    /// Bytes held now, across connections.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Takes `n` bytes, unless that would overdraw the budget.
    fn take(&self, n: usize) -> io::Result<()> {
        let held = self.held.fetch_add(n, Ordering::AcqRel) + n;
        if self.limit != 0 && held > self.limit {
            self.held.fetch_sub(n, Ordering::AcqRel);
            return Err(io::Error::other(InboundFull));
        }
        Ok(())
    }

    fn give_back(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::AcqRel);
    }
}

/// One connection's account with the budget.
pub(super) struct Account<'a> {
    budget: &'a InboundBudget,
    /// Bytes read since the connection's last complete data message.
    held: usize,
}

impl<'a> Account<'a> {
    pub fn new(budget: &'a InboundBudget) -> Account<'a> {
        Account { budget, held: 0 }
    }

    /// What holding `held` bytes draws on the budget.
    fn drawn(held: usize) -> usize {
        held.saturating_sub(UNCOUNTED)
    }

    /// Counts `n` bytes just read; fails if the budget cannot take them.
    pub fn read(&mut self, n: usize) -> io::Result<()> {
        let more = Self::drawn(self.held + n) - Self::drawn(self.held);
        if more > 0 {
            self.budget.take(more)?;
        }
        self.held += n;
        Ok(())
    }

    fn hold(&mut self, held: usize) {
        let less = Self::drawn(self.held) - Self::drawn(held);
        if less > 0 {
            self.budget.give_back(less);
        }
        self.held = held;
    }

    /// A data message arrived whole: what was held for it is free. (Bytes
    /// of the next message read in the same call are let go with it: at
    /// most one read buffer per connection goes uncounted.)
    pub fn data_message(&mut self) {
        self.hold(0);
    }

    /// A control frame with `payload` bytes arrived: only its own bytes are
    /// free, so pongs cannot keep a half-sent message from being counted.
    pub fn control_frame(&mut self, payload: usize) {
        self.hold(self.held.saturating_sub(payload + CONTROL_HEADER));
    }
}

impl Drop for Account<'_> {
    fn drop(&mut self) {
        self.hold(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_bounds_unfinished_messages_across_connections() {
        let budget = InboundBudget::new(100);
        let mut a = Account::new(&budget);
        let mut b = Account::new(&budget);
        // Small messages never draw on it.
        a.read(UNCOUNTED).unwrap();
        a.data_message();
        assert_eq!(budget.held(), 0);
        a.read(UNCOUNTED + 60).unwrap();
        let refused = b.read(UNCOUNTED + 50).unwrap_err();
        assert!(is_inbound_full(&refused));
        b.read(UNCOUNTED + 40).unwrap();
        assert_eq!(budget.held(), 100);
        // A pong frees only its own bytes; a whole message frees them all.
        a.control_frame(4);
        assert_eq!(budget.held(), 90);
        a.data_message();
        assert_eq!(budget.held(), 40);
        drop(b);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn zero_is_no_limit() {
        let budget = InboundBudget::new(0);
        let mut a = Account::new(&budget);
        a.read(usize::MAX / 2).unwrap();
    }
}
