//! Access control and encryption from a shared secret: SPAKE2 turns the secret (which may be a
//! short code a person types) into a session key without exposing it to an offline dictionary
//! attack, key confirmation proves both sides hold the same secret before any file byte moves,
//! and every byte after the handshake travels in AES-256-GCM records whose nonces are counters.
//!
//! Everything here is pure: no sockets. The transports seal and open with [`Sealer`] and
//! [`Opener`]; `docs/SECURITY.md` gives the threat model and `docs/PROTOCOL.md` the wire format.

use std::fmt;
use std::path::Path;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::{hkdf, hmac};
use spake2::{Ed25519Group, Identity, Password, Spake2};

/// Bytes of a SPAKE2 message (Ed25519: a side byte and a compressed point).
pub const PAKE_MSG_LEN: usize = 33;
/// Bytes of a key-confirmation tag (HMAC-SHA256).
pub const CONFIRM_LEN: usize = 32;
/// Bytes an AEAD tag adds to each record or message.
pub const TAG_LEN: usize = 16;
/// The most plaintext one data-channel record carries.
pub const MAX_RECORD: usize = 64 << 10;
/// A record's header: the length of what follows (ciphertext and tag), big-endian.
pub const RECORD_HEADER: usize = 4;
/// The longest secret accepted, in bytes.
pub const MAX_SECRET: usize = 1024;

/// SPAKE2's identities: the roles are fixed, so a message cannot be reflected to its sender.
const ID_CLIENT: &[u8] = b"machinaftp v5 client";
const ID_SERVER: &[u8] = b"machinaftp v5 server";

/// The shared secret. Its bytes are never logged or shown.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// A secret as given (`--secret`, `MACHINAFTP_SECRET`): any non-empty text of at most
    /// [`MAX_SECRET`] bytes, taken exactly.
    pub fn new(text: &str) -> Result<Secret, String> {
        match text.len() {
            0 => Err("the secret is empty".into()),
            n if n > MAX_SECRET => Err(format!("the secret is {n} bytes; at most {MAX_SECRET} are allowed")),
            _ => Ok(Secret(text.as_bytes().to_vec())),
        }
    }

    /// The secret in a file (`--secret-file`): its text without the line end an editor adds.
    pub fn from_file(path: &Path) -> Result<Secret, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Secret::new(text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text))
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// A strong random secret for `machinaftp keygen`: 130 bits as 26 letters and digits of
    /// Crockford's base 32 (no I, L, O, U), in groups of four or two for typing.
    pub fn generate() -> Result<String, getrandom::Error> {
        const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
        let mut bytes = [0u8; 26];
        getrandom::fill(&mut bytes)?;
        let chars: Vec<char> = bytes.iter().map(|b| ALPHABET[usize::from(b & 31)] as char).collect();
        Ok(chars.chunks(4).map(|c| c.iter().collect::<String>()).collect::<Vec<_>>().join("-"))
    }
}

/// Why a handshake did not authenticate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The peer's SPAKE2 message is not one (wrong length, not a point, wrong side).
    #[error("the peer's key-exchange message is malformed")]
    BadMessage,
    /// The peer's confirmation does not match: it holds another secret, or none.
    #[error("the peer does not hold the same secret")]
    WrongSecret,
}

/// The keys of one session, for one side: what it seals and what it opens, on each channel.
pub struct SessionKeys {
    /// Seals this side's bytes on the data channel.
    pub data_out: Sealer,
    /// Opens the peer's bytes on the data channel.
    pub data_in: Opener,
    /// Seals this side's return-channel messages.
    pub ret_out: Sealer,
    /// Opens the peer's return-channel messages.
    pub ret_in: Opener,
    /// What B's return-channel `Hello` carries instead of the session token, which crossed the
    /// data channel in the clear: only the holders of the secret know it, so no one else can
    /// claim the session's return channel.
    pub ret_token: [u8; 16],
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

/// The secrets derived from SPAKE2's key, before they are split by role.
struct Schedule {
    confirm_server: hmac::Key,
    confirm_client: hmac::Key,
    data_a2b: [u8; 32],
    data_b2a: [u8; 32],
    ret_a2b: [u8; 32],
    ret_b2a: [u8; 32],
    ret_token: [u8; 16],
}

/// A length for `ring::hkdf` output.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl Schedule {
    /// HKDF-SHA256 with the session's token as salt and SPAKE2's key as input; one label per key.
    fn derive(token: &[u8; 16], key: &[u8]) -> Schedule {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, token).extract(key);
        let expand = |label: &str| -> [u8; 32] {
            let mut out = [0u8; 32];
            let labels = [label.as_bytes()];
            // Only a length over 255 hash lengths fails; 32 bytes cannot.
            if let Ok(okm) = prk.expand(&labels, Len(32)) {
                let _ = okm.fill(&mut out);
            }
            out
        };
        Schedule {
            confirm_server: hmac::Key::new(hmac::HMAC_SHA256, &expand("machinaftp v5 confirm server")),
            confirm_client: hmac::Key::new(hmac::HMAC_SHA256, &expand("machinaftp v5 confirm client")),
            data_a2b: expand("machinaftp v5 data server to client"),
            data_b2a: expand("machinaftp v5 data client to server"),
            ret_a2b: expand("machinaftp v5 return server to client"),
            ret_b2a: expand("machinaftp v5 return client to server"),
            ret_token: {
                let mut t = [0u8; 16];
                t.copy_from_slice(&expand("machinaftp v5 return token")[..16]);
                t
            },
        }
    }

    /// What both sides confirm: the two SPAKE2 messages, client's first.
    fn transcript(client_msg: &[u8], server_msg: &[u8]) -> Vec<u8> {
        [client_msg, server_msg].concat()
    }
}

/// B's side of the handshake.
pub struct ClientHandshake {
    spake: Spake2<Ed25519Group>,
    msg: [u8; PAKE_MSG_LEN],
}

impl fmt::Debug for ClientHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientHandshake(..)")
    }
}

impl ClientHandshake {
    /// Starts: the message for `Hello`.
    pub fn start(secret: &Secret) -> ClientHandshake {
        let (spake, msg) = Spake2::<Ed25519Group>::start_a(
            &Password::new(&secret.0),
            &Identity::new(ID_CLIENT),
            &Identity::new(ID_SERVER),
        );
        let mut m = [0u8; PAKE_MSG_LEN];
        m.copy_from_slice(&msg[..PAKE_MSG_LEN.min(msg.len())]);
        ClientHandshake { spake, msg: m }
    }

    /// This side's SPAKE2 message.
    pub fn message(&self) -> [u8; PAKE_MSG_LEN] {
        self.msg
    }

    /// Finishes with A's message and confirmation (from `Welcome`): the session's keys and this
    /// side's confirmation (for `Confirm`), or why A is not to be trusted.
    pub fn finish(
        self,
        token: &[u8; 16],
        server_msg: &[u8],
        server_confirm: &[u8],
    ) -> Result<(SessionKeys, [u8; CONFIRM_LEN]), AuthError> {
        let key = self.spake.finish(server_msg).map_err(|_| AuthError::BadMessage)?;
        let s = Schedule::derive(token, &key);
        let transcript = Schedule::transcript(&self.msg, server_msg);
        hmac::verify(&s.confirm_server, &transcript, server_confirm).map_err(|_| AuthError::WrongSecret)?;
        let mine = tag(&s.confirm_client, &transcript);
        let keys = SessionKeys {
            data_out: Sealer::new(&s.data_b2a),
            data_in: Opener::new(&s.data_a2b),
            ret_out: Sealer::new(&s.ret_b2a),
            ret_in: Opener::new(&s.ret_a2b),
            ret_token: s.ret_token,
        };
        Ok((keys, mine))
    }
}

/// What A answers a client's SPAKE2 message with, and what it then expects.
pub struct ServerReply {
    /// A's SPAKE2 message, for `Welcome`.
    pub msg: [u8; PAKE_MSG_LEN],
    /// A's confirmation, for `Welcome`.
    pub confirm: [u8; CONFIRM_LEN],
    /// The session's keys. The return channel may use them at once (only the holder of the
    /// secret can open what they seal); the data channel only once [`ConfirmCheck::verify`]
    /// passed, since B's `Confirm` comes on it in the clear.
    pub keys: SessionKeys,
    /// Checks B's confirmation.
    pub check: ConfirmCheck,
}

/// What A expects in B's `Confirm`.
pub struct ConfirmCheck {
    expected: hmac::Key,
    transcript: Vec<u8>,
}

impl fmt::Debug for ConfirmCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConfirmCheck(..)")
    }
}

impl ConfirmCheck {
    /// Whether B's tag proves the same secret (compared in constant time).
    pub fn verify(&self, client_confirm: &[u8]) -> Result<(), AuthError> {
        hmac::verify(&self.expected, &self.transcript, client_confirm).map_err(|_| AuthError::WrongSecret)
    }
}

impl fmt::Debug for ServerReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerReply(..)")
    }
}

impl ServerReply {
    /// A's side, in one step: `client_msg` comes from `Hello`.
    pub fn respond(secret: &Secret, token: &[u8; 16], client_msg: &[u8]) -> Result<ServerReply, AuthError> {
        let (spake, msg) = Spake2::<Ed25519Group>::start_b(
            &Password::new(&secret.0),
            &Identity::new(ID_CLIENT),
            &Identity::new(ID_SERVER),
        );
        let key = spake.finish(client_msg).map_err(|_| AuthError::BadMessage)?;
        let s = Schedule::derive(token, &key);
        let transcript = Schedule::transcript(client_msg, &msg);
        let mut m = [0u8; PAKE_MSG_LEN];
        m.copy_from_slice(&msg[..PAKE_MSG_LEN.min(msg.len())]);
        Ok(ServerReply {
            msg: m,
            confirm: tag(&s.confirm_server, &transcript),
            keys: SessionKeys {
                data_out: Sealer::new(&s.data_a2b),
                data_in: Opener::new(&s.data_b2a),
                ret_out: Sealer::new(&s.ret_a2b),
                ret_in: Opener::new(&s.ret_b2a),
                ret_token: s.ret_token,
            },
            check: ConfirmCheck { expected: s.confirm_client, transcript },
        })
    }
}

fn tag(key: &hmac::Key, transcript: &[u8]) -> [u8; CONFIRM_LEN] {
    let mut out = [0u8; CONFIRM_LEN];
    out.copy_from_slice(hmac::sign(key, transcript).as_ref());
    out
}

/// The nonce of the `n`th record or message under one key: the counter, big-endian, in the last
/// eight of twelve bytes. Each key seals in one direction on one channel, so no nonce repeats.
fn nonce(n: u64) -> Nonce {
    let mut b = [0u8; 12];
    b[4..].copy_from_slice(&n.to_be_bytes());
    Nonce::assume_unique_for_key(b)
}

/// Seals one direction of one channel.
pub struct Sealer {
    key: LessSafeKey,
    next: u64,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealer(next={})", self.next)
    }
}

/// An AES-256-GCM key from 32 derived bytes.
fn aes_key(key: &[u8; 32]) -> LessSafeKey {
    // AES-256 takes any 32 bytes: this cannot fail.
    UnboundKey::new(&AES_256_GCM, key).map(LessSafeKey::new).expect("a 32-byte AES-256 key")
}

impl Sealer {
    fn new(key: &[u8; 32]) -> Sealer {
        Sealer { key: aes_key(key), next: 0 }
    }

    fn seal(&mut self, aad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
        let n = self.next;
        self.next += 1;
        let mut out = [0u8; TAG_LEN];
        // Sealing fails only for inputs over 64 GiB; records and messages are far smaller.
        if let Ok(tag) = self.key.seal_in_place_separate_tag(nonce(n), Aad::from(aad), buf) {
            out.copy_from_slice(tag.as_ref());
        }
        out
    }

    /// Appends one data-channel record carrying `plain` (at most [`MAX_RECORD`] bytes) to `out`:
    /// the header, then the ciphertext and tag. The header is authenticated too.
    pub fn seal_record(&mut self, plain: &[u8], out: &mut Vec<u8>) {
        debug_assert!(plain.len() <= MAX_RECORD);
        let header = ((plain.len() + TAG_LEN) as u32).to_be_bytes();
        out.extend_from_slice(&header);
        let start = out.len();
        out.extend_from_slice(plain);
        let tag = self.seal(&header, &mut out[start..]);
        out.extend_from_slice(&tag);
    }

    /// Seals one return-channel message: ciphertext then tag.
    pub fn seal_message(&mut self, plain: &[u8]) -> Vec<u8> {
        self.seal_message_after(&[], plain)
    }

    /// `head` (not sealed, not authenticated: a type byte), then `plain` sealed, in one buffer.
    pub fn seal_message_after(&mut self, head: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(head.len() + plain.len() + TAG_LEN);
        out.extend_from_slice(head);
        out.extend_from_slice(plain);
        let tag = self.seal(&[], &mut out[head.len()..]);
        out.extend_from_slice(&tag);
        out
    }
}

/// Opens one direction of one channel, in order: a record or message that was altered,
/// dropped, replayed or reordered fails to open.
pub struct Opener {
    key: LessSafeKey,
    next: u64,
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Opener(next={})", self.next)
    }
}

/// A record or message that did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Its length is impossible (shorter than a tag, or a record longer than [`MAX_RECORD`]).
    #[error("a sealed record of {0} bytes is impossible")]
    Length(u64),
    /// It was altered, or is not the next one in order (dropped, replayed, reordered), or comes
    /// from someone without the session's keys.
    #[error("sealed record {0} failed authentication (altered, out of order, or not from the peer)")]
    Forged(u64),
}

impl Opener {
    fn new(key: &[u8; 32]) -> Opener {
        Opener { key: aes_key(key), next: 0 }
    }

    fn open<'a>(&mut self, aad: &[u8], sealed: &'a mut [u8]) -> Result<&'a mut [u8], OpenError> {
        if sealed.len() < TAG_LEN {
            return Err(OpenError::Length(sealed.len() as u64));
        }
        let n = self.next;
        let plain = self.key.open_in_place(nonce(n), Aad::from(aad), sealed).map_err(|_| OpenError::Forged(n))?;
        self.next += 1;
        Ok(plain)
    }

    /// The length of the record whose header is `header` (ciphertext and tag), checked.
    pub fn record_len(header: [u8; RECORD_HEADER]) -> Result<usize, OpenError> {
        let len = u32::from_be_bytes(header) as usize;
        if !(TAG_LEN..=MAX_RECORD + TAG_LEN).contains(&len) {
            return Err(OpenError::Length(len as u64));
        }
        Ok(len)
    }

    /// Opens a record's body (ciphertext and tag) in place, given its header; the plaintext is
    /// the front of `body`.
    pub fn open_record<'a>(
        &mut self,
        header: [u8; RECORD_HEADER],
        body: &'a mut [u8],
    ) -> Result<&'a mut [u8], OpenError> {
        self.open(&header, body)
    }

    /// Opens one return-channel message in place.
    pub fn open_message<'a>(&mut self, sealed: &'a mut [u8]) -> Result<&'a mut [u8], OpenError> {
        self.open(&[], sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: [u8; 16] = [7; 16];

    fn pair(a: &str, b: &str) -> Result<(SessionKeys, SessionKeys), AuthError> {
        let client = ClientHandshake::start(&Secret::new(b).unwrap());
        let reply = ServerReply::respond(&Secret::new(a).unwrap(), &TOKEN, &client.message())?;
        let (ck, confirm) = client.finish(&TOKEN, &reply.msg, &reply.confirm)?;
        reply.check.verify(&confirm)?;
        Ok((reply.keys, ck))
    }

    #[test]
    fn the_same_secret_agrees_on_keys_both_ways() {
        let (mut server, mut client) = pair("castle-7-drum", "castle-7-drum").unwrap();
        let mut wire = Vec::new();
        for part in [&b"first"[..], b"", &[0x55; MAX_RECORD]] {
            server.data_out.seal_record(part, &mut wire);
        }
        let mut rest = &mut wire[..];
        for part in [&b"first"[..], b"", &[0x55; MAX_RECORD]] {
            let header: [u8; 4] = rest[..4].try_into().unwrap();
            let len = Opener::record_len(header).unwrap();
            let (body, tail) = rest[4..].split_at_mut(len);
            assert_eq!(client.data_in.open_record(header, body).unwrap(), part);
            rest = tail;
        }
        let mut m = client.ret_out.seal_message(b"hello A");
        assert_eq!(server.ret_in.open_message(&mut m).unwrap(), b"hello A");
        let mut m = server.ret_out.seal_message(b"hello B");
        assert_eq!(client.ret_in.open_message(&mut m).unwrap(), b"hello B");
        let mut m = client.data_out.seal_message(b"up");
        assert_eq!(server.data_in.open_message(&mut m).unwrap(), b"up");
        assert_eq!(server.ret_token, client.ret_token);
        assert_ne!(server.ret_token, TOKEN);
    }

    #[test]
    fn a_different_secret_is_refused_by_the_client_first() {
        let client = ClientHandshake::start(&Secret::new("castle-7-drum").unwrap());
        let reply = ServerReply::respond(&Secret::new("castle-7-drun").unwrap(), &TOKEN, &client.message()).unwrap();
        assert_eq!(client.finish(&TOKEN, &reply.msg, &reply.confirm).err(), Some(AuthError::WrongSecret));
        // And a client that lies about its confirmation is refused by the server.
        assert_eq!(reply.check.verify(&[0u8; CONFIRM_LEN]).err(), Some(AuthError::WrongSecret));
    }

    #[test]
    fn malformed_messages_are_refused() {
        let secret = Secret::new("x").unwrap();
        assert_eq!(ServerReply::respond(&secret, &TOKEN, &[0u8; 5]).err(), Some(AuthError::BadMessage));
        // A client's own message reflected back as the server's is the wrong side.
        let client = ClientHandshake::start(&secret);
        let own = client.message();
        assert_eq!(client.finish(&TOKEN, &own, &[0u8; 32]).err(), Some(AuthError::BadMessage));
    }

    #[test]
    fn altered_dropped_replayed_or_reordered_messages_fail() {
        let (mut server, mut client) = pair("s", "s").unwrap();
        let m0 = client.ret_out.seal_message(b"zero");
        let m1 = client.ret_out.seal_message(b"one");
        let m2 = client.ret_out.seal_message(b"two");
        // Reordered: m1 first.
        assert_eq!(server.ret_in.open_message(&mut m1.clone()).err(), Some(OpenError::Forged(0)));
        assert_eq!(server.ret_in.open_message(&mut m0.clone()).unwrap(), b"zero");
        // Replayed.
        assert!(server.ret_in.open_message(&mut m0.clone()).is_err());
        // Altered.
        let mut bad = m1.clone();
        bad[1] ^= 1;
        assert!(server.ret_in.open_message(&mut bad).is_err());
        assert_eq!(server.ret_in.open_message(&mut m1.clone()).unwrap(), b"one");
        // Dropped: m2's turn is skipped, so what follows does not open.
        let m3 = client.ret_out.seal_message(b"three");
        assert!(server.ret_in.open_message(&mut m3.clone()).is_err());
        assert_eq!(server.ret_in.open_message(&mut m2.clone()).unwrap(), b"two");
        // A record's header is authenticated: a changed length does not open.
        let mut wire = Vec::new();
        server.data_out.seal_record(b"abc", &mut wire);
        let header = [0, 0, 0, 18];
        assert!(client.data_in.open_record(header, &mut wire[4..4 + 18]).is_err());
        assert_eq!(Opener::record_len([0, 0, 0, 15]), Err(OpenError::Length(15)));
        assert!(Opener::record_len(((MAX_RECORD + TAG_LEN + 1) as u32).to_be_bytes()).is_err());
    }

    #[test]
    fn secrets_are_checked_and_generated_strong() {
        assert!(Secret::new("").is_err());
        assert!(Secret::new(&"x".repeat(MAX_SECRET + 1)).is_err());
        let g = Secret::generate().unwrap();
        assert_eq!(g.len(), 26 + 6, "{g}");
        assert!(g.chars().all(|c| c == '-' || "0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(c)), "{g}");
        assert_ne!(g, Secret::generate().unwrap());
        assert!(format!("{:?}", Secret::new("hunter2").unwrap()) == "Secret(..)");
    }
}
