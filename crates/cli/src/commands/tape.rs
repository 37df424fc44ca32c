//! `shadowcat tape list | show | export | diff | validate`.

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use shadowcat_tape::diff::{DiffOptions, diff, report};
use shadowcat_tape::reader::Severity;
use shadowcat_tape::show::{ShowOptions, render, seconds};
use shadowcat_tape::{Tape, export, validate};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Color {
    /// Colour when stdout is a terminal.
    Auto,
    Always,
    Never,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON document: header, frames (with line numbers), end.
    Json,
    /// HAR 1.2, for HAR viewers and browser developer tools.
    Har,
}

#[derive(Subcommand, Debug)]
pub enum TapeCmd {
    /// List tapes with their size, duration, sessions and frames. Directories are searched for
    /// `*.jsonl` files.
    List {
        /// Tape files or directories (default: the current directory).
        paths: Vec<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a tape as a readable timeline.
    Show {
        /// The tape.
        tape: PathBuf,
        /// Print every message in full (pretty JSON) instead of a one-line summary.
        #[arg(long)]
        full: bool,
        /// Only the session whose id starts with this.
        #[arg(long)]
        session: Option<String>,
        /// Colour.
        #[arg(long, value_enum, default_value_t = Color::Auto)]
        color: Color,
    },
    /// Export a tape as JSON or HAR.
    Export {
        /// The tape.
        tape: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
        /// Write here instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Compare two tapes structurally, ignoring JSON-RPC ids, progress tokens, timestamps and
    /// session ids. Exit code 0: equivalent; 1: different; 2: a tape could not be read.
    Diff {
        /// The first tape.
        left: PathBuf,
        /// The second tape.
        right: PathBuf,
        /// Also ignore the value at this JSON pointer of every message (repeatable), e.g.
        /// `/result/content/0/text`.
        #[arg(long = "ignore", value_name = "POINTER")]
        ignore: Vec<String>,
    },
    /// The tool and prompt definitions a tape saw, as pins (the format of `shadowcat pins
    /// export`): a reviewed baseline for `--pins FILE` and `pins check`.
    Pins {
        /// The tape.
        tape: PathBuf,
        /// The route the pins are for.
        #[arg(long, default_value = "/mcp")]
        route: String,
        /// Write here instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Check a tape and report every problem with its line number. Exit code 1 on errors
    /// (or on warnings too with --strict).
    Validate {
        /// The tape.
        tape: PathBuf,
        /// Treat warnings (unanswered requests, missing end line) as errors.
        #[arg(long)]
        strict: bool,
    },
}

pub fn run(cmd: TapeCmd) -> anyhow::Result<i32> {
    match cmd {
        TapeCmd::List { paths, json } => list(paths, json),
        TapeCmd::Show {
            tape,
            full,
            session,
            color,
        } => {
            let t = Tape::open(&tape)?;
            let color = match color {
                Color::Always => true,
                Color::Never => false,
                Color::Auto => {
                    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
                }
            };
            let opts = ShowOptions {
                color,
                full,
                width: terminal_width(),
                session,
            };
            print(&render(&t, &opts))?;
            Ok(0)
        }
        TapeCmd::Export {
            tape,
            format,
            output,
        } => {
            let t = Tape::open(&tape)?;
            let doc = match format {
                Format::Json => export::to_json(&t),
                Format::Har => export::to_har(&t),
            };
            let text = serde_json::to_string_pretty(&doc)? + "\n";
            match output {
                // An export holds what the tape holds: its owner's only, like the tape.
                Some(p) => {
                    use std::io::Write;
                    use std::os::unix::fs::OpenOptionsExt;
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(&p)
                        .and_then(|mut f| {
                            // An existing file keeps its mode on open: made private too.
                            use std::os::unix::fs::PermissionsExt;
                            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
                            f.write_all(text.as_bytes())
                        })
                        .with_context(|| format!("cannot write {}", p.display()))?
                }
                None => print(&text)?,
            }
            Ok(0)
        }
        TapeCmd::Diff {
            left,
            right,
            ignore,
        } => {
            let (l, r) = match (Tape::open(&left), Tape::open(&right)) {
                (Ok(l), Ok(r)) => (l, r),
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("shadowcat: {e}");
                    return Ok(2);
                }
            };
            let changes = diff(&l, &r, &DiffOptions { ignore });
            if changes.is_empty() {
                println!("the tapes are equivalent ({} messages)", l.frames.len());
                Ok(0)
            } else {
                print(&report(&changes))?;
                println!("{} difference(s)", changes.len());
                Ok(1)
            }
        }
        TapeCmd::Pins {
            tape,
            route,
            output,
        } => {
            let text = super::pins::from_tape(&tape, &route)?;
            match output {
                Some(path) => std::fs::write(&path, text)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => print!("{text}"),
            }
            Ok(0)
        }
        TapeCmd::Validate { tape, strict } => {
            let file = std::fs::File::open(&tape)
                .with_context(|| format!("cannot open {}", tape.display()))?;
            let v = validate(std::io::BufReader::new(file));
            let mut errors = 0;
            let mut warnings = 0;
            for p in &v.problems {
                let what = match p.severity {
                    Severity::Error => {
                        errors += 1;
                        "error"
                    }
                    Severity::Warning => {
                        warnings += 1;
                        "warning"
                    }
                };
                if p.line == 0 {
                    println!("{}: {what}: {}", tape.display(), p.message);
                } else {
                    println!("{}:{}: {what}: {}", tape.display(), p.line, p.message);
                }
            }
            println!(
                "{}: {} frame(s), {errors} error(s), {warnings} warning(s)",
                tape.display(),
                v.frames
            );
            Ok(i32::from(errors > 0 || (strict && warnings > 0)))
        }
    }
}

fn print(s: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(s.as_bytes()).and_then(|_| out.flush()) {
        // A closed pipe (`| head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .filter(|w: &usize| *w >= 40)
        .unwrap_or(120)
}

fn tapes_in(paths: Vec<PathBuf>) -> anyhow::Result<Vec<PathBuf>> {
    let paths = if paths.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        paths
    };
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(&p)
                .with_context(|| format!("cannot read {}", p.display()))?
                .flatten()
                .map(|e| e.path())
                .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "jsonl"))
                .collect();
            found.sort();
            out.extend(found);
        } else {
            out.push(p);
        }
    }
    Ok(out)
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn list(paths: Vec<PathBuf>, json: bool) -> anyhow::Result<i32> {
    let mut rows = Vec::new();
    for p in tapes_in(paths)? {
        let row = match Tape::open(&p) {
            Ok(t) => serde_json::json!({
                "path": p.display().to_string(),
                "bytes": size(&p),
                "created": t.header.created,
                "mode": t.header.mode,
                "upstream": t.header.upstream,
                "duration_us": t.duration_us(),
                "sessions": t.sessions().len(),
                "frames": t.frames.len(),
                "dropped": t.end.as_ref().map_or(0, |e| e.dropped),
                "complete": t.end.is_some(),
            }),
            Err(e) => serde_json::json!({
                "path": p.display().to_string(),
                "bytes": size(&p),
                "error": e.message(),
            }),
        };
        rows.push(row);
    }
    if json {
        print(&(serde_json::to_string_pretty(&rows)? + "\n"))?;
        return Ok(0);
    }
    // The tape column is as wide as its longest path, so every row lines up.
    let w = rows
        .iter()
        .filter_map(|r| r["path"].as_str())
        .map(|p| p.chars().count())
        .max()
        .unwrap_or(0)
        .max("TAPE".len());
    let mut out = format!(
        "{:<w$}  {:>9}  {:>9}  {:>8}  {:>7}  {:<24}  {}\n",
        "TAPE", "SIZE", "DURATION", "SESSIONS", "FRAMES", "CREATED", "MODE"
    );
    for r in &rows {
        let path = r["path"].as_str().unwrap_or("");
        let bytes = human_size(r["bytes"].as_u64().unwrap_or(0));
        if let Some(e) = r["error"].as_str() {
            out.push_str(&format!("{path:<w$}  {bytes:>9}  invalid: {e}\n"));
            continue;
        }
        let mut mode = r["mode"].as_str().unwrap_or("").to_string();
        if r["complete"] == false {
            mode.push_str(" (not closed)");
        }
        out.push_str(&format!(
            "{path:<w$}  {bytes:>9}  {:>9}  {:>8}  {:>7}  {:<24}  {mode}\n",
            seconds(r["duration_us"].as_u64().unwrap_or(0)),
            r["sessions"],
            r["frames"],
            r["created"].as_str().unwrap_or(""),
        ));
    }
    print(&out)?;
    Ok(0)
}

/// A size for people: `512 B`, `1.5 KiB`, `12.0 MiB`.
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod size_tests {
    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(super::human_size(0), "0 B");
        assert_eq!(super::human_size(1023), "1023 B");
        assert_eq!(super::human_size(1536), "1.5 KiB");
        assert_eq!(super::human_size(12 * 1024 * 1024), "12.0 MiB");
    }
}
