//! A system's server in a child process of its own, killed when dropped; and the
//! child's side of the handshake ([`report_port`], [`exit_when_stdin_closes`]).

use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::systems::System;

/// A running benchmark server: `PROGRAM server --system X` in a child process.
///
/// The child prints its port on the first line of its stdout. It is killed by PID
/// when this is dropped, on every path out of the driver, unwinding panics included;
/// and it exits by itself when its stdin closes, so it does not outlive a driver that
/// was killed outright.
#[derive(Debug)]
pub struct ServerProcess {
    /// The child; killed and reaped on drop.
    child: Child,
    /// Where it listens.
    addr: SocketAddr,
}

impl ServerProcess {
    /// Starts `program server --system <system> [--cpu <cpu>]` and waits for it to
    /// report its port. `program` must be the `rpc-bench` binary (the driver passes its
    /// own path).
    ///
    /// # Errors
    ///
    /// If the child cannot be started or exits without reporting a port; it is killed
    /// then.
    pub fn start(program: &Path, system: System, cpu: Option<usize>) -> io::Result<ServerProcess> {
        let mut command = Command::new(program);
        command.args(["server", "--system", system.name()]);
        if let Some(cpu) = cpu {
            command.args(["--cpu", &cpu.to_string()]);
        }
        ServerProcess::start_command(command, system.name())
    }

    /// Starts `command`, a server that follows the same handshake (prints its port on
    /// the first line of its stdout, exits when its stdin closes), and waits for the
    /// port. `what` names the server in errors. Stdin and stdout are piped, stderr is
    /// inherited.
    ///
    /// # Errors
    ///
    /// If the child cannot be started or exits without reporting a port; it is killed
    /// then.
    pub fn start_command(mut command: Command, what: &str) -> io::Result<ServerProcess> {
        let child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        // Owned by the guard from here on, so every early return below kills it.
        let mut process = ServerProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let stdout = process
            .child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("the server's stdout is not piped"))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let port: u16 = line.trim().parse().map_err(|_| {
            io::Error::other(format!(
                "the {what} server did not report a port (printed {line:?})"
            ))
        })?;
        process.addr.set_port(port);
        Ok(process)
    }

    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // Closing its stdin makes it exit by itself (at once; a server run under a
        // profiler such as callgrind then writes its profile); one that has not gone
        // within 3 s is killed by PID. Then reaped, so no zombie is left.
        drop(self.child.stdin.take());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child's side of the handshake: prints the port of `addr` as the first line of
/// stdout, which [`ServerProcess::start`] waits for.
pub fn report_port(addr: SocketAddr) {
    let mut stdout = io::stdout().lock();
    let _ = writeln!(stdout, "{}", addr.port());
    let _ = stdout.flush();
}

/// Starts a thread that exits the process once stdin closes, so a server child leaves
/// with its driver even if the driver was killed outright and could not kill it.
///
/// # Errors
///
/// If the thread cannot be started.
pub fn exit_when_stdin_closes() -> io::Result<()> {
    std::thread::Builder::new()
        .name("stdin-watchdog".to_owned())
        .spawn(|| {
            let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
            std::process::exit(0);
        })
        .map(drop)
}
