//! Helpers shared by the workspace's tests: real servers on free loopback ports.
//!
//! End-to-end tests live in `tests/tests/`; crates' own tests use these helpers as a
//! dev-dependency.

pub mod fake_tencent;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `redis-server` this test started on a free loopback port, killed on drop.
///
/// The binary is `$REDIS_SERVER_BIN` or `redis-server` on `PATH` (the README's test
/// command installs it when missing). Nothing is persisted.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    /// More `redis-server` arguments (a Cluster node's).
    extra_args: Vec<String>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it says it is ready.
    ///
    /// A port found free can be taken by someone else before `redis-server` binds it:
    /// then the server exits, and another port is tried. Panics with a clear message
    /// when the binary is missing: these tests need a real Redis, and silently skipping
    /// them would hide that.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// [`RedisServer::start`] with more `redis-server` arguments.
    pub fn start_with(extra_args: &[&str]) -> Self {
        for _ in 0..10 {
            let port = free_port();
            let dir =
                std::env::temp_dir().join(format!("image-url-redis-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("create redis dir");
            let mut server = RedisServer {
                child: None,
                port,
                dir,
                extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
            };
            if server.try_spawn() {
                return server;
            }
        }
        panic!("could not start redis-server on any of 10 free ports");
    }

    /// Starts `redis-server` on `self.port`; false if it exited before becoming ready
    /// (the port was taken).
    fn try_spawn(&mut self) -> bool {
        let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
        let mut child = Command::new(&bin)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", self.dir.to_str().expect("utf-8 temp dir")])
            .args(["--logfile", ""])
            .args(&self.extra_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {bin:?} ({e}); run the tests with `bash scripts/test.sh`, which installs redis-server")
            });
        // Readiness from the server itself: it logs this line once it accepts
        // connections, or exits (end of output) when it cannot bind.
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|line| line.contains("Ready to accept connections"));
        if !ready {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        // Keep draining its log so that a full pipe never blocks the server.
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
        let pid = child.id();
        self.child = Some(child);
        // The Redis on the port must be the one just started, not someone else's.
        assert_eq!(
            self.process_id(),
            Some(pid),
            "the Redis on port {} is not the one this test started",
            self.port
        );
        true
    }

    fn spawn(&mut self) {
        assert!(
            self.try_spawn(),
            "redis-server could not start again on port {}",
            self.port
        );
    }

    /// The `process_id` the server on our port reports (`INFO server`).
    fn process_id(&self) -> Option<u32> {
        self.try_info("server")?
            .lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .and_then(|pid| pid.trim().parse().ok())
    }

    /// `INFO <section>` over a plain connection (e.g. `commandstats`, `keyspace`).
    pub fn info(&self, section: &str) -> String {
        self.try_info(section)
            .unwrap_or_else(|| panic!("INFO {section} from the Redis on port {}", self.port))
    }

    fn try_info(&self, section: &str) -> Option<String> {
        self.bulk(&["INFO", section])
    }

    /// Runs one command on the server over a plain connection and returns the first
    /// line of its reply (`+OK`, `:1`, `-WRONGTYPE ...`): for tests that plant data.
    pub fn command(&self, args: &[&str]) -> String {
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        let mut stream = TcpStream::connect(self.addr()).expect("connect to redis");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("set a read timeout");
        stream
            .write_all(request.as_bytes())
            .expect("send a command");
        let mut line = String::new();
        BufReader::new(stream)
            .read_line(&mut line)
            .expect("read the reply");
        line.trim_end().to_owned()
    }

    /// Runs one command whose reply is a bulk string (`CLUSTER INFO`, `INFO`) and returns
    /// it; `None` if the reply is anything else.
    pub fn bulk(&self, args: &[&str]) -> Option<String> {
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        let mut stream = TcpStream::connect(self.addr()).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream.write_all(request.as_bytes()).ok()?;
        let mut reader = BufReader::new(stream);
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let len: usize = header.trim().strip_prefix('$')?.parse().ok()?;
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).ok()?;
        String::from_utf8(body).ok()
    }

    /// Sends `SIGSTOP` (the server looks stuck: connections stay open, nothing answers)
    /// or `SIGCONT` to the server.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("a running server").id();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Kills the server (as a crash would); [`RedisServer::restart`] brings it back on
    /// the same port, empty.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Starts a server that was stopped with [`RedisServer::stop`], on the same port.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of `masters` nodes (no replicas) this test started on free loopback
/// ports with `redis-cli --cluster create`, killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    /// The nodes, each a [`RedisServer`] started with `--cluster-enabled yes`.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts the nodes, joins them into a cluster covering every slot, and waits until
    /// every node reports `cluster_state:ok` (bounded: 30 s).
    pub fn start(masters: usize) -> Self {
        let nodes: Vec<RedisServer> = (0..masters)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-require-full-coverage",
                    "no",
                ])
            })
            .collect();
        let cli = std::env::var("REDIS_CLI_BIN").unwrap_or_else(|_| "redis-cli".into());
        let addrs: Vec<String> = nodes.iter().map(|n| n.addr().to_string()).collect();
        let out = Command::new(&cli)
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cli:?} ({e}); it comes with redis-server"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster { nodes };
        // Redis announces no event when the slots settle: poll each node's own state,
        // bounded.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !cluster.nodes.iter().all(|n| n.cluster_ok()) {
            assert!(
                std::time::Instant::now() < deadline,
                "the cluster did not reach cluster_state:ok"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// `redis-cluster://` URL naming every node.
    pub fn url(&self) -> String {
        let mut nodes = self.nodes.iter();
        let first = nodes.next().expect("a node");
        let rest: Vec<String> = nodes.map(|n| format!("node={}", n.addr())).collect();
        let mut url = format!("redis-cluster://{}", first.addr());
        if !rest.is_empty() {
            url.push('?');
            url.push_str(&rest.join("&"));
        }
        url
    }
}

impl RedisServer {
    /// Whether this Cluster node reports `cluster_state:ok`.
    pub fn cluster_ok(&self) -> bool {
        self.bulk(&["CLUSTER", "INFO"])
            .is_some_and(|info| info.contains("cluster_state:ok"))
    }

    /// How many keys this node holds (`DBSIZE`).
    pub fn key_count(&self) -> u64 {
        self.command(&["DBSIZE"])
            .strip_prefix(':')
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

/// A master, its replica and three sentinels watching them as `mymaster`, started by
/// this test on free loopback ports and killed on drop. Sentinels decide a master is
/// down after 1 s.
#[derive(Debug)]
pub struct RedisSentinels {
    /// The master at start.
    pub master: RedisServer,
    /// Its replica (the master after a failover).
    pub replica: RedisServer,
    sentinels: Vec<(Child, u16)>,
    dir: PathBuf,
}

impl RedisSentinels {
    /// Starts everything and waits until each sentinel says it monitors the master.
    pub fn start() -> Self {
        let master = RedisServer::start();
        let master_port = master.addr().port().to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &master_port]);
        let dir = std::env::temp_dir().join(format!(
            "image-url-sentinels-{}-{master_port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create the sentinels' dir");
        let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
        let mut sentinels = Vec::new();
        while sentinels.len() < 3 {
            let port = free_port();
            let conf = dir.join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {master_port} 2\nsentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n",
                    dir.display()
                ),
            )
            .expect("write a sentinel config");
            let mut child = Command::new(&bin)
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("start a sentinel");
            let stdout = child.stdout.take().expect("piped stdout");
            let mut lines = BufReader::new(stdout).lines();
            // Its own signal that it watches the master, or the end of its output when
            // it could not bind (then another port).
            let ready = lines
                .by_ref()
                .map_while(Result::ok)
                .any(|line| line.contains("+monitor master mymaster"));
            if !ready {
                let _ = child.kill();
                let _ = child.wait();
                continue;
            }
            std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
            sentinels.push((child, port));
        }
        RedisSentinels {
            master,
            replica,
            sentinels,
            dir,
        }
    }

    /// `redis-sentinel://` URL naming the three sentinels and the service.
    pub fn url(&self) -> String {
        let mut ports = self.sentinels.iter().map(|(_, port)| *port);
        let first = ports.next().expect("a sentinel");
        let nodes: Vec<String> = ports.map(|p| format!("&node=127.0.0.1:{p}")).collect();
        format!(
            "redis-sentinel://127.0.0.1:{first}?sentinelServiceName=mymaster{}",
            nodes.concat()
        )
    }

    /// The port of the master the first sentinel names now.
    pub fn master_port(&self) -> Option<u16> {
        let port = self.sentinels.first()?.1;
        let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let request =
            "*3\r\n$8\r\nSENTINEL\r\n$23\r\nget-master-addr-by-name\r\n$8\r\nmymaster\r\n";
        stream.write_all(request.as_bytes()).ok()?;
        // *2, $9, 127.0.0.1, $5, PORT
        let mut lines = BufReader::new(stream).lines();
        let reply: Vec<String> = lines.by_ref().take(5).map_while(Result::ok).collect();
        reply.get(4)?.trim().parse().ok()
    }
}

impl Drop for RedisSentinels {
    fn drop(&mut self) {
        for (child, _) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// The resident memory of process `pid` in KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn resident_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("read /proc/<pid>/status")
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("a VmRSS line")
}

/// [`batch`] again until every key is served from the cache, within 10 s: the service
/// answers a miss as soon as the URL is signed and stores it afterwards, on its own,
/// so the request right after a miss may still miss. Each round is itself the wait.
pub async fn batch_until_cached(
    http: &reqwest::Client,
    base: &str,
    keys: &[String],
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let body = batch(http, base, keys).await;
        if keys
            .iter()
            .all(|key| body["results"][key]["from_cache"] == true)
        {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the entries were never stored: {body}"
        );
    }
}

/// `POST {base}/api/v1/images/batch/urls` with `keys`, as JSON.
pub async fn batch(http: &reqwest::Client, base: &str, keys: &[String]) -> serde_json::Value {
    json_answer(
        http.post(format!("{base}/api/v1/images/batch/urls"))
            .json(&serde_json::json!({ "keys": keys })),
    )
    .await
}

/// Sends `request` and reads its answer as JSON, whatever the status.
pub async fn json_answer(request: reqwest::RequestBuilder) -> serde_json::Value {
    request
        .send()
        .await
        .expect("the server answers")
        .json()
        .await
        .expect("a JSON body")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port someone else holds (another Redis here) makes `redis-server` exit; the
    /// helper reports that instead of talking to the other server, and `start` moves on
    /// to another port.
    #[test]
    fn a_taken_port_is_detected_not_shared() {
        let first = RedisServer::start();
        let mut second = RedisServer {
            child: None,
            port: first.port,
            dir: std::env::temp_dir().join(format!("image-url-redis-taken-{}", std::process::id())),
            extra_args: Vec::new(),
        };
        std::fs::create_dir_all(&second.dir).unwrap();
        assert!(!second.try_spawn(), "the port is taken");
        assert!(second.child.is_none());
        let third = RedisServer::start();
        assert_ne!(third.port, first.port);
        assert_eq!(third.process_id(), third.child.as_ref().map(Child::id));
    }
}
