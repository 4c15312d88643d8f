//! The `kiln` binary: parses the command line, runs it, and reports an error
//! as one line `error: <message>` with a non-zero exit code.
//!
//! Exit codes: 0 success, 1 error (bad file, model or input), 2 usage error
//! (clap's own, or a flag combination kiln rejects). See docs/cli.md.

use std::io::ErrorKind;
use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind as ClapErrorKind;
use kiln::KilnError;
use kiln::cli::{Cli, Io, run};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version are "errors" that print to stdout and exit 0;
        // a bare `kiln` prints the help to stderr and exits 2.
        Err(e)
            if !e.use_stderr()
                || e.kind() == ClapErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            e.exit()
        }
        Err(e) => {
            eprintln!("{}", one_line_clap_error(&e.render().to_string()));
            return ExitCode::from(2);
        }
    };
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    match run(
        cli,
        Io {
            out: &mut out,
            err: &mut err,
        },
    ) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`kiln info m | head`): not an error.
        Err(KilnError::Io { source, .. }) if source.kind() == ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", kiln::error::one_line(&e.to_string()));
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
}

/// clap's message is several lines (error, tip, usage, hint); kiln promises
/// one line per error. Keep the first paragraph (the error, with any list of
/// missing arguments) and the tips, and point at --help.
fn one_line_clap_error(rendered: &str) -> String {
    let mut paragraphs = rendered.split("\n\n").map(|p| {
        p.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    });
    let mut msg = paragraphs
        .next()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "error: invalid command line".to_string());
    for tip in paragraphs.filter(|p| p.starts_with("tip:")) {
        msg.push_str("; ");
        msg.push_str(&tip);
    }
    msg.push_str(" (see `kiln --help`)");
    msg
}
