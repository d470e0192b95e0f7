//! Command line: clap parses raw arguments ([`Cli`]), then [`Cli::into_command`] validates them into
//! what the library runs. The Python version's flags (`-s/-c/-f/-H/-p/--remotehost`) keep their
//! meanings, so its documented invocations work with this binary in its place.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::builder::FalseyValueParser;
use clap::{Args, Parser, Subcommand};

use crate::client::ClientConfig;
use crate::secure::Secret;
use crate::server::ServerConfig;
use crate::transport::ret::ZmqMode;
use crate::units::parse_size;

/// Moves a file (typically an STL mesh) to another workstation and back, and proves both copies
/// identical
///
/// A server (A) sends the file to a client (B) over TCP, and B sends it back over ZeroMQ; both
/// copies are proved identical with CRC-32 and BLAKE3. For an STL the client also returns a CSV of
/// every vertex, and both sides check the mesh's facts.
#[derive(Debug, Parser)]
#[command(name = "machinaftp", version, args_conflicts_with_subcommands = true)]
#[command(after_help = "Examples:\n  machinaftp --server -f cad_mesh.stl -H 0.0.0.0 -p 8080\n  \
machinaftp --client -f output.stl -H 192.168.1.20 -p 8080\n  machinaftp demo")]
#[command(
    after_long_help = "Examples:\n  machinaftp --server -f cad_mesh.stl -H 0.0.0.0 -p 8080 --secret-file mftp.key\n  \
machinaftp --client -f output.stl -H 192.168.1.20 -p 8080 --secret-file mftp.key\n  machinaftp demo\n\n\
Exit statuses:\n  0  both legs verified (and the CSV, for an STL)\n  1  a checksum or size did not match\n  \
2  bad command line, unreadable input, or a port that cannot be listened on\n  \
3  network: no server, the peer ended the session, vanished, timed out, was busy, or broke the protocol\n  \
4  a local file could not be written\n  5  the file made its round trip but its CSV did not\n  \
6  authentication failed: the peers do not share the secret\n  130  interrupted by a signal\n\n\
Every option can also come from the environment variable named beside it (MACHINAFTP_...)."
)]
pub struct Cli {
    /// Start the server process (A): serve FILENAME to clients
    #[arg(short = 's', long, env = "MACHINAFTP_SERVER", value_parser = FalseyValueParser::new())]
    pub server: bool,

    /// Start the client process (B): receive into FILENAME and send it back
    #[arg(short = 'c', long, env = "MACHINAFTP_CLIENT", value_parser = FalseyValueParser::new())]
    pub client: bool,

    /// The file to be delivered to the client (server), or where to write the file being received (client)
    #[arg(short = 'f', long, value_name = "FILENAME", env = "MACHINAFTP_FILENAME")]
    pub filename: Option<PathBuf>,

    /// The host IP address (to bind to for server, connect to for client)
    #[arg(short = 'H', long, value_name = "HOST", default_value = "127.0.0.1", env = "MACHINAFTP_HOST")]
    pub host: String,

    /// Port (for server to listen on, for client to connect to); 0 lets the server pick a free one
    #[arg(short = 'p', long, value_name = "PORT", default_value_t = 8080, env = "MACHINAFTP_PORT")]
    pub port: u16,

    /// Server: connect the return channel to this client host instead of listening (the Python
    /// version's topology); the client binds its --zmq-port
    #[arg(long, value_name = "REMOTEHOST", env = "MACHINAFTP_REMOTEHOST")]
    pub remotehost: Option<String>,

    /// ZeroMQ return-channel port [default: PORT + 1]. The server listens on it; a client binds it
    /// for a --remotehost server, and connects only to the port the server announces
    #[arg(long, value_name = "N", env = "MACHINAFTP_ZMQ_PORT")]
    pub zmq_port: Option<u16>,

    /// Client: how to wire the return channel; auto follows what the server announces
    #[arg(long, value_enum, default_value_t = ZmqMode::Auto, value_name = "MODE", env = "MACHINAFTP_ZMQ_MODE")]
    pub zmq_mode: ZmqMode,

    /// Client: where the vertex CSV goes when the file is STL [default: FILENAME with extension .csv]
    #[arg(long, value_name = "PATH", env = "MACHINAFTP_CSV")]
    pub csv: Option<PathBuf>,

    /// Client: do not make or return a vertex CSV
    #[arg(long, env = "MACHINAFTP_NO_CSV", value_parser = FalseyValueParser::new())]
    pub no_csv: bool,

    /// Server: where the returned CSV is saved [default: --output with extension .csv]
    #[arg(long, value_name = "PATH", env = "MACHINAFTP_CSV_OUTPUT")]
    pub csv_output: Option<PathBuf>,

    /// Server: exit after the first round trip; status 0 only if both legs verified. A
    /// --remotehost server does this unless --serve is given, as the Python version did
    #[arg(long, env = "MACHINAFTP_ONCE", value_parser = FalseyValueParser::new())]
    pub once: bool,

    /// Server: with --remotehost, keep serving after the first round trip
    #[arg(long, env = "MACHINAFTP_SERVE", value_parser = FalseyValueParser::new())]
    pub serve: bool,

    /// Server: where the returned copy is saved [default: output.EXT, EXT being FILENAME's extension]
    #[arg(long, value_name = "PATH", env = "MACHINAFTP_OUTPUT")]
    pub output: Option<PathBuf>,

    /// Log file [default: server.log or client.log in the working directory]
    #[arg(long, value_name = "PATH", env = "MACHINAFTP_LOG_FILE")]
    pub log_file: Option<PathBuf>,

    /// More detail on the console (-v info, -vv debug); the log file always has debug detail
    /// [env: MACHINAFTP_VERBOSE=1 or 2]
    #[arg(short = 'v', long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Nothing on the console but results and errors
    #[arg(short = 'q', long, env = "MACHINAFTP_QUIET", value_parser = FalseyValueParser::new())]
    pub quiet: bool,

    /// Draw a live progress bar per leg on stderr even if it is not a terminal (they are drawn
    /// by default when it is, unless -q)
    #[arg(long, env = "MACHINAFTP_PROGRESS", value_parser = FalseyValueParser::new())]
    pub progress: bool,

    /// Never draw progress bars
    #[arg(long, env = "MACHINAFTP_NO_PROGRESS", value_parser = FalseyValueParser::new())]
    pub no_progress: bool,

    /// A shared secret: the server serves only clients that prove the same one, and both channels
    /// are encrypted. Visible to other users in the process list: prefer --secret-file or the
    /// environment variable
    #[arg(long, value_name = "TEXT", env = "MACHINAFTP_SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    /// Read the shared secret from this file (its first line ending is dropped)
    #[arg(long, value_name = "PATH", env = "MACHINAFTP_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,

    /// The wire protocol: machinaftp's own, or the Python version's (to work with its server or
    /// client; its return channel port is 8091 unless --zmq-port says otherwise)
    #[arg(long, value_enum, default_value_t = WireProtocol::Machinaftp, value_name = "PROTOCOL", env = "MACHINAFTP_PROTOCOL")]
    pub protocol: WireProtocol,

    /// Results as JSON on stdout: one object per round trip (a server prints one per session,
    /// after a `ready` object); the schema is in docs/JSON.md
    #[arg(long, env = "MACHINAFTP_JSON", value_parser = FalseyValueParser::new())]
    pub json: bool,

    /// Seconds any wait on the peer may make no progress before it is an error
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400), env = "MACHINAFTP_TIMEOUT")]
    pub timeout: u64,

    /// Server: clients served at once; further clients wait in line (--queue)
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024), env = "MACHINAFTP_MAX_CLIENTS")]
    pub max_clients: u64,

    /// Server: clients that may wait in line, in arrival order, while every slot is taken; beyond
    /// that a client is told the server is busy (0: at once)
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u64).range(0..=4096), env = "MACHINAFTP_QUEUE")]
    pub queue: u64,

    /// Client: how long to keep trying a server that is busy with a full line, waiting longer
    /// after each try (0: give up at once)
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(0..=86_400), env = "MACHINAFTP_BUSY_WAIT")]
    pub busy_wait: u64,

    /// Client: keep trying for up to SECS while no server listens at the address yet, or its
    /// name does not resolve yet (containers or services started together)
    #[arg(long, value_name = "SECS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=86_400), env = "MACHINAFTP_WAIT_FOR_SERVER")]
    pub wait_for_server: u64,

    /// Server: cap the data channel's rate, in bytes per second (K, M, G are 1024-based: 10M = 10 MiB/s)
    #[arg(long, value_name = "RATE", value_parser = parse_rate, env = "MACHINAFTP_RATE_LIMIT")]
    pub rate_limit: Option<u64>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

fn parse_rate(s: &str) -> Result<u64, String> {
    match parse_size(s)? {
        0 => Err("the rate must be more than 0".into()),
        n => Ok(n),
    }
}

/// Which wire protocol to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WireProtocol {
    /// machinaftp's own (docs/PROTOCOL.md): framed, verified both ways, resumable.
    Machinaftp,
    /// The Python version's: a JSON preamble and raw bytes over TCP, frames over ZeroMQ.
    Python,
}

/// Subcommands besides the server and client roles.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run A and B on loopback with a built-in sample mesh and show that the copy is verified
    Demo(DemoArgs),
    /// Write every vertex of an STL file (binary or ASCII) as `x,y,z` CSV lines with 4 decimals
    Stl2csv(Stl2csvArgs),
    /// What a mesh is: facets, vertices, size, area, volume, whether it is closed, and a geometry
    /// digest that ASCII and binary encodings of one mesh share; several files make a table
    Inspect(InspectArgs),
    /// Write the built-in sample mesh (a torus, binary STL, the one `demo` sends) to a new file
    Sample {
        /// Where to write it (through a temporary file, renamed when complete)
        #[arg(value_name = "FILE", default_value = "sample.stl")]
        output: PathBuf,
    },
    /// Print a shell completion script (e.g. `machinaftp completions bash > /etc/bash_completion.d/machinaftp`)
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print a strong random secret for --secret / --secret-file (130 bits, typable)
    Keygen,
    /// Print the manual page, in roff (e.g. `machinaftp man > machinaftp.1; man ./machinaftp.1`),
    /// or write it and one page per subcommand into DIR
    Man {
        /// Write machinaftp.1 and machinaftp-SUBCOMMAND.1 pages into this directory (made if missing)
        #[arg(value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// Options of `machinaftp stl2csv`.
#[derive(Debug, Args, Clone)]
pub struct Stl2csvArgs {
    /// The STL file to read
    #[arg(value_name = "INPUT")]
    pub input: PathBuf,
    /// Write the CSV here (through a temporary file, renamed when complete) instead of stdout
    #[arg(short = 'o', long, value_name = "OUTPUT")]
    pub output: Option<PathBuf>,
    /// Each distinct vertex once, in order of first appearance
    #[arg(long)]
    pub unique: bool,
    /// Start with an `x,y,z` header line
    #[arg(long)]
    pub header: bool,
}

/// Options of `machinaftp inspect`.
#[derive(Debug, Args, Clone)]
pub struct InspectArgs {
    /// The STL files
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
    /// One JSON object per file on stdout (the fields are listed in docs/JSON.md)
    #[arg(long)]
    pub json: bool,
}

/// Options of `machinaftp demo`.
#[derive(Debug, Args, Clone)]
pub struct DemoArgs {
    /// Directory to run in (created; must be empty if it exists) [default: a new temporary directory]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Console and log-file settings for a server or client run.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// The log file.
    pub file: PathBuf,
    /// `-v` count.
    pub verbose: u8,
    /// `-q`.
    pub quiet: bool,
    /// `--json`: results as JSON receipts on stdout.
    pub json: bool,
    /// Progress bars: `Some(true)` forced by `--progress`, `Some(false)` off (`--no-progress`,
    /// or `-q`), `None`: drawn if stderr is a terminal.
    pub progress: Option<bool>,
}

/// What the command line asks for, validated.
#[derive(Debug)]
pub enum Invocation {
    /// Process A.
    Server(ServerConfig, LogConfig),
    /// Process B.
    Client(ClientConfig, LogConfig),
    /// Process A speaking the Python version's protocol.
    PythonServer(ServerConfig, LogConfig),
    /// Process B speaking the Python version's protocol.
    PythonClient(ClientConfig, LogConfig),
    /// The loopback demo.
    Demo(DemoArgs),
    /// The STL to CSV converter.
    Stl2csv(Stl2csvArgs),
    /// Mesh facts.
    Inspect(InspectArgs),
    /// Write the sample mesh here.
    Sample(PathBuf),
    /// A shell completion script.
    Completions(clap_complete::Shell),
    /// The manual page on stdout, or every page into a directory.
    Man(Option<PathBuf>),
    /// A new random secret.
    Keygen,
}

impl Cli {
    /// Checks the combinations clap cannot express and fills in derived defaults.
    pub fn into_command(self) -> Result<Invocation, String> {
        match self.command {
            Some(Command::Demo(args)) => return Ok(Invocation::Demo(args)),
            Some(Command::Stl2csv(args)) => return Ok(Invocation::Stl2csv(args)),
            Some(Command::Inspect(args)) => return Ok(Invocation::Inspect(args)),
            Some(Command::Completions { shell }) => return Ok(Invocation::Completions(shell)),
            Some(Command::Man { dir }) => return Ok(Invocation::Man(dir)),
            Some(Command::Keygen) => return Ok(Invocation::Keygen),
            Some(Command::Sample { output }) => return Ok(Invocation::Sample(output)),
            None => {}
        }
        // These pairs are checked here, not by clap: a variable such as MACHINAFTP_SERVER=0 counts
        // as given for clap's conflicts, though it says no.
        let role = match (self.server, self.client) {
            (true, false) => "server",
            (false, true) => "client",
            (true, true) => return Err("--server and --client exclude each other: choose one role".into()),
            (false, false) => {
                return Err("choose a role: --server (-s) or --client (-c), or run `machinaftp demo`".into());
            }
        };
        if self.verbose > 0 && self.quiet {
            return Err("-v/--verbose and -q/--quiet exclude each other".into());
        }
        if self.csv.is_some() && self.no_csv {
            return Err("--csv and --no-csv exclude each other".into());
        }
        if self.progress && self.no_progress {
            return Err("--progress and --no-progress exclude each other".into());
        }
        let Some(filename) = self.filename else {
            return Err(format!("--{role} needs -f/--filename"));
        };
        // A count is not a value clap can take from the environment: MACHINAFTP_VERBOSE=N is
        // read here, and -v or -q on the command line wins over it.
        let verbose = match (self.verbose, self.quiet, std::env::var("MACHINAFTP_VERBOSE")) {
            (0, false, Ok(v)) if !v.is_empty() => {
                v.trim().parse::<u8>().map_err(|_| format!("MACHINAFTP_VERBOSE={v}: expected 0, 1 or 2"))?
            }
            (n, ..) => n,
        };
        let log = LogConfig {
            file: self.log_file.unwrap_or_else(|| PathBuf::from(format!("{role}.log"))),
            verbose,
            quiet: self.quiet,
            json: self.json,
            progress: match (self.progress, self.no_progress || self.quiet) {
                (true, _) => Some(true),
                (false, true) => Some(false),
                (false, false) => None,
            },
        };
        let timeout = Duration::from_secs(self.timeout);
        let secret = match (&self.secret, &self.secret_file) {
            (Some(_), Some(_)) => return Err("--secret and --secret-file exclude each other: give one".into()),
            (Some(text), None) => Some(Secret::new(text).map_err(|e| format!("--secret: {e}"))?),
            (None, Some(path)) => Some(Secret::from_file(path).map_err(|e| format!("--secret-file: {e}"))?),
            (None, None) => None,
        };
        let python = self.protocol == WireProtocol::Python;
        if python && secret.is_some() {
            return Err("--secret does not go with --protocol python: that protocol has no authentication".into());
        }
        if python {
            for (set, flag, why) in [
                (self.json, "--json", "its receipts describe machinaftp's own round trip"),
                (self.zmq_mode != ZmqMode::Auto, "--zmq-mode", "the Python version's client always binds"),
                (self.csv_output.is_some(), "--csv-output", "no CSV comes back in that protocol"),
                (self.rate_limit.is_some(), "--rate-limit", "it is not implemented for that protocol"),
                (self.wait_for_server > 0, "--wait-for-server", "it is not implemented for that protocol"),
            ] {
                if set {
                    return Err(format!("{flag} does not go with --protocol python: {why}"));
                }
            }
        }
        if self.server {
            if self.once && self.serve {
                return Err("--once and --serve exclude each other".into());
            }
            // --remotehost names the one client: one round trip, its status the exit status, as
            // the Python version's scripts expect.
            let once = self.once || (self.remotehost.is_some() && !self.serve);
            if self.zmq_mode != ZmqMode::Auto {
                return Err("--zmq-mode is a client option".into());
            }
            for (set, flag) in [(self.csv.is_some(), "--csv"), (self.no_csv, "--no-csv")] {
                if set {
                    return Err(format!("{flag} is a client option; the server's is --csv-output"));
                }
            }
            if self.wait_for_server > 0 {
                return Err("--wait-for-server is a client option".into());
            }
            let output = self.output.unwrap_or_else(|| default_output(&filename));
            let csv_output = self.csv_output.unwrap_or_else(|| csv_beside(&output));
            if csv_output == output {
                return Err("--csv-output must differ from --output".into());
            }
            let server = if python { Invocation::PythonServer } else { Invocation::Server };
            Ok(server(
                ServerConfig {
                    file: filename,
                    host: self.host,
                    port: self.port,
                    zmq_port: self.zmq_port,
                    remotehost: self.remotehost,
                    output,
                    csv_output,
                    once,
                    max_clients: self.max_clients as usize,
                    queue: self.queue as usize,
                    timeout,
                    rate_limit: self.rate_limit,
                    secret,
                },
                log,
            ))
        } else {
            for (set, flag) in [
                (self.remotehost.is_some(), "--remotehost"),
                (self.once, "--once"),
                (self.serve, "--serve"),
                (self.output.is_some(), "--output"),
                (self.rate_limit.is_some(), "--rate-limit"),
                (self.csv_output.is_some(), "--csv-output"),
            ] {
                if set {
                    let extra = match flag {
                        "--output" => "; the client writes to -f/--filename",
                        "--csv-output" => "; the client's is --csv",
                        _ => "",
                    };
                    return Err(format!("{flag} is a server option{extra}"));
                }
            }
            if self.port == 0 {
                return Err("the client needs the server's port: -p 0 names none".into());
            }
            let zmq_port = match self.zmq_port {
                Some(p) => p,
                None if python => crate::python::ZMQ_PORT,
                None => self
                    .port
                    .checked_add(1)
                    .ok_or("-p 65535 leaves no room for the default --zmq-port (PORT + 1); give --zmq-port")?,
            };
            let csv = match (self.no_csv, self.csv) {
                (true, _) => None,
                (false, Some(p)) => Some(p),
                (false, None) => Some(csv_beside(&filename)),
            };
            if csv.as_ref() == Some(&filename) {
                return Err("--csv must differ from -f/--filename".into());
            }
            let client = if python { Invocation::PythonClient } else { Invocation::Client };
            Ok(client(
                ClientConfig {
                    out: filename,
                    host: self.host,
                    port: self.port,
                    zmq_port,
                    zmq_mode: self.zmq_mode,
                    timeout,
                    busy_wait: Duration::from_secs(self.busy_wait),
                    wait_for_server: Duration::from_secs(self.wait_for_server),
                    csv,
                    secret,
                },
                log,
            ))
        }
    }
}

/// `output.<ext>` in the working directory, `<ext>` being the served file's extension.
pub fn default_output(served: &Path) -> PathBuf {
    match served.extension() {
        Some(ext) => PathBuf::from(format!("output.{}", ext.to_string_lossy())),
        None => PathBuf::from("output"),
    }
}

/// The CSV's default path: the file's path with extension `.csv` (`output.stl` -> `output.csv`),
/// or `.vertices.csv` appended when the file itself ends in `.csv`.
pub fn csv_beside(file: &Path) -> PathBuf {
    let p = file.with_extension("csv");
    if p == file {
        let mut s = file.as_os_str().to_owned();
        s.push(".vertices.csv");
        PathBuf::from(s)
    } else {
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Invocation, String> {
        let mut full = vec!["machinaftp"];
        full.extend_from_slice(args);
        Cli::try_parse_from(full).map_err(|e| e.to_string())?.into_command()
    }

    #[test]
    fn seed_server_invocation() {
        let inv = parse(&[
            "--server",
            "-f",
            "./cad_mesh.stl",
            "-H",
            "172.17.0.2",
            "-p",
            "8080",
            "--remotehost",
            "172.17.0.3",
        ]);
        let Ok(Invocation::Server(cfg, log)) = inv else { panic!("{inv:?}") };
        assert_eq!(cfg.host, "172.17.0.2");
        assert_eq!(cfg.port, 8080);
        assert_eq!(cfg.remotehost.as_deref(), Some("172.17.0.3"));
        assert_eq!(cfg.output, PathBuf::from("output.stl"));
        assert_eq!(cfg.csv_output, PathBuf::from("output.csv"));
        assert_eq!(log.file, PathBuf::from("server.log"));
        assert!(cfg.once, "as the Python version did: one round trip, then exit with its status");
    }

    #[test]
    fn seed_client_invocation_and_short_flags() {
        let inv = parse(&["-c", "-f", "output.stl", "-H", "172.17.0.2", "-p", "8080"]);
        let Ok(Invocation::Client(cfg, log)) = inv else { panic!("{inv:?}") };
        assert_eq!(cfg.zmq_port, 8081);
        assert_eq!(cfg.zmq_mode, ZmqMode::Auto);
        assert_eq!(cfg.csv, Some(PathBuf::from("output.csv")));
        assert_eq!(log.file, PathBuf::from("client.log"));
    }

    #[test]
    fn client_needs_a_real_port() {
        assert!(parse(&["-c", "-f", "x", "-p", "0"]).unwrap_err().contains("-p 0"));
    }

    #[test]
    fn csv_options() {
        let Ok(Invocation::Client(cfg, _)) = parse(&["-c", "-f", "m.stl", "--no-csv"]) else { panic!() };
        assert_eq!(cfg.csv, None);
        let Ok(Invocation::Client(cfg, _)) = parse(&["-c", "-f", "m.stl", "--csv", "v.csv"]) else { panic!() };
        assert_eq!(cfg.csv, Some(PathBuf::from("v.csv")));
        assert!(parse(&["-c", "-f", "m.stl", "--csv", "m.stl"]).is_err());
        assert!(parse(&["-c", "-f", "m.stl", "--csv", "v.csv", "--no-csv"]).is_err());
        assert!(parse(&["-s", "-f", "m.stl", "--no-csv"]).unwrap_err().contains("client option"));
        assert!(parse(&["-c", "-f", "m.stl", "--csv-output", "x"]).unwrap_err().contains("server option"));
        assert_eq!(csv_beside(Path::new("d/out.csv")), PathBuf::from("d/out.csv.vertices.csv"));
        let Ok(Invocation::Server(cfg, _)) = parse(&["-s", "-f", "m.stl", "--output", "r/back.stl"]) else { panic!() };
        assert_eq!(cfg.csv_output, PathBuf::from("r/back.csv"));
    }

    #[test]
    fn output_follows_extension() {
        assert_eq!(default_output(Path::new("/data/big.bin")), PathBuf::from("output.bin"));
        assert_eq!(default_output(Path::new("mesh")), PathBuf::from("output"));
    }

    #[test]
    fn bad_combinations_are_refused() {
        assert!(parse(&["-f", "x"]).unwrap_err().contains("choose a role"));
        assert!(parse(&["-s", "-c", "-f", "x"]).unwrap_err().contains("exclude each other"));
        assert!(parse(&["-c", "-f", "x", "-v", "-q"]).unwrap_err().contains("exclude each other"));
        assert!(parse(&["-c", "-f", "x", "--csv", "y.csv", "--no-csv"]).unwrap_err().contains("exclude each other"));
        assert!(parse(&["-s"]).unwrap_err().contains("-f"));
        assert!(parse(&["-c", "-f", "x", "--once"]).unwrap_err().contains("server option"));
        assert!(parse(&["-s", "-f", "x", "--zmq-mode", "bind"]).unwrap_err().contains("client option"));
        assert!(parse(&["-c", "-f", "x", "-p", "65535"]).unwrap_err().contains("--zmq-port"));
        assert!(parse(&["-s", "-f", "x", "-p", "99999"]).is_err());
        assert!(parse(&["-s", "-f", "x", "--timeout", "0"]).is_err());
        assert!(parse(&["-s", "-f", "x", "--rate-limit", "0"]).is_err());
    }

    #[test]
    fn server_options() {
        let inv = parse(&[
            "-s",
            "-f",
            "a.stl",
            "-p",
            "0",
            "--once",
            "--zmq-port",
            "0",
            "--rate-limit",
            "1M",
            "--output",
            "x/r.stl",
            "-vv",
        ]);
        let Ok(Invocation::Server(cfg, log)) = inv else { panic!("{inv:?}") };
        assert_eq!((cfg.port, cfg.zmq_port, cfg.once), (0, Some(0), true));
        assert_eq!(cfg.rate_limit, Some(1 << 20));
        assert_eq!(cfg.output, PathBuf::from("x/r.stl"));
        assert_eq!(log.verbose, 2);
    }

    #[test]
    fn a_remotehost_server_makes_one_round_trip_unless_told_to_serve() {
        let once = |args: &[&str]| match parse(args) {
            Ok(Invocation::Server(cfg, _)) => cfg.once,
            other => panic!("{other:?}"),
        };
        assert!(once(&["-s", "-f", "a.stl", "--remotehost", "10.0.0.2"]), "the Python version's habit");
        assert!(!once(&["-s", "-f", "a.stl", "--remotehost", "10.0.0.2", "--serve"]));
        assert!(!once(&["-s", "-f", "a.stl"]), "a listening server serves until stopped");
        assert!(parse(&["-s", "-f", "a", "--once", "--serve"]).unwrap_err().contains("exclude each other"));
        assert!(parse(&["-c", "-f", "a", "--serve"]).unwrap_err().contains("server option"));
    }

    #[test]
    fn stl2csv_subcommand() {
        let Ok(Invocation::Stl2csv(a)) = parse(&["stl2csv", "m.stl", "-o", "m.csv", "--unique", "--header"]) else {
            panic!()
        };
        assert_eq!((a.input, a.output), (PathBuf::from("m.stl"), Some(PathBuf::from("m.csv"))));
        assert!(a.unique && a.header);
        assert!(parse(&["stl2csv"]).is_err());
    }

    #[test]
    fn demo_subcommand() {
        assert!(matches!(parse(&["demo"]), Ok(Invocation::Demo(_))));
        assert!(parse(&["demo", "-s"]).is_err());
    }
}
