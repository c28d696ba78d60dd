//! A real TURN server (coturn, from Debian's packages) on 127.0.0.1 for one test.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running coturn; killed when dropped.
pub struct Coturn {
    pub ip: String,
    pub port: u16,
    pub secret: String,
    child: Child,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Coturn {
    pub fn start() -> Self {
        Self::start_on("127.0.0.1")
    }

    /// A server listening and relaying on `ip` (an address of this network namespace).
    pub fn start_on(ip: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let secret = super::homeserver::unique_name("turn-secret");
        let relay_base = 40_000 + (port % 20_000);
        let config = format!(
            "listening-ip={ip}\nrelay-ip={ip}\nlistening-port={port}\n\
             min-port={relay_base}\nmax-port={}\nrealm=localhost\nuse-auth-secret\n\
             static-auth-secret={secret}\nallow-loopback-peers\nfingerprint\nno-tls\nno-dtls\n\
             no-cli\nno-multicast-peers\nverbose\nlog-file={}\npidfile={}\n",
            relay_base + 200,
            dir.path().join("turn.log").display(),
            dir.path().join("turn.pid").display(),
        );
        let config_path = dir.path().join("turnserver.conf");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new("turnserver")
            .arg("-c")
            .arg(&config_path)
            .arg("--simple-log")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turnserver (contrib/setup.sh installs coturn)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect((ip, port)).is_err() {
            assert!(Instant::now() < deadline, "coturn did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            ip: ip.to_owned(),
            port,
            secret,
            child,
            dir,
        }
    }

    /// Synapse configuration that hands out credentials for this server.
    pub fn synapse_config(&self) -> String {
        format!(
            "turn_uris: [\"turn:{ip}:{port}?transport=udp\", \"turn:{ip}:{port}?transport=tcp\"]\n\
             turn_shared_secret: \"{secret}\"\nturn_user_lifetime: 1h\n",
            ip = self.ip,
            port = self.port,
            secret = self.secret
        )
    }

    /// Everything coturn logged so far.
    pub fn log(&self) -> String {
        let mut text = String::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            let path: PathBuf = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                text.push_str(&std::fs::read_to_string(path).unwrap_or_default());
            }
        }
        text
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
