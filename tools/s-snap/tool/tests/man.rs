//! Tests of `s-snap-tool-man`: the manual pages it writes cover the whole
//! command line. The list of subcommands and arguments comes from the clap
//! definition itself, so that a subcommand added later without a page, or
//! without help texts, fails here.

use clap::CommandFactory;
use s_snap_tool::Cli;
use std::path::Path;
use std::process::Command;

/// The tool's command, built (subcommand names, display names and the
/// automatic --help/--version arguments filled in).
fn tool_command() -> clap::Command {
    let mut cmd = Cli::command();
    cmd.build();
    cmd
}

/// The subcommands that get a page of their own: the visible ones, without
/// clap's automatic `help` (which `clap_mangen::generate_to` leaves out).
fn documented_subcommands(cmd: &clap::Command) -> Vec<&clap::Command> {
    cmd.get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        .collect()
}

/// Runs the generator into `dir` and checks that it succeeds.
fn generate(dir: &Path) {
    let o = Command::new(env!("CARGO_BIN_EXE_s-snap-tool-man"))
        .arg(dir)
        .output()
        .expect("run s-snap-tool-man");
    assert!(
        o.status.success(),
        "s-snap-tool-man failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `text` with the roff escapes clap_mangen writes (`\-`, `\\`, `\*(Aq`)
/// undone, so that it can be searched for the help texts as clap holds them.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let (plain, skip) = if rest.starts_with("\\-") {
            ("-", 2)
        } else if rest.starts_with("\\\\") {
            ("\\", 2)
        } else if rest.starts_with("\\*(Aq") {
            ("'", 5)
        } else {
            (&rest[..1], 1)
        };
        out.push_str(plain);
        rest = &rest[skip..];
    }
    out.push_str(rest);
    out
}

/// A page's text, unescaped; checks its header:
/// `.TH NAME 1 DATE SOURCE MANUAL`, the date not empty (an empty argument
/// would shift the others).
fn page_text(path: &Path, name: &str) -> String {
    let raw = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("manual page {} is missing: {e}", path.display()));
    let th = raw
        .lines()
        .find(|l| l.starts_with(".TH "))
        .unwrap_or_else(|| panic!("{} has no .TH header", path.display()));
    let head = format!(".TH {name} 1 ");
    assert!(
        th.starts_with(&head) && !th[head.len()..].starts_with(' '),
        "{}: bad header {th:?}",
        path.display()
    );
    unescape(&raw)
}

#[test]
fn pages_for_the_tool_and_every_subcommand() {
    let cmd = tool_command();
    let name = cmd.get_name().to_owned();
    let subs = documented_subcommands(&cmd);
    assert!(
        subs.len() >= 2,
        "expected at least check and dump, found {}",
        subs.len()
    );

    let dir = tempfile::tempdir().unwrap();
    // A directory that does not exist yet: the generator creates it.
    let out = dir.path().join("man");
    generate(&out);

    let main = page_text(&out.join(format!("{name}.1")), &name);
    let about = cmd.get_about().expect("the tool has an about text");
    assert!(
        main.contains(&about.to_string()),
        "{name}.1 lacks the tool's about text"
    );
    let mut expected = vec![format!("{name}.1")];
    for sub in &subs {
        let sub_name = sub.get_name();
        // The main page lists each subcommand as a reference to its page.
        assert!(
            main.contains(&format!("{name}-{sub_name}(1)")),
            "{name}.1 does not name the subcommand {sub_name}"
        );
        let file = format!("{name}-{sub_name}.1");
        let page = page_text(&out.join(&file), &format!("{name}-{sub_name}"));
        let about = sub
            .get_about()
            .unwrap_or_else(|| panic!("subcommand {sub_name} has no about text"))
            .to_string();
        assert!(
            page.contains(&about),
            "{file} lacks the about text {about:?}"
        );
        // Every argument of the subcommand is described on its page.
        for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
            let shown = match arg.get_long() {
                Some(long) => format!("--{long}"),
                None => arg.get_id().as_str().to_uppercase(),
            };
            assert!(
                page.contains(&shown),
                "{file} does not mention the argument {shown}"
            );
        }
        expected.push(file);
    }

    // Nothing else was written (in particular no page for "help").
    let mut written: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    written.sort();
    expected.sort();
    assert_eq!(written, expected);
}

#[test]
fn every_command_and_argument_has_help() {
    let cmd = tool_command();
    let mut missing = vec![];
    for c in std::iter::once(&cmd).chain(documented_subcommands(&cmd)) {
        if c.get_about()
            .map_or(true, |a| a.to_string().trim().is_empty())
        {
            missing.push(format!("command {}", c.get_name()));
        }
        for a in c.get_arguments().filter(|a| !a.is_hide_set()) {
            if a.get_help()
                .map_or(true, |h| h.to_string().trim().is_empty())
            {
                missing.push(format!("argument {} of {}", a.get_id(), c.get_name()));
            }
        }
    }
    assert!(missing.is_empty(), "no help text: {missing:?}");
}

#[test]
fn generator_usage_error() {
    let o = Command::new(env!("CARGO_BIN_EXE_s-snap-tool-man"))
        .output()
        .expect("run s-snap-tool-man");
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("Usage"));
}

#[test]
fn unescape_undoes_roff_escapes() {
    assert_eq!(
        unescape(r"s\-snap \\ it\*(Aqs \fBx\fR"),
        r"s-snap \ it's \fBx\fR"
    );
}
