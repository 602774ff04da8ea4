//! `cilia-cni`: the CNI plugin binary. Environment and stdin in, result or error object on stdout.

use std::io::{Read, Write};
use std::process::ExitCode;

use cilia_cni::{CniError, Env, plugin};

fn main() -> ExitCode {
    let env = Env::from_process();
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => std::panic::catch_unwind(|| plugin::run(&env, &stdin)).unwrap_or_else(|_| {
            // A bug, not bad input; still answer with an error object so the runtime can report it.
            let err = CniError::io(
                "internal error",
                std::io::Error::other("the plugin panicked"),
            );
            plugin::error_outcome(&err, &cilia_cni::config::error_version(&stdin))
        }),
        Err(e) => plugin::error_outcome(
            &CniError::io("reading the network config from stdin", e),
            cilia_cni::version::LATEST.as_str(),
        ),
    };
    let mut out = std::io::stdout().lock();
    // If stdout is gone there is no one left to tell; the exit code still says it.
    let _ = out.write_all(outcome.stdout.as_bytes());
    let _ = out.flush();
    ExitCode::from(outcome.exit_code)
}
