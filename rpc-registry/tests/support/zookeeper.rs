//! Real ZooKeeper servers for tests: Debian's `zookeeper` 3.8 jar run with the JRE on
//! loopback ports, plaintext or with a TLS `secureClientPort` beside the plaintext
//! one. Standard library only, so both rpc-registry's tests (as `support::zookeeper`)
//! and the examples' process tests (by `#[path]`) start ZooKeeper the same way.

#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The server jar of Debian's `zookeeper` package; its manifest's `Class-Path` names
/// the libraries the plaintext server needs.
pub const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";

/// What the jar's `Class-Path` leaves out and the Netty connection factory (the only
/// one that serves TLS) needs: `netty-handler`'s `SslHandler` is a `netty-codec`
/// decoder, `netty-transport` resolves through `netty-resolver`, and the epoll
/// transport it prefers on Linux needs `netty-transport-native-unix-common`. All from
/// Debian's `libnetty-java`, which the `zookeeper` package depends on.
const NETTY_JARS: [&str; 3] = [
    "/usr/share/java/netty-codec.jar",
    "/usr/share/java/netty-resolver.jar",
    "/usr/share/java/netty-transport-native-unix-common.jar",
];

/// Whether ZooKeeper can be started here (a `java` on the PATH and Debian's jar);
/// when not, says so loudly, so a skipped test is never mistaken for a passing one.
pub fn zookeeper_installed(test: &str) -> bool {
    let java = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("java").is_file()));
    let why = if !java {
        "no `java` on the PATH (Debian: default-jre-headless)".to_owned()
    } else if !Path::new(ZOOKEEPER_JAR).is_file() {
        format!("{ZOOKEEPER_JAR} is missing (Debian: zookeeper; .ci/run installs it)")
    } else {
        return true;
    };
    eprintln!("\n!!!!! SKIPPED {test}: {why} !!!!!\n");
    false
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh directory under the system temp dir.
fn fresh_dir() -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "rpc-zookeeper-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// A TLS `secureClientPort` for each server, with PEM stores (ZooKeeper 3.8 reads
/// PEM key and trust stores itself: no keytool, no passwords).
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The server's certificate chain and PKCS#8 key, concatenated (its key store).
    pub cert_and_key_pem: String,
    /// The CA certificates it checks client certificates against (its trust store).
    pub client_ca_pem: String,
    /// Whether it demands a client certificate (`ssl.clientAuth=need`) or asks for
    /// none (`none`).
    pub need_client_cert: bool,
}

/// One ZooKeeper server on 127.0.0.1: its own config and data dir, the admin server
/// off, `srvr` allowed on the plaintext port (it tells when the server serves and
/// whether it leads). Stopping it kills it by PID (SIGKILL); starting it again reuses
/// its data and ports. Dropping it kills it and removes its directory.
pub struct ZkNode {
    /// Its `myid` (1, 2, 3).
    pub id: usize,
    /// Plaintext client port.
    pub client_port: u16,
    /// TLS client port (`secureClientPort`), when it serves TLS.
    pub secure_port: Option<u16>,
    /// Its directory: `zoo.cfg`, `data/` and, with TLS, its PEM stores.
    dir: PathBuf,
    /// JVM system properties beyond the defaults (the TLS settings).
    properties: Vec<String>,
    /// The running process.
    child: Option<Child>,
}

impl ZkNode {
    /// `host:port` of the plaintext client port.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// `host:port` of the TLS client port.
    ///
    /// # Panics
    ///
    /// If the server was started without TLS.
    pub fn secure_endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.secure_port.expect("a TLS server"))
    }

    /// Starts (or restarts) the server and returns at once.
    pub fn start(&mut self) {
        self.kill();
        let classpath = std::iter::once(ZOOKEEPER_JAR)
            .chain(NETTY_JARS)
            .collect::<Vec<_>>()
            .join(":");
        let child = Command::new("java")
            // Small and quick to start: these servers hold a few dozen nodes, and the
            // machine's cores are shared with the tests' own processes.
            .args(["-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"])
            .args(["-cp", &classpath])
            .arg("-Dzookeeper.admin.enableServer=false")
            .args(&self.properties)
            .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
            .arg(self.dir.join("zoo.cfg"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ZooKeeper (java)");
        self.child = Some(child);
    }

    /// Kills the server (SIGKILL, by PID) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether it runs (was started and not killed).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// The answer to the `srvr` four-letter word, if any.
    fn srvr(&self) -> Option<String> {
        let mut stream = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.client_port)),
            Duration::from_millis(200),
        )
        .ok()?;
        stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .ok()?;
        stream.write_all(b"srvr").ok()?;
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        Some(answer)
    }

    /// Whether it serves clients (standalone, or in a quorum with a leader).
    pub fn serving(&self) -> bool {
        self.srvr().is_some_and(|a| a.contains("Mode: "))
    }

    /// Whether it leads the ensemble.
    pub fn is_leader(&self) -> bool {
        self.srvr().is_some_and(|a| a.contains("Mode: leader"))
    }
}

impl Drop for ZkNode {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A ZooKeeper ensemble of `size` servers on loopback (one is a standalone server),
/// started and serving.
pub struct ZkEnsemble {
    /// Its servers.
    pub nodes: Vec<ZkNode>,
}

impl ZkEnsemble {
    /// Starts `size` plaintext servers and waits (up to 30 s) until every one serves.
    pub fn start(size: usize) -> ZkEnsemble {
        ZkEnsemble::start_with(size, None)
    }

    /// Starts `size` servers, each with a TLS client port when `tls` is given (the
    /// quorum itself talks plaintext), and waits (up to 30 s) until every one serves.
    pub fn start_with(size: usize, tls: Option<&ServerTls>) -> ZkEnsemble {
        let ports: Vec<(u16, u16, u16)> = (0..size)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let servers: String = ports
            .iter()
            .enumerate()
            .map(|(i, (_, quorum, election))| {
                format!("server.{}=127.0.0.1:{quorum}:{election}\n", i + 1)
            })
            .collect();
        let mut nodes: Vec<ZkNode> = ports
            .iter()
            .enumerate()
            .map(|(i, &(client_port, _, _))| {
                let dir = fresh_dir();
                let data = dir.join("data");
                std::fs::create_dir_all(&data).unwrap();
                // Ticks of 200 ms: sessions of 1 s and up (2 ticks minimum by default
                // would be 400 ms; 1 s keeps a loaded machine from expiring them
                // spuriously), leader election in well under a second on loopback.
                let mut config = format!(
                    "tickTime=200\ninitLimit=50\nsyncLimit=10\n\
                     minSessionTimeout=1000\nmaxSessionTimeout=60000\n\
                     dataDir={}\nclientPort={client_port}\nclientPortAddress=127.0.0.1\n\
                     admin.enableServer=false\n4lw.commands.whitelist=srvr,ruok\n",
                    data.display()
                );
                if size > 1 {
                    std::fs::write(data.join("myid"), format!("{}\n", i + 1)).unwrap();
                    config.push_str(&servers);
                }
                let (secure_port, properties) = match tls {
                    Some(tls) => {
                        let port = free_port();
                        config.push_str(&format!(
                            "secureClientPort={port}\nsecureClientPortAddress=127.0.0.1\n"
                        ));
                        (Some(port), tls_properties(&dir, tls))
                    }
                    None => (None, Vec::new()),
                };
                std::fs::write(dir.join("zoo.cfg"), config).unwrap();
                ZkNode {
                    id: i + 1,
                    client_port,
                    secure_port,
                    dir,
                    properties,
                    child: None,
                }
            })
            .collect();
        for node in &mut nodes {
            node.start();
        }
        let ensemble = ZkEnsemble { nodes };
        ensemble.wait_serving(Duration::from_secs(30));
        ensemble
    }

    /// Waits until every running server serves.
    ///
    /// # Panics
    ///
    /// Past `limit`.
    pub fn wait_serving(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self
            .nodes
            .iter()
            .filter(|n| n.running())
            .all(ZkNode::serving)
        {
            assert!(
                Instant::now() < deadline,
                "ZooKeeper not serving within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `zookeeper://h1,h2,h3` for the whole ensemble (the plaintext ports).
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.nodes.iter().map(ZkNode::endpoint).collect();
        format!("zookeeper://{}", hosts.join(","))
    }

    /// `h1,h2,h3` of the TLS ports.
    ///
    /// # Panics
    ///
    /// If the ensemble was started without TLS.
    pub fn secure_hosts(&self) -> String {
        let hosts: Vec<String> = self.nodes.iter().map(ZkNode::secure_endpoint).collect();
        hosts.join(",")
    }
}

/// Writes `tls`'s PEM stores into `dir` and returns the JVM properties that make a
/// server serve its `secureClientPort` with them.
fn tls_properties(dir: &Path, tls: &ServerTls) -> Vec<String> {
    let key_store = dir.join("server.pem");
    let trust_store = dir.join("clients-ca.pem");
    std::fs::write(&key_store, &tls.cert_and_key_pem).unwrap();
    std::fs::write(&trust_store, &tls.client_ca_pem).unwrap();
    let client_auth = if tls.need_client_cert { "need" } else { "none" };
    vec![
        // The NIO factory serves plaintext only.
        "-Dzookeeper.serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory"
            .to_owned(),
        format!("-Dzookeeper.ssl.keyStore.location={}", key_store.display()),
        "-Dzookeeper.ssl.keyStore.type=PEM".to_owned(),
        format!(
            "-Dzookeeper.ssl.trustStore.location={}",
            trust_store.display()
        ),
        "-Dzookeeper.ssl.trustStore.type=PEM".to_owned(),
        format!("-Dzookeeper.ssl.clientAuth={client_auth}"),
    ]
}
