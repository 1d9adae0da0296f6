//! What the tests that run `image-url-server` as a process share.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::process::{Child, Command};
use std::time::{Duration, Instant};

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

/// Polls `{base}/livez` until the server answers (at most 20 s) and returns the answer.
pub async fn wait_until_live(http: &reqwest::Client, base: &str) -> reqwest::Response {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(res) = http.get(format!("{base}/livez")).send().await {
            return res;
        }
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
