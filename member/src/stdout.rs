//! Standard output for the command-line tools (`gm`, `gcks`): a line written to a reader
//! that went away (`gm status | head -1`) ends the process quietly with the status a death
//! by SIGPIPE shows in a shell (128 + 13), where `println!` would panic.

use std::io::Write as _;

/// The exit status of a process whose stdout reader went away.
pub const BROKEN_PIPE_STATUS: i32 = 141;

/// Writes one line to stdout (see the module documentation).
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(BROKEN_PIPE_STATUS);
        }
        eprintln!("stdout: {e}");
        std::process::exit(1);
    }
}

/// `println!` through [`line`].
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::stdout::line(format_args!($($arg)*))
    };
}
