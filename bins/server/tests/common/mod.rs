//! What the tests that run `image-url-server` as a process share.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The server binary, with no COS credentials inherited from the environment.
pub fn server() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_image-url-server"));
    for var in ["COS_SECRET_ID", "COS_SECRET_KEY", "COS_SECURITY_TOKEN"] {
        cmd.env_remove(var);
    }
    cmd
}

/// Kills the server if the test ends (or an assertion fails) before it is taken back.
pub struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    /// Guards `child`.
    pub fn new(child: Child) -> Self {
        KillOnDrop(Some(child))
    }

    /// The process id of the guarded server.
    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// Takes the server back, to stop it in an orderly way.
    pub fn take(mut self) -> Child {
        self.0.take().expect("the child is guarded until taken")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A server process started by [`start`], listening.
pub struct Running {
    /// The process, killed on drop unless taken.
    pub process: KillOnDrop,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Its whole log (stderr), collected until it exits: join after stopping it.
    pub log: JoinHandle<Vec<String>>,
}

/// Spawns `command` (a `serve`) on an ephemeral port and waits for its own signal that it
/// listens: the "image-url server listening addr=…" log line, which also names the port
/// (so no port has to be guessed free beforehand). `RUST_LOG`, unless the command sets
/// it, keeps the server's own info lines and drops the access log.
pub fn start(command: &mut Command) -> Running {
    for (name, default) in [
        ("IMAGE_URL_SERVER__LISTEN", "127.0.0.1:0"),
        ("RUST_LOG", "warn,image_url_server=info"),
    ] {
        if !command.get_envs().any(|(k, v)| k == name && v.is_some()) {
            command.env(name, default);
        }
    }
    let mut child = command
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the server");
    let stderr = child.stderr.take().expect("piped stderr");
    let process = KillOnDrop::new(child);
    let (listening_tx, listening_rx) = mpsc::channel();
    let log = std::thread::spawn(move || {
        let mut log = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("image-url server listening") {
                // The test may have given up waiting; the log is still collected.
                let _ = listening_tx.send(line.clone());
            }
            log.push(line);
        }
        log
    });
    let line = listening_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the server says it is listening (or it exited: see its log)");
    let addr = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("addr="))
        .expect("the listening line names the address");
    Running {
        process,
        base: format!("http://{addr}"),
        log,
    }
}
