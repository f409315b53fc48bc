//! The `sluice-bench` binary's command line: bad arguments exit 2 with one line on stderr, help
//! and version print normally and exit 0. No scenario runs.

use std::process::{Command, Output};

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice-bench"))
        .args(args)
        .output()
        .expect("run sluice-bench")
}

/// Asserts a usage error: exit status 2, nothing on stdout, exactly one line on stderr that
/// contains each of `expected`. Returns the line.
fn assert_usage_error(args: &[&str], expected: &[&str]) -> String {
    let out = bench(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
    assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr:?}");
    assert!(stderr.ends_with('\n'), "{stderr:?}");
    assert!(
        !stderr.contains('\x1b'),
        "{args:?}: colour codes in {stderr:?}"
    );
    for text in expected {
        assert!(
            stderr.contains(text),
            "{args:?}: {text:?} missing from {stderr:?}"
        );
    }
    stderr
}

#[test]
fn a_bad_flag_is_one_line_and_exit_status_2() {
    assert_usage_error(
        &["--bogus"],
        &["sluice-bench: ", "'--bogus'", "see `sluice-bench --help`"],
    );
    // Within a scenario, the error points at that scenario's help and keeps clap's suggestion.
    assert_usage_error(
        &["storage", "--sed", "3"],
        &[
            "'--sed'",
            "similar argument",
            "'--seed'",
            "`sluice-bench storage --help`",
        ],
    );
    assert_usage_error(&["nonsense"], &["'nonsense'", "`sluice-bench --help`"]);
}

#[test]
fn bad_values_and_conflicts_are_one_line_and_exit_status_2() {
    assert_usage_error(
        &["produce", "--seed", "x"],
        &["'x'", "--seed", "`sluice-bench produce --help`"],
    );
    assert_usage_error(
        &["produce", "--messages", "1000", "--duration", "5"],
        &["--messages", "--duration", "cannot be used with"],
    );
    assert_usage_error(&["produce", "--messages", "0"], &["--messages"]);
    assert_usage_error(&["produce", "--rate", "0"], &["--rate"]);
    assert_usage_error(&["storage", "--plot"], &["--plot"]);
}

#[test]
fn help_and_version_print_normally_and_exit_0() {
    let help = bench(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("Usage: sluice-bench"), "{text}");
    assert!(text.lines().count() > 5, "{text}");
    assert!(help.stderr.is_empty());

    let produce = bench(&["produce", "--help"]);
    assert_eq!(produce.status.code(), Some(0));
    let text = String::from_utf8_lossy(&produce.stdout);
    for option in ["--seed", "--plot", "--messages", "--duration"] {
        assert!(text.contains(option), "{option} missing from {text}");
    }

    let version = bench(&["--version"]);
    assert_eq!(version.status.code(), Some(0));
    let text = String::from_utf8_lossy(&version.stdout);
    assert!(text.starts_with("sluice-bench "), "{text}");
}
