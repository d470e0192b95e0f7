//! The errors the library reports, one variant per thing that can go wrong, each saying what and
//! where. `main` prints the chain, adds [`Error::hint`] and exits with [`Error::exit_code`].

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::protocol::DecodeError;

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
    /// Interrupted by SIGINT or SIGTERM (128 + 2, the shell's convention for SIGINT).
    pub const INTERRUPTED: i32 = 130;
}

/// Which way the bytes were going when something went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leg {
    /// A to B over the TCP data channel.
    Data,
    /// B to A over the ZeroMQ return channel.
    Return,
}

impl std::fmt::Display for Leg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Leg::Data => "data leg (A to B over TCP)",
            Leg::Return => "return leg (B to A over ZeroMQ)",
        })
    }
}

/// A failure of the I/O underneath a channel.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The peer closed the connection.
    #[error("the peer closed the connection")]
    Closed,
    /// Nothing moved for the whole idle timeout.
    #[error("the peer sent nothing for {} s", .0.as_secs())]
    Timeout(Duration),
    /// SIGINT/SIGTERM arrived while waiting.
    #[error("interrupted by a signal")]
    Interrupted,
    /// The operating system reported an error.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The bytes received are not a valid message.
    #[error("malformed message: {0}")]
    Decode(#[from] DecodeError),
    /// The peer sent more than A's credit allowed, so its frames were dropped.
    #[error("the peer sent more than its flow-control credit allowed")]
    CreditOverrun,
    /// libzmq reported an error.
    #[error("ZeroMQ: {0}")]
    Zmq(#[from] zmq::Error),
}

/// Everything that can end a server or client run unsuccessfully.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file to serve cannot be opened or is not a regular file.
    #[error("cannot read input file {path}: {source}")]
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
    #[error("cannot listen on {addr} for the {channel}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Which channel and the flag that sets its port.
        channel: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Nothing accepts connections at the address.
    #[error("no server is listening at {addr} (connection refused)")]
    NoServer {
        /// The address tried.
        addr: String,
    },
    /// Connecting failed for another reason (unreachable, timeout, bad name).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address tried.
        addr: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A channel failed mid-session.
    #[error("{stage}: {source}")]
    Transport {
        /// What was happening, with the peer and progress.
        stage: String,
        /// What failed.
        #[source]
        source: TransportError,
    },
    /// The peer sent a valid message that is wrong at this point.
    #[error("{stage}: unexpected message from the peer: {detail}")]
    Protocol {
        /// What was happening.
        stage: String,
        /// What arrived instead of what was expected.
        detail: String,
    },
    /// The peer refused or aborted the transfer and said why.
    #[error("{stage}: the peer refused: {reason}")]
    Refused {
        /// What was happening.
        stage: String,
        /// The peer's words.
        reason: String,
    },
    /// Bytes arrived whole but do not match what was sent.
    #[error("checksum mismatch on the {leg}: {detail}")]
    Mismatch {
        /// Which leg.
        leg: Leg,
        /// What differs.
        detail: String,
    },
    /// A local file could not be created or written.
    #[error("cannot write {path}: {source}")]
    Output {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The return channel could not be set up.
    #[error("return channel: {0}")]
    ReturnSetup(String),
    /// STL to CSV conversion failed.
    #[error("{0}")]
    Convert(#[from] crate::stl::ConvertError),
    /// The file made its round trip, but its CSV did not (the reason says which side and why).
    #[error("the file made its round trip intact, but its CSV did not: {0}")]
    Csv(String),
    /// SIGINT/SIGTERM stopped the run.
    #[error("interrupted by a signal; temporary files were removed")]
    Interrupted,
}

impl Error {
    /// Wraps a transport failure with what was going on, keeping interruption distinct.
    pub fn transport(stage: impl Into<String>, source: TransportError) -> Error {
        match source {
            TransportError::Interrupted => Error::Interrupted,
            source => Error::Transport { stage: stage.into(), source },
        }
    }

    /// Whether the peer caused or already knows this outcome, so telling it again is pointless.
    pub fn peer_knows(&self) -> bool {
        matches!(
            self,
            Error::Refused { .. } | Error::Mismatch { .. } | Error::Transport { source: TransportError::Closed, .. }
        )
    }

    /// The data channel's `Error` code that describes this error to the peer.
    pub fn wire_code(&self) -> crate::protocol::data::ErrorCode {
        use crate::protocol::data::ErrorCode;
        match self {
            Error::Protocol { .. } | Error::Transport { source: TransportError::Decode(_), .. } => ErrorCode::Protocol,
            Error::ReturnSetup(_) => ErrorCode::ReturnChannel,
            _ => ErrorCode::Internal,
        }
    }

    /// For `map_err`: a local file at `path` could not be written.
    pub fn output(path: &std::path::Path) -> impl FnOnce(io::Error) -> Error + use<> {
        let path = path.to_path_buf();
        move |source| Error::Output { path, source }
    }

    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Mismatch { .. } => exit::MISMATCH,
            Error::Input { .. } | Error::Usage(_) | Error::Bind { .. } => exit::USAGE,
            Error::Output { .. } => exit::LOCAL_IO,
            Error::Convert(crate::stl::ConvertError::Open { .. }) => exit::USAGE,
            Error::Convert(crate::stl::ConvertError::Write { .. }) => exit::LOCAL_IO,
            Error::Convert(crate::stl::ConvertError::Stl { .. }) | Error::Csv(_) => exit::CSV,
            Error::Interrupted | Error::Convert(crate::stl::ConvertError::Stopped) => exit::INTERRUPTED,
            Error::NoServer { .. }
            | Error::Connect { .. }
            | Error::Transport { .. }
            | Error::Protocol { .. }
            | Error::Refused { .. }
            | Error::ReturnSetup(_) => exit::NETWORK,
        }
    }

    /// What the user might do about it, where there is something useful to say.
    pub fn hint(&self) -> Option<&'static str> {
        Some(match self {
            Error::Input { .. } => "check the path given with -f/--filename",
            Error::Convert(crate::stl::ConvertError::Open { .. }) => "check the input path",
            Error::Bind { .. } => {
                "another process may hold that port: pick another with the flag named (0 picks a free one), or check -H"
            }
            Error::NoServer { .. } => {
                "start the server first (machinaftp --server ...) and check -H/--host and -p/--port"
            }
            Error::Connect { .. } => "check -H/--host and -p/--port, and that the network path is open",
            Error::Transport { source: TransportError::Timeout(_), .. } => {
                "the peer stopped responding; check that it is still running, or raise --timeout"
            }
            Error::Transport { source: TransportError::Closed, .. } => {
                "the peer went away mid-session; see its log for why"
            }
            Error::ReturnSetup(_) => {
                "check that the ZeroMQ port (--zmq-port, default PORT+1) is reachable and not firewalled"
            }
            Error::Mismatch { .. } => "the bytes were corrupted in transit or on disk; run the transfer again",
            Error::Output { .. } | Error::Convert(crate::stl::ConvertError::Write { .. }) => {
                "check free space and permissions in the destination directory"
            }
            Error::Convert(crate::stl::ConvertError::Stl { .. }) => {
                "the file is not valid STL at the place named; fix or re-export it"
            }
            _ => return None,
        })
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
