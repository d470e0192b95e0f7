//! The `machinaftp` binary: parse arguments, set up logging and signals, run, map the outcome to
//! an exit status. Everything else lives in the library; what the library reports is printed by
//! [`report::Text`] on stdout, errors here on stderr.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, Parser};
use machinaftp::cli::{Cli, Invocation, LogConfig, Stl2csvArgs};
use machinaftp::error::{Error, chain, exit, is_broken_pipe};
use machinaftp::progress::Bars;
use machinaftp::report::Text;
use machinaftp::report::{ClientReport, Reporter};
use machinaftp::shutdown::Shutdown;
use machinaftp::stl::{self, CsvOptions};
use machinaftp::{client, demo, logging, python, server};

type Stdout = Text<std::io::Stdout>;

fn main() -> ExitCode {
    keep_frame_buffers();
    let invocation = match Cli::parse().into_command() {
        Ok(inv) => inv,
        Err(msg) => {
            let _ = writeln!(std::io::stderr(), "machinaftp: error: {msg}\n  hint: see `machinaftp --help`");
            return ExitCode::from(exit::USAGE as u8);
        }
    };
    let shutdown = Shutdown::new();
    if let Err(e) = shutdown.install_signal_handlers() {
        let _ = writeln!(std::io::stderr(), "machinaftp: warning: cannot install signal handlers: {e}");
    }
    let out = |log: &LogConfig| {
        let text = if log.json { Text::json(std::io::stdout()) } else { Text::new(std::io::stdout()) };
        let bars = log.progress.unwrap_or(true).then(|| Bars::new(log.progress == Some(true))).flatten();
        Arc::new(match bars {
            Some(bars) => text.with_progress(bars),
            None => text,
        })
    };
    let outcome = match invocation {
        Invocation::Demo(args) => demo::run(&args, &mut std::io::stdout()),
        Invocation::Stl2csv(args) => run_stl2csv(&args),
        Invocation::Inspect(args) => run_inspect(&args),
        Invocation::Completions(shell) => write_stdout(|out| {
            clap_complete::generate(shell, &mut Cli::command(), "machinaftp", out);
            Ok(())
        }),
        Invocation::Sample(path) => write_sample(&path),
        Invocation::Keygen => match machinaftp::secure::Secret::generate() {
            Ok(s) => write_stdout(|out| writeln!(out, "{s}")),
            Err(e) => Err(Error::Usage(format!("no randomness for a secret: {e}"))),
        },
        Invocation::Man(None) => write_stdout(|out| clap_mangen::Man::new(man_command()).render(out)),
        Invocation::Man(Some(dir)) => write_man_pages(&dir),
        Invocation::Server(cfg, log) => with_logging(&log, || run_server(cfg, &shutdown, out(&log))),
        Invocation::Client(cfg, log) => {
            let out = out(&log);
            out.set_notes(!log.quiet);
            with_logging(&log, || run_client(&cfg, &shutdown, &out, client::run))
        }
        Invocation::PythonServer(cfg, log) => with_logging(&log, || run_python_server(&cfg, &shutdown, out(&log))),
        Invocation::PythonClient(cfg, log) => {
            let out = out(&log);
            out.set_notes(!log.quiet);
            with_logging(&log, || run_client(&cfg, &shutdown, &out, python::fetch))
        }
    };
    match outcome {
        Ok(code) => ExitCode::from(code as u8),
        // A closed pipe (`stl2csv m.stl | head`) is the reader's choice, not a failure.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = chain(&e);
            tracing::error!(target: machinaftp::logging::EXIT_TARGET, "{msg}");
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "machinaftp: error: {msg}");
            if let Some(hint) = e.hint() {
                let _ = writeln!(err, "  hint: {hint}");
            }
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// libzmq allocates each received 1 MiB frame with malloc on its I/O thread and the session frees
/// it on another, so glibc's per-thread arenas keep trimming and re-faulting the same pages (12% of
/// the server's CPU in a 1 GiB round trip). Frames in flight are bounded by the credit window, so
/// serving them from the heap and trimming only beyond a few windows keeps memory bounded too.
///
/// One arena for all threads: glibc's `malloc_trim` cannot shrink the top of the other arenas, so
/// after 64 sessions at once a server kept 20 MiB it no longer used (the frames of its busiest
/// moment, spread over 16 arenas); with one arena it gives them back when it falls idle. The
/// threads allocate a frame at a time, so sharing the arena's lock cost nothing measurable.
fn keep_frame_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; it is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

fn with_logging(log: &LogConfig, run: impl FnOnce() -> Result<i32, Error>) -> Result<i32, Error> {
    logging::init(&log.file, logging::console_level(log.verbose, log.quiet)).map_err(Error::output(&log.file))?;
    run()
}

fn run_server(cfg: server::ServerConfig, shutdown: &Shutdown, out: Arc<Stdout>) -> Result<i32, Error> {
    let srv = server::Server::bind(cfg)?;
    // Tests and scripts wait for this line instead of sleeping.
    let (tcp, zmq) = srv.ready_addrs();
    out.ready(&tcp, &zmq);
    // A standard output nobody reads must not stall the sessions that report to it.
    out.detach();
    let result = srv.run(shutdown, Arc::clone(&out) as _);
    out.finish(std::time::Duration::from_secs(2));
    result?;
    Ok(exit::OK)
}

/// A server speaking the Python version's protocol: one client at a time.
fn run_python_server(cfg: &server::ServerConfig, shutdown: &Shutdown, out: Arc<Stdout>) -> Result<i32, Error> {
    let result = python::serve(cfg, shutdown, Arc::clone(&out) as _, |tcp, zmq| {
        out.ready(tcp, zmq);
        out.detach();
    });
    out.finish(std::time::Duration::from_secs(2));
    result.map(|()| exit::OK)
}

type RoundTrip = fn(&client::ClientConfig, &Shutdown, &dyn Reporter) -> Result<ClientReport, Error>;

fn run_client(
    cfg: &client::ClientConfig,
    shutdown: &Shutdown,
    out: &Arc<Stdout>,
    run: RoundTrip,
) -> Result<i32, Error> {
    match run(cfg, shutdown, out.as_ref()) {
        Ok(report) => {
            out.client_done(&report);
            Ok(exit::OK)
        }
        Err(e) => {
            out.client_failed(&format!("{}:{}", cfg.host, cfg.port), &cfg.out, &e);
            Err(e)
        }
    }
}

/// Writes generated text (a completion script, the manual page) to stdout.
fn write_stdout(write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<i32, Error> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    write(&mut out)
        .and_then(|()| out.flush())
        .map(|()| 0)
        .map_err(|source| Error::Output { path: "standard output".into(), source })
}

/// Writes `path` whole or not at all: into a temporary file beside it, renamed once `write` is done.
fn write_whole(path: &std::path::Path, write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<(), Error> {
    let mut staged = machinaftp::files::StagedFile::create(path).map_err(Error::output(path))?;
    let mut out = std::io::BufWriter::new(staged.file());
    let written = write(&mut out).and_then(|()| out.flush());
    drop(out);
    written.and_then(|()| staged.commit().map(drop)).map_err(Error::output(path))
}

/// Writes the built-in sample mesh to `path`, whole or not at all.
fn write_sample(path: &std::path::Path) -> Result<i32, Error> {
    // A sample is never worth a file someone already has under that name.
    if std::fs::symlink_metadata(path).is_ok() {
        return Err(Error::Usage(format!("{} already exists; remove it or name another file", path.display())));
    }
    write_whole(path, |w| stl::sample::write_torus(w))?;
    let _ = writeln!(
        std::io::stdout(),
        "wrote {}: the sample torus, {} facets, {} bytes (binary STL)",
        path.display(),
        stl::sample::facet_count(),
        stl::sample::file_size()
    );
    Ok(exit::OK)
}

/// The command as the manual pages show it: `help` is `--help` there, with no page of its own.
fn man_command() -> clap::Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// `machinaftp man DIR`: the main page and one per subcommand (the main page's SUBCOMMANDS
/// section names them), each named as `man` looks it up and written whole or not at all.
fn write_man_pages(dir: &std::path::Path) -> Result<i32, Error> {
    std::fs::create_dir_all(dir).map_err(Error::output(dir))?;
    let cmd = man_command();
    let subcommands = cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned().collect::<Vec<_>>();
    let mut written = Vec::new();
    for page in std::iter::once(cmd).chain(subcommands) {
        let man = clap_mangen::Man::new(page);
        let path = dir.join(man.get_filename());
        write_whole(&path, |w| man.render(w))?;
        written.push(man.get_filename());
    }
    let _ = writeln!(std::io::stdout(), "wrote {} into {}", written.join(", "), dir.display());
    Ok(exit::OK)
}

/// `machinaftp inspect`: a block of facts for one file, a table for several, or JSON lines. A
/// file that cannot be read is named with why, and the others are still inspected; the exit
/// status is the worst.
fn run_inspect(args: &machinaftp::cli::InspectArgs) -> Result<i32, Error> {
    use machinaftp::stl::mesh::{MeshFacts, inspect};
    let mut status = exit::OK;
    let mut ok: Vec<(&std::path::Path, MeshFacts)> = Vec::new();
    for path in &args.files {
        match inspect(path) {
            Ok(f) => ok.push((path, f)),
            Err(e) => {
                let e = Error::Convert(e);
                let _ = writeln!(std::io::stderr(), "machinaftp: error: {}", chain(&e));
                status = status.max(e.exit_code());
            }
        }
    }
    let mut lines = Vec::new();
    if args.json {
        for (path, f) in &ok {
            let mut v = serde_json::to_value(f).unwrap_or_default();
            if let Some(map) = v.as_object_mut() {
                map.insert("file".into(), path.display().to_string().into());
            }
            lines.push(v.to_string());
        }
    } else if args.files.len() == 1 {
        if let Some((_, f)) = ok.first() {
            lines.extend(facts_block(f));
        }
    } else {
        lines.extend(facts_table(&ok));
    }
    write_stdout(|out| lines.iter().try_for_each(|l| writeln!(out, "{l}")))?;
    Ok(status)
}

fn facts_block(f: &machinaftp::stl::mesh::MeshFacts) -> Vec<String> {
    let xyz = |v: [f64; 3]| format!("{:.4}, {:.4}, {:.4}", v[0], v[1], v[2]);
    // A mesh without facets has no box (JSON: null), not one at the origin.
    let (bbox, size) = f.bbox.map_or_else(
        || ("none (no facets)".to_owned(), "none".to_owned()),
        |b| (format!("min ({}) max ({})", xyz(b.min), xyz(b.max)), xyz(b.size)),
    );
    vec![
        f.line(),
        format!("  facets             {}", f.facets),
        format!("  distinct vertices  {}", f.distinct_vertices),
        format!("  solids             {}", f.solids),
        format!("  bounding box       {bbox}"),
        format!("  size               {size}"),
        format!("  area               {:.6}", f.area),
        format!("  volume             {:.6}", f.volume),
        format!("  closed             {}", if f.closed { "yes" } else { "no" }),
        format!(
            "  edges              {} boundary, {} non-manifold, {} misoriented",
            f.boundary_edges, f.nonmanifold_edges, f.misoriented_edges
        ),
        format!("  degenerate facets  {}", f.degenerate_facets),
        format!("  flipped normals    {}", f.flipped_normals),
        format!("  geometry BLAKE3    {}", f.geometry_blake3),
    ]
}

fn facts_table(rows: &[(&std::path::Path, machinaftp::stl::mesh::MeshFacts)]) -> Vec<String> {
    let width = rows.iter().map(|(p, _)| p.display().to_string().len()).max().unwrap_or(4).max(4);
    let mut out = vec![format!(
        "{:<width$}  {:>9}  {:>9}  {:>26}  {:>14}  {:>14}  {:>6}  {:>16}",
        "file", "facets", "vertices", "size", "area", "volume", "closed", "geometry BLAKE3"
    )];
    for (p, f) in rows {
        let size =
            f.bbox.map_or_else(String::new, |b| format!("{:.1} x {:.1} x {:.1}", b.size[0], b.size[1], b.size[2]));
        out.push(format!(
            "{:<width$}  {:>9}  {:>9}  {:>26}  {:>14.3}  {:>14.3}  {:>6}  {:>16}",
            p.display(),
            f.facets,
            f.distinct_vertices,
            size,
            f.area,
            f.volume,
            if f.closed { "yes" } else { "no" },
            &f.geometry_blake3[..16]
        ));
    }
    out
}

fn run_stl2csv(args: &Stl2csvArgs) -> Result<i32, Error> {
    let opts = CsvOptions { unique: args.unique, header: args.header, digest: false, mesh: false };
    let summary = match &args.output {
        Some(out) => stl::convert(&args.input, out, opts)?.read,
        None => {
            let stdout = std::io::stdout().lock();
            let out = std::io::BufWriter::with_capacity(1 << 16, stdout);
            stl::convert_to(&args.input, out, std::path::Path::new("standard output"), opts)?.0
        }
    };
    for w in &summary.warnings {
        let _ = writeln!(std::io::stderr(), "machinaftp: warning: {}: {w}", args.input.display());
    }
    Ok(exit::OK)
}
