//! A client written from docs/PROTOCOL.md with raw sockets, for tests that must say exactly what
//! the real client would not: an old protocol version, a lie, a reset at a chosen moment.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use machinaftp::integrity::{Digest, Hasher};
use machinaftp::protocol::data::{DataMsg, FRAME_HEADER_LEN, parse_frame_header};
use machinaftp::protocol::ret::{FRAME_V1, ReturnMsg, Stream};

pub fn recv_frame(s: &mut TcpStream) -> DataMsg {
    let mut head = [0u8; FRAME_HEADER_LEN];
    s.read_exact(&mut head).unwrap();
    let (ty, len) = parse_frame_header(&head).unwrap();
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).unwrap();
    DataMsg::decode(ty, &payload).unwrap()
}

pub fn digest_of(bytes: &[u8]) -> Digest {
    let mut h = Hasher::new();
    h.update(bytes);
    h.finish()
}

pub struct RawClient {
    dealer: zmq::Socket,
    _ctx: zmq::Context,
}

impl RawClient {
    /// A DEALER with the recommended routing id, connected to A's return port.
    pub fn connect(zmq_port: &str, token: [u8; 16]) -> RawClient {
        let ctx = zmq::Context::new();
        let dealer = ctx.socket(zmq::DEALER).unwrap();
        dealer.set_identity(&[&b"B"[..], &token].concat()).unwrap();
        dealer.set_rcvtimeo(20_000).unwrap();
        dealer.set_linger(1000).unwrap();
        dealer.connect(&format!("tcp://127.0.0.1:{zmq_port}")).unwrap();
        RawClient { dealer, _ctx: ctx }
    }

    /// Both channels' handshakes in protocol `version`, up to the Header; returns the data
    /// connection (with `Accept` sent) and the file's size.
    pub fn handshake(&self, tcp: &str, token: [u8; 16], version: u16) -> (TcpStream, u64) {
        let mut s = TcpStream::connect(format!("127.0.0.1:{tcp}")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(&DataMsg::Hello { version, token, return_port: 0, auth: None }.to_bytes()).unwrap();
        assert!(matches!(recv_frame(&mut s), DataMsg::Welcome { version: v, .. } if v == version));
        self.send(&ReturnMsg::Hello { version, token });
        assert!(matches!(self.recv(), ReturnMsg::HelloAck { version: v } if v == version));
        s.write_all(&DataMsg::Ready.to_bytes()).unwrap();
        let DataMsg::Header { size, .. } = recv_frame(&mut s) else { panic!("no header") };
        s.write_all(&DataMsg::Accept.to_bytes()).unwrap();
        (s, size)
    }

    pub fn send(&self, m: &ReturnMsg<'_>) {
        self.dealer.send(m.to_bytes(), 0).unwrap();
    }

    /// The next frame from A that is not a `KeepAlive` (a server kept busy by a loaded machine
    /// or a debug build sends those while a test waits for something else).
    pub fn recv(&self) -> ReturnMsg<'static> {
        loop {
            let m = self.dealer.recv_bytes(0).unwrap();
            // Leak: a test process sends a handful of small frames.
            match ReturnMsg::decode(Box::leak(m.into_boxed_slice())).unwrap() {
                ReturnMsg::KeepAlive => {}
                other => return other,
            }
        }
    }

    /// Sends `bytes` as `stream` under A's credit, claiming `claimed`, and returns A's Result.
    pub fn send_stream(&self, stream: Stream, bytes: &[u8], claimed: &Digest) -> ReturnMsg<'static> {
        self.send_stream_framed(stream, bytes, claimed, FRAME_V1)
    }

    pub fn send_stream_framed(
        &self,
        stream: Stream,
        bytes: &[u8],
        claimed: &Digest,
        frame: usize,
    ) -> ReturnMsg<'static> {
        self.send(&ReturnMsg::Offer { stream, size: bytes.len() as u64 });
        let mut credit = 0u64;
        let mut offset = 0usize;
        while offset < bytes.len() {
            let n = (bytes.len() - offset).min(frame);
            while credit < n as u64 {
                match self.recv() {
                    ReturnMsg::Credit { bytes, .. } => credit += bytes,
                    other => panic!("unexpected {other:?}"),
                }
            }
            self.send(&ReturnMsg::Data { stream, offset: offset as u64, payload: &bytes[offset..offset + n] });
            credit -= n as u64;
            offset += n;
        }
        self.send(&ReturnMsg::End { stream, crc32: claimed.crc32, blake3: claimed.blake3 });
        loop {
            match self.recv() {
                ReturnMsg::Credit { .. } => {}
                other => return other,
            }
        }
    }
}

/// Connects a version-1 raw client and completes the data leg (A's file received, `Verdict(ok)`
/// sent); returns the client for the return leg, the file, and the data connection.
pub fn raw_through_data_leg(tcp: &str, zmq_port: &str, token: [u8; 16]) -> (RawClient, Vec<u8>, TcpStream) {
    let client = RawClient::connect(zmq_port, token);
    let (mut s, size) = client.handshake(tcp, token, 1);
    let mut file = vec![0u8; size as usize];
    s.read_exact(&mut file).unwrap();
    assert!(matches!(recv_frame(&mut s), DataMsg::Trailer { .. }));
    s.write_all(&DataMsg::Verdict { ok: true, reason: String::new() }.to_bytes()).unwrap();
    (client, file, s)
}
