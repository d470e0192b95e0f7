//! The `machinaftp` binary: parse arguments, set up logging and signals, run, map the outcome to
//! an exit status. Everything else lives in the library.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use machinaftp::cli::{Cli, Invocation, LogConfig, Stl2csvArgs};
use machinaftp::error::{Error, exit};
use machinaftp::shutdown::Shutdown;
use machinaftp::stl::{self, ConvertError, CsvOptions};
use machinaftp::{client, demo, logging, server, units};

fn main() -> ExitCode {
    let invocation = match Cli::parse().into_command() {
        Ok(inv) => inv,
        Err(msg) => {
            eprintln!("machinaftp: error: {msg}\n  hint: see `machinaftp --help`");
            return ExitCode::from(exit::USAGE as u8);
        }
    };
    let shutdown = Shutdown::new();
    if let Err(e) = shutdown.install_signal_handlers() {
        eprintln!("machinaftp: warning: cannot install signal handlers: {e}");
    }
    let outcome = match invocation {
        Invocation::Demo(args) => demo::run(&args),
        Invocation::Stl2csv(args) => run_stl2csv(&args),
        Invocation::Server(cfg, log) => with_logging(&log, || run_server(cfg, &shutdown)),
        Invocation::Client(cfg, log) => with_logging(&log, || run_client(&cfg, &shutdown)),
    };
    match outcome {
        Ok(code) => ExitCode::from(code as u8),
        // A closed pipe (`stl2csv m.stl | head`) is the reader's choice, not a failure.
        Err(Error::Convert(ConvertError::Write { source, .. })) if source.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(target: logging::EXIT_TARGET, "{e}");
            eprintln!("machinaftp: error: {e}");
            if let Some(hint) = e.hint() {
                eprintln!("  hint: {hint}");
            }
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

fn with_logging(log: &LogConfig, run: impl FnOnce() -> Result<i32, Error>) -> Result<i32, Error> {
    logging::init(&log.file, logging::console_level(log.verbose, log.quiet))
        .map_err(|source| Error::Output { path: log.file.clone(), source })?;
    run()
}

fn run_server(cfg: server::ServerConfig, shutdown: &Shutdown) -> Result<i32, Error> {
    let srv = server::Server::bind(cfg)?;
    // Tests and scripts wait for this line instead of sleeping; flush so they see it at once.
    println!("{}", srv.ready_line());
    let _ = std::io::stdout().flush();
    srv.run(shutdown)?;
    Ok(exit::OK)
}

fn run_client(cfg: &client::ClientConfig, shutdown: &Shutdown) -> Result<i32, Error> {
    let r = client::run(cfg, shutdown)?;
    let csv = match &r.csv {
        client::CsvOutcome::Returned { path, rows } => {
            format!("CSV {} ({rows} vertices) returned and verified", path.display())
        }
        client::CsvOutcome::NotMade(why) => format!("no CSV ({why})"),
    };
    println!(
        "verified: {} ({}) received intact and returned intact to the server, CRC-32 {}, BLAKE3 {}…; \
         data {} ({}), return {} ({}); {csv}",
        cfg.out.display(),
        units::bytes(r.digest.size),
        r.digest.crc32,
        &r.digest.blake3_hex()[..16],
        units::duration(r.data_time),
        units::rate(r.digest.size, r.data_time),
        units::duration(r.return_time),
        units::rate(r.digest.size, r.return_time),
    );
    Ok(exit::OK)
}

fn run_stl2csv(args: &Stl2csvArgs) -> Result<i32, Error> {
    let opts = CsvOptions { unique: args.unique, header: args.header, digest: false };
    let summary = match &args.output {
        Some(out) => stl::convert(&args.input, out, opts)?.read,
        None => {
            let stdout = std::io::stdout().lock();
            let out = std::io::BufWriter::with_capacity(1 << 16, stdout);
            stl::convert_to(&args.input, out, std::path::Path::new("standard output"), opts)?.0
        }
    };
    for w in &summary.warnings {
        eprintln!("machinaftp: warning: {}: {w}", args.input.display());
    }
    Ok(exit::OK)
}
