//! The errors the library reports, one variant per thing that can go wrong, each saying what and
//! where. A cause is carried as `#[source]`, never repeated in the message, so `main` prints the
//! chain once ([`chain`]), adds [`Error::hint`] and exits with [`Error::exit_code`].

use std::io;
use std::path::PathBuf;

pub use crate::session::chain;
use crate::session::{CsvFailure, Failure, LocalFailure};
use crate::stl::ConvertError;
use crate::transport::hub::HubError;
use crate::transport::ret::WiringError;

/// Exit statuses, documented in the README.
pub mod exit {
    /// Both legs verified.
    pub const OK: i32 = 0;
    /// A transfer completed but a checksum or size did not match.
    pub const MISMATCH: i32 = 1;
    /// Bad command line or unreadable input file.
    pub const USAGE: i32 = 2;
    /// Network trouble or a peer that refused, vanished, timed out or broke the protocol.
    pub const NETWORK: i32 = 3;
    /// A local file could not be written (disk full, permissions).
    pub const LOCAL_IO: i32 = 4;
    /// The round trip verified, but the STL could not be converted to CSV (or `stl2csv` failed on
    /// its input).
    pub const CSV: i32 = 5;
    /// The peers do not share the secret: nothing of the file moved.
    pub const AUTH: i32 = 6;
    /// Interrupted by SIGINT or SIGTERM (128 + 2, the shell's convention for SIGINT).
    pub const INTERRUPTED: i32 = 130;
}

/// Everything that can end a server or client run unsuccessfully.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file to serve cannot be opened or is not a regular file.
    #[error("cannot read input file {path}")]
    Input {
        /// The path given with `-f`.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A command-line value is unusable.
    #[error("{0}")]
    Usage(String),
    /// Listening on an address failed.
    #[error("cannot listen on {addr} for the {channel}")]
    Bind {
        /// The address.
        addr: String,
        /// Which channel and the flag that sets its port.
        channel: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The return channel's ROUTER could not be set up.
    #[error("return channel (--zmq-port)")]
    Hub(#[source] HubError),
    /// Nothing accepts connections at the address.
    #[error("no server is listening at {addr} (connection refused)")]
    NoServer {
        /// The address tried.
        addr: String,
    },
    /// Connecting failed for another reason (unreachable, timeout, bad name).
    #[error("cannot connect to {addr}")]
    Connect {
        /// The address tried.
        addr: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// B's return channel could not be opened.
    #[error("return channel")]
    Wiring(#[source] WiringError),
    /// A local file could not be created or written.
    #[error("cannot write {path}")]
    Output {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A round trip failed.
    #[error("round trip with {peer}")]
    Session {
        /// `server HOST:PORT` or `client HOST:PORT`.
        peer: String,
        /// What went wrong.
        #[source]
        failure: Box<Failure>,
    },
    /// STL to CSV conversion failed.
    #[error(transparent)]
    Convert(#[from] ConvertError),
    /// SIGINT/SIGTERM stopped the run.
    #[error("interrupted by a signal; temporary files were removed")]
    Interrupted,
    /// A session's thread panicked (a bug); the server went on.
    #[error("the session with {peer} crashed")]
    Crashed {
        /// The client.
        peer: String,
    },
}

impl Error {
    /// For `map_err`: a local file at `path` could not be written.
    pub fn output(path: &std::path::Path) -> impl FnOnce(io::Error) -> Error + use<> {
        let path = path.to_path_buf();
        move |source| Error::Output { path, source }
    }

    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Input { .. } | Error::Usage(_) | Error::Bind { .. } | Error::Hub(HubError::Bind { .. }) => {
                exit::USAGE
            }
            Error::Output { .. } => exit::LOCAL_IO,
            Error::Convert(ConvertError::Open { .. }) => exit::USAGE,
            Error::Convert(ConvertError::Write { .. }) => exit::LOCAL_IO,
            Error::Convert(ConvertError::Stl { .. }) => exit::CSV,
            Error::Interrupted | Error::Convert(ConvertError::Stopped) => exit::INTERRUPTED,
            Error::Session { failure, .. } => failure_exit(failure),
            Error::Hub(_)
            | Error::NoServer { .. }
            | Error::Connect { .. }
            | Error::Wiring(_)
            | Error::Crashed { .. } => exit::NETWORK,
        }
    }

    /// What the user might do about it, where there is something useful to say.
    pub fn hint(&self) -> Option<&'static str> {
        Some(match self {
            Error::Input { .. } => "check the path given with -f/--filename",
            Error::Convert(ConvertError::Open { .. }) => "check the input path",
            Error::Bind { source, .. } | Error::Hub(HubError::Bind { source, .. }) => bind_hint(source),
            Error::NoServer { .. } => {
                "start the server first (machinaftp --server ...) and check -H/--host and -p/--port"
            }
            Error::Connect { .. } => "check -H/--host and -p/--port, and that the network path is open",
            Error::Wiring(_) => {
                "check that the ZeroMQ port (--zmq-port, default PORT+1) is reachable and not firewalled"
            }
            Error::Output { source, .. } | Error::Convert(ConvertError::Write { source, .. }) => output_hint(source),
            Error::Convert(ConvertError::Stl { .. }) => {
                "the file is not valid STL at the place named; fix or re-export it"
            }
            Error::Session { failure, .. } => return failure_hint(failure),
            _ => return None,
        })
    }
}

/// What to do about an address that cannot be listened on, by why: a port in use and an address
/// this machine does not have call for different fixes.
fn bind_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::AddrNotAvailable => {
            "-H is not an address of this machine: give one of its own (see `ip addr`), or 0.0.0.0 for all"
        }
        io::ErrorKind::PermissionDenied => "ports below 1024 need privileges: pick a higher one with the flag named",
        io::ErrorKind::AddrInUse => {
            "another process holds that port: pick another with the flag named (0 picks a free one)"
        }
        _ => "check -H and the port flag named",
    }
}

/// What to do about a file that cannot be written, by what went wrong: "check free space" is no
/// help for a directory that does not exist.
fn output_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::IsADirectory => "name a file, not a directory",
        io::ErrorKind::NotFound => "the destination directory does not exist: create it, or name one that does",
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            "check the permissions of the destination directory"
        }
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => "free some space in the destination directory",
        _ => "check free space and permissions in the destination directory",
    }
}

fn failure_exit(f: &Failure) -> i32 {
    match f {
        Failure::Mismatch { .. } | Failure::SizeMismatch { .. } | Failure::PeerMismatch { .. } => exit::MISMATCH,
        Failure::Local(LocalFailure::Input { .. } | LocalFailure::SourceChanged { .. }) => exit::USAGE,
        Failure::Local(LocalFailure::Output { .. } | LocalFailure::NoRoom { .. }) => exit::LOCAL_IO,
        Failure::Csv(_) => exit::CSV,
        Failure::Auth { .. } => exit::AUTH,
        Failure::Interrupted => exit::INTERRUPTED,
        _ => exit::NETWORK,
    }
}

fn failure_hint(f: &Failure) -> Option<&'static str> {
    Some(match f {
        Failure::Timeout { during: crate::session::Phase::ReturnHandshake, .. } => {
            "nothing answered on the return channel: check that the ZeroMQ port (--zmq-port, default PORT+1) is \
             reachable and not firewalled"
        }
        Failure::Timeout { during: crate::session::Phase::Handshake, .. } => {
            "the peer answered nothing during the handshake: check that the address and port are a machinaftp \
             peer's (another program may listen there, or a firewall may swallow the connection), or raise --timeout"
        }
        Failure::Timeout { .. } => "the peer stopped responding; check that it is still running, or raise --timeout",
        Failure::Closed { .. } => "the peer went away mid-session; see its log for why",
        Failure::Auth { .. } => {
            "give both sides the same secret (--secret, --secret-file or MACHINAFTP_SECRET); `machinaftp keygen` makes \
             a strong one"
        }
        Failure::Mismatch { .. } | Failure::PeerMismatch { .. } | Failure::SizeMismatch { .. } => {
            "the bytes were corrupted in transit or on disk; run the transfer again"
        }
        Failure::Local(LocalFailure::Output { source, .. }) => output_hint(source),
        Failure::Local(LocalFailure::NoRoom { .. }) => "free some space in the destination directory",
        Failure::Local(LocalFailure::ReturnChannel { .. }) => {
            "check that the ZeroMQ port (--zmq-port, default PORT+1) is reachable and not firewalled"
        }
        Failure::Local(LocalFailure::SourceChanged { .. }) => {
            "something wrote to the served file during the transfer; run it again once the file is final"
        }
        Failure::Csv(CsvFailure::Convert(ConvertError::Stl { .. })) => {
            "the file is not valid STL at the place named; fix or re-export it"
        }
        _ => return None,
    })
}

/// Whether a broken pipe (a closed stdout: `... | head`) is anywhere in the chain.
pub fn is_broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if c.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe) {
            return true;
        }
        cur = c.source();
    }
    false
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Phase, Role};

    #[test]
    fn each_cause_is_printed_once() {
        let e = Error::Session {
            peer: "server 127.0.0.1:8080".into(),
            failure: Box::new(Failure::Local(LocalFailure::Output {
                path: "out.stl".into(),
                source: io::Error::new(io::ErrorKind::StorageFull, "No space left on device"),
            })),
        };
        assert_eq!(chain(&e), "round trip with server 127.0.0.1:8080: cannot write out.stl: No space left on device");
        assert_eq!(e.exit_code(), exit::LOCAL_IO);
        let closed = Error::Session {
            peer: "client 1.2.3.4:5".into(),
            failure: Box::new(Failure::Closed { during: Phase::Data { role: Role::Server, done: 5, size: 9 } }),
        };
        assert_eq!(
            chain(&closed),
            "round trip with client 1.2.3.4:5: sending the file (5 of 9 bytes): the peer closed the connection"
        );
        assert_eq!(closed.exit_code(), exit::NETWORK);
        assert!(closed.hint().is_some());
    }

    #[test]
    fn broken_pipe_is_found_deep_in_the_chain() {
        let e = Error::Convert(ConvertError::Write {
            path: "standard output".into(),
            source: io::Error::from(io::ErrorKind::BrokenPipe),
        });
        assert!(is_broken_pipe(&e));
        assert!(!is_broken_pipe(&Error::Interrupted));
    }
}
