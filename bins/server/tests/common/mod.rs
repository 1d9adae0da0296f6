//! What the tests that run `image-url-server` as a process share.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code, unused_imports)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The server binary, with no COS credentials inherited from the environment.
pub fn server() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_image-url-server"));
    for var in [
        "COS_SECRET_ID",
        "COS_SECRET_KEY",
        "COS_SECURITY_TOKEN",
        "TENCENTCLOUD_SECRET_ID",
        "TENCENTCLOUD_SECRET_KEY",
        "TENCENTCLOUD_TOKEN",
    ] {
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
    // Text (`addr=…`) or JSON lines (`json_logs`).
    let addr = match serde_json::from_str::<serde_json::Value>(&line) {
        Ok(json) => json["fields"]["addr"].as_str().map(str::to_owned),
        Err(_) => line
            .split_whitespace()
            .find_map(|field| field.strip_prefix("addr="))
            .map(str::to_owned),
    }
    .expect("the listening line names the address");
    Running {
        process,
        base: format!("http://{addr}"),
        log,
    }
}

/// A dev origin serving `dir`, accepting signatures made with (`secret_id`, `secret_key`).
pub async fn origin(
    dir: &std::path::Path,
    secret_id: &str,
    secret_key: &str,
) -> dev_origin::DevOrigin {
    let credentials = cos_sign::Credentials::new(secret_id, secret_key);
    dev_origin::DevOrigin::start(
        dev_origin::OriginConfig::new(dir, credentials),
        "127.0.0.1:0".parse().expect("a socket address"),
    )
    .await
    .expect("start the dev origin")
}

/// Stops `running` with SIGTERM, checks that it exits cleanly, and returns its log.
pub fn terminate(running: Running) -> String {
    let Running { process, log, .. } = running;
    let mut child = process.take();
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert!(status.success(), "clean exit on SIGTERM");
    log.join().unwrap().join("\n")
}

/// `serve` on one worker, signing with (`secret_id`, `secret_key`) for `origin` over
/// plain HTTP; add settings with `.env(...)` and pass it to [`start`].
pub fn serve_for(origin: &dev_origin::DevOrigin, secret_id: &str, secret_key: &str) -> Command {
    let mut command = serve_signing(secret_id, secret_key);
    command
        .env("IMAGE_URL_COS__DOMAIN", origin.addr().to_string())
        .env("IMAGE_URL_COS__SCHEME", "http");
    command
}

/// `serve` on one worker, signing with (`secret_id`, `secret_key`) for the default
/// bucket (no origin behind it: for tests of what the server answers itself).
pub fn serve_signing(secret_id: &str, secret_key: &str) -> Command {
    let mut command = server();
    command
        .arg("serve")
        .env("COS_SECRET_ID", secret_id)
        .env("COS_SECRET_KEY", secret_key)
        .env("IMAGE_URL_SERVER__WORKERS", "1");
    command
}

/// The problem type (the last segment of `type`) of a problem+json answer with
/// `status`, which carries a request id.
pub async fn problem_type(res: reqwest::Response, status: u16) -> String {
    assert_eq!(res.status().as_u16(), status);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert!(res.headers().contains_key("x-request-id"));
    let body: serde_json::Value = res.json().await.expect("a JSON problem body");
    body["type"]
        .as_str()
        .and_then(|kind| kind.rsplit('/').next())
        .expect("a problem type")
        .to_owned()
}

/// An HTTP client for the tests: redirects are not followed (the tests look at the 302s
/// themselves). reqwest is built with `rustls-no-provider`, so the ring provider is
/// installed for the test process first (the server under test needs none).
pub fn http() -> reqwest::Client {
    // Installing twice is refused harmlessly: the first one stays.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a plain HTTP client builds")
}

/// `GET url` (with `token` as the admin bearer, if given) as JSON, whatever the status.
pub async fn get_json(http: &reqwest::Client, url: &str, token: Option<&str>) -> serde_json::Value {
    let mut request = http.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    json_answer(request).await
}

/// `GET {base}/api/v1/images/{key}/proxy`, which must answer a redirect; the answer.
pub async fn redirect(http: &reqwest::Client, base: &str, key: &str) -> reqwest::Response {
    let res = http
        .get(format!("{base}/api/v1/images/{key}/proxy"))
        .send()
        .await
        .expect("the server answers");
    assert_eq!(res.status(), 302, "{key}: a redirect");
    res
}

/// `GET {base}/metrics` as text.
pub async fn metrics(http: &reqwest::Client, base: &str) -> String {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .expect("the metrics endpoint answers")
        .text()
        .await
        .expect("a text body")
}

/// Redirect requests kept going by `workers` tasks until [`Load::stop`], spread over
/// `bases` and `keys`; each answer counts, and any that is not a 302 (or no answer)
/// counts as failed. Tests wait on [`Load::reach`], which wakes on every answer.
pub struct Load {
    answered: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    failed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    progress: std::sync::Arc<tokio::sync::Notify>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts the workers.
    pub fn start(http: &reqwest::Client, bases: &[&str], keys: &[String], workers: usize) -> Self {
        use std::sync::atomic::Ordering;
        let load = Load {
            answered: Default::default(),
            failed: Default::default(),
            stop: Default::default(),
            progress: Default::default(),
            tasks: Vec::new(),
        };
        let tasks = (0..workers)
            .map(|worker| {
                let base = bases[worker % bases.len()].to_owned();
                let (http, keys) = (http.clone(), keys.to_vec());
                let (answered, failed, stop, progress) = (
                    load.answered.clone(),
                    load.failed.clone(),
                    load.stop.clone(),
                    load.progress.clone(),
                );
                tokio::spawn(async move {
                    let mut i = worker;
                    while !stop.load(Ordering::Relaxed) {
                        let key = &keys[i % keys.len()];
                        i += 1;
                        let redirected = http
                            .get(format!("{base}/api/v1/images/{key}/proxy"))
                            .send()
                            .await
                            .is_ok_and(|res| res.status() == 302);
                        if !redirected {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        answered.fetch_add(1, Ordering::Relaxed);
                        progress.notify_waiters();
                    }
                })
            })
            .collect();
        Load { tasks, ..load }
    }

    /// Requests answered so far.
    pub fn answered(&self) -> usize {
        self.answered.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until `more` requests have been answered from now, at most `within`.
    pub async fn reach(&self, more: usize, within: Duration, what: &str) {
        let target = self.answered() + more;
        let wait = async {
            loop {
                let notified = self.progress.notified();
                if self.answered() >= target {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(within, wait)
            .await
            .unwrap_or_else(|_| panic!("{what}: fewer than {more} answers in {within:?}"));
    }

    /// Stops the workers; how many requests failed.
    pub async fn stop(self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("a load worker");
        }
        self.failed.load(std::sync::atomic::Ordering::Relaxed)
    }
}

pub use image_url_tests::{batch, batch_until_cached, json_answer};
