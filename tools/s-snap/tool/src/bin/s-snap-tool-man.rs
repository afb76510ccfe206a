//! `s-snap-tool-man DIR`: writes the manual pages of `s-snap-tool` into DIR
//! (created if missing), rendered with `clap_mangen` from the tool's own clap
//! definition (`s_snap_tool::Cli`): `s-snap-tool.1`, and one page per
//! subcommand, `s-snap-tool-<subcommand>.1`. `make man` runs it.
//!
//! A binary of its own rather than a hidden `s-snap-tool man` subcommand:
//! the tool's command line stays exactly the documented one (`man` remains
//! a usage error, as every unknown subcommand), and the tool binary does not
//! link the man page renderer.

use clap::{CommandFactory, Parser};
use clap_mangen::Man;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Write the manual pages of s-snap-tool.
///
/// Writes s-snap-tool.1 and one page per subcommand,
/// s-snap-tool-SUBCOMMAND.1, rendered from the tool's command-line
/// definition, into DIR. Read one with "man -l DIR/s-snap-tool.1".
#[derive(Parser, Debug)]
#[command(name = "s-snap-tool-man", version)]
struct Args {
    /// Directory to write the pages into (created if missing).
    dir: PathBuf,
    /// Date in the page headers (default: the date of $SOURCE_DATE_EPOCH
    /// if set, else today's date, UTC).
    #[arg(long, value_name = "YYYY-MM-DD")]
    date: Option<String>,
}

/// Gregorian (year, month, day) of a day counted from 1970-01-01
/// (Howard Hinnant's days_from_civil, inverted).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The default header date: $SOURCE_DATE_EPOCH (reproducible builds) or now.
fn default_date() -> String {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
        });
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Writes the page of `cmd` and of each of its visible subcommands, as
/// `clap_mangen::generate_to` does, but with the same date, source
/// ("s-snap-tool VERSION") and manual in the header of every page
/// (`generate_to` leaves the date empty, which shifts the other header
/// fields, and gives a subcommand page its bare name as source).
fn write_pages(cmd: &clap::Command, date: &str, source: &str, dir: &Path) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, date, source, dir)?;
    }
    Man::new(cmd.clone())
        .date(date)
        .source(source)
        .manual("User Commands")
        .generate_to(dir)?;
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Like generate_to: no page for clap's automatic "help" subcommand, and
    // the command built so that subcommands know their full names
    // ("s-snap-tool check", page s-snap-tool-check.1).
    let mut cmd = s_snap_tool::Cli::command().disable_help_subcommand(true);
    cmd.build();
    let source = format!(
        "{} {}",
        cmd.get_name(),
        cmd.get_version().unwrap_or_default()
    );
    let date = match args.date {
        Some(d) if !d.trim().is_empty() => d,
        _ => default_date(),
    };
    let written = std::fs::create_dir_all(&args.dir)
        .and_then(|()| write_pages(&cmd, &date, &source, &args.dir));
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "s-snap-tool-man: cannot write the pages into {}: {e}",
                args.dir.display()
            );
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::civil_from_days;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_818), (2026, 12, 31));
    }
}
