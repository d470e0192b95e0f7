//! The two halves of a stream on the return channel: the sender's credit and frame accounting
//! (B), and the receiver's checks and digest (A). Both roles share the rules through these.

use crate::integrity::{Digest, Hasher};

use super::failure::Violation;

/// The length of the frame at `offset` of a stream of `size` bytes: every frame carries exactly
/// `min(frame, size - offset)` bytes, so credit counted in bytes also bounds frames in flight.
pub(crate) fn frame_len(frame: usize, size: u64, offset: u64) -> u64 {
    (frame as u64).min(size.saturating_sub(offset))
}

/// The sender's side of one stream: what is ready to go, what went, and the credit left.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) size: u64,
    frame: usize,
    /// Bytes the driver holds ready to send (received and saved, or on disk).
    ready: u64,
    /// Bytes sent.
    pub(crate) sent: u64,
    /// Bytes the receiver still allows.
    credit: u64,
}

impl Outgoing {
    pub(crate) fn new(size: u64, frame: usize) -> Outgoing {
        Outgoing { size, frame, ready: 0, sent: 0, credit: 0 }
    }

    /// Resumes the stream at `sent`, with its bytes up to `ready` at hand already. Credit granted
    /// so far stays: it may have come (on the other channel) before the word to resume.
    pub(crate) fn resume_at(&mut self, sent: u64, ready: u64) {
        self.ready = ready.min(self.size);
        self.sent = sent.min(self.ready);
    }

    /// More bytes are ready to send.
    pub(crate) fn add_ready(&mut self, n: u64) {
        self.ready = self.ready.saturating_add(n).min(self.size);
    }

    /// The receiver granted `n` more bytes. Saturating: the number is the peer's.
    pub(crate) fn add_credit(&mut self, n: u64) {
        self.credit = self.credit.saturating_add(n);
    }

    /// The next frame to send, if its bytes are ready and the credit covers all of it: a credit
    /// never fragments into small frames.
    pub(crate) fn next_frame(&mut self) -> Option<(u64, u64)> {
        let len = frame_len(self.frame, self.size, self.sent);
        if len == 0 || self.ready - self.sent < len || self.credit < len {
            return None;
        }
        let offset = self.sent;
        self.sent += len;
        self.credit -= len;
        Some((offset, len))
    }

    pub(crate) fn all_sent(&self) -> bool {
        self.sent == self.size
    }
}

/// The receiver's side of one stream: every `Data` frame must be the next bytes, of the right
/// length. (Credit needs no check here: the receiver grants each frame back as it takes it, so a
/// sender beyond its credit shows only as the hub's bounded queue overflowing.) The bytes themselves are hashed as the driver writes them
/// (slice by slice, while each slice is still in the cache), and the digest counts only once every
/// accepted byte has been hashed.
#[derive(Debug)]
pub(crate) struct Incoming {
    pub(crate) size: u64,
    frame: usize,
    /// Bytes accepted in frames.
    received: u64,
    hasher: Hasher,
}

impl Incoming {
    /// A stream of `size` bytes, with `window` bytes granted at once.
    pub(crate) fn new(size: u64, frame: usize) -> Incoming {
        Incoming { size, frame, received: 0, hasher: Hasher::new() }
    }

    /// A stream of which the first `hasher.size()` bytes are already held (and hashed): a resumed
    /// transfer's.
    pub(crate) fn resumed(size: u64, frame: usize, hasher: Hasher) -> Incoming {
        Incoming { size, frame, received: hasher.size().min(size), hasher }
    }

    pub(crate) fn received(&self) -> u64 {
        self.received
    }

    /// Checks one frame's place and length; the caller hashes and writes its bytes, then grants
    /// its length back.
    pub(crate) fn accept(&mut self, offset: u64, len: u64) -> Result<(), Violation> {
        let received = self.received;
        if offset != received || len == 0 || len > self.size - received {
            return Err(Violation::OutOfOrder { offset, len, received, size: self.size });
        }
        let expected = frame_len(self.frame, self.size, offset);
        if len != expected {
            return Err(Violation::FrameSize { offset, len, expected });
        }
        self.received += len;
        Ok(())
    }

    /// Hashes accepted bytes, in order; bytes beyond those accepted are ignored.
    pub(crate) fn hash(&mut self, bytes: &[u8]) {
        let room = (self.received - self.hasher.size()).min(bytes.len() as u64) as usize;
        self.hasher.update(&bytes[..room]);
    }

    pub(crate) fn complete(&self) -> bool {
        self.received == self.size
    }

    /// The stream's `End` came: every byte must be in; then the digest of what arrived.
    pub(crate) fn end(&self) -> Result<Digest, Violation> {
        if !self.complete() {
            return Err(Violation::EarlyEnd { received: self.received, size: self.size });
        }
        Ok(self.digest())
    }

    /// The digest of what was hashed: it equals the stream's only if every byte was.
    pub(crate) fn digest(&self) -> Digest {
        self.hasher.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_whole_and_within_credit() {
        let mut out = Outgoing::new(10, 4);
        out.add_ready(10);
        assert_eq!(out.next_frame(), None, "no credit yet");
        out.add_credit(6);
        assert_eq!(out.next_frame(), Some((0, 4)));
        assert_eq!(out.next_frame(), None, "2 bytes of credit do not cover a 4-byte frame");
        out.add_credit(2);
        assert_eq!(out.next_frame(), Some((4, 4)));
        out.add_credit(2);
        assert_eq!(out.next_frame(), Some((8, 2)), "the last frame is the rest");
        assert!(out.all_sent());
        assert_eq!(out.next_frame(), None);
    }

    #[test]
    fn frames_wait_for_their_bytes() {
        let mut out = Outgoing::new(10, 4);
        out.add_credit(100);
        out.add_ready(3);
        assert_eq!(out.next_frame(), None);
        out.add_ready(1);
        assert_eq!(out.next_frame(), Some((0, 4)));
    }

    #[test]
    fn incoming_checks_order_and_size() {
        let mut inc = Incoming::new(10, 4);
        assert!(matches!(inc.accept(4, 4), Err(Violation::OutOfOrder { .. })));
        assert!(matches!(inc.accept(0, 3), Err(Violation::FrameSize { expected: 4, .. })));
        assert!(matches!(inc.accept(0, 0), Err(Violation::OutOfOrder { .. })));
        inc.accept(0, 4).unwrap();
        inc.hash(b"abcd");
        inc.accept(4, 4).unwrap();
        inc.hash(b"ef");
        inc.hash(b"gh");
        assert!(matches!(inc.accept(8, 3), Err(Violation::OutOfOrder { .. })), "runs past the end");
        inc.accept(8, 2).unwrap();
        inc.hash(b"ijXX");
        assert!(inc.complete());
        let mut h = Hasher::new();
        h.update(b"abcdefghij");
        assert_eq!(inc.digest(), h.finish(), "bytes beyond those accepted are not hashed");
    }

    #[test]
    fn offsets_from_the_peer_never_overflow() {
        let mut inc = Incoming::new(10, 4);
        let e = inc.accept(u64::MAX, 1).unwrap_err();
        assert!(e.to_string().contains("Data for bytes"), "{e}");
    }
}
