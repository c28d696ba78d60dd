//! Two network "sites" for fault tests: Linux network namespaces, each joined to this one by
//! a veth pair (iproute2; the tests run as root).
//!
//! ```text
//!   site 0 (10.N.1.2) ──veth── 10.N.1.1  this namespace  10.N.2.1 ──veth── site 1 (10.N.2.2)
//! ```
//!
//! Each site reaches the two addresses of this namespace (and through them the homeserver,
//! via a TCP relay this harness runs, and a TURN server bound there), but has no route to the
//! other site: like two devices behind NATs, they can only meet through the relay.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Two namespaces, their links, and a way in to the homeserver.
pub struct Split {
    /// Namespace names, for `nsenter --net=/run/netns/NAME`.
    pub sites: [String; 2],
    /// This namespace's address on each site's link.
    pub gateways: [Ipv4Addr; 2],
    links: [String; 2],
    proxy: Option<JoinHandle<()>>,
}

fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Split {
    /// Makes both sites. Subnets and names come from this process's id and a count, so
    /// tests and runs don't clash.
    pub fn new() -> Self {
        static MADE: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let index = MADE.fetch_add(1, Ordering::Relaxed);
        let net = 100 + ((pid + 7 * index) % 150) as u8;
        let sites = [
            format!("d2dfs{pid}-{index}a"),
            format!("d2dfs{pid}-{index}b"),
        ];
        // Interface names have 15 bytes at most.
        let links = [format!("d2{net}x{index}a"), format!("d2{net}x{index}b")];
        let gateways = [Ipv4Addr::new(10, net, 1, 1), Ipv4Addr::new(10, net, 2, 1)];
        for i in 0..2 {
            let (site, link) = (&sites[i], &links[i]);
            let inner = format!("{link}i");
            let gateway = gateways[i].to_string();
            let address = format!("10.{net}.{}.2/24", i + 1);
            let _ = Command::new("ip").args(["netns", "del", site]).output();
            ip(&["netns", "add", site]);
            ip(&["link", "add", link, "type", "veth", "peer", "name", &inner]);
            ip(&["link", "set", &inner, "netns", site]);
            ip(&["addr", "add", &format!("{gateway}/24"), "dev", link]);
            ip(&["link", "set", link, "up"]);
            ip(&["-n", site, "addr", "add", &address, "dev", &inner]);
            ip(&["-n", site, "link", "set", &inner, "up"]);
            ip(&["-n", site, "link", "set", "lo", "up"]);
            // The other gateway is an address of this namespace: reachable without any
            // forwarding, so the sites share the relay but never see each other.
            let other = gateways[1 - i].to_string();
            ip(&["-n", site, "route", "add", &other, "via", &gateway]);
        }
        Self {
            sites,
            gateways,
            links,
            proxy: None,
        }
    }

    /// An address on the sites' side for the homeserver: its URL (the homeserver's
    /// `public_baseurl`, so that clients keep using it) and the listener behind it.
    pub async fn homeserver_address(&self) -> (String, TcpListener) {
        let listener = TcpListener::bind((self.gateways[0], 0))
            .await
            .expect("bind the homeserver relay");
        let port = listener.local_addr().unwrap().port();
        (format!("http://{}:{port}", self.gateways[0]), listener)
    }

    /// Relays `listener` (from [`homeserver_address`](Self::homeserver_address)) to the
    /// homeserver listening at `url` on 127.0.0.1.
    pub fn relay_homeserver(&mut self, listener: TcpListener, url: &str) {
        let target = url
            .strip_prefix("http://")
            .expect("an http:// homeserver")
            .trim_end_matches('/')
            .to_owned();
        self.proxy = Some(tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    /// Drops `percent` % of the UDP datagrams each site receives (nftables in the site's
    /// namespace): a lossy network for ICE, DTLS and SCTP; the homeserver's TCP is spared.
    pub fn lose_udp(&self, percent: u8) {
        for site in &self.sites {
            let nft = |args: &[&str]| {
                let mut all = vec!["netns", "exec", site, "nft"];
                all.extend_from_slice(args);
                ip(&all);
            };
            nft(&["add", "table", "inet", "lossy"]);
            nft(&[
                "add",
                "chain",
                "inet",
                "lossy",
                "input",
                "{ type filter hook input priority 0; }",
            ]);
            let rule = if percent >= 100 {
                "meta l4proto udp drop".to_owned()
            } else {
                format!("meta l4proto udp numgen random mod 100 < {percent} drop")
            };
            nft(&["add", "rule", "inet", "lossy", "input", &rule]);
        }
    }

    /// Ends [`lose_udp`](Self::lose_udp).
    pub fn stop_losing_udp(&self) {
        for site in &self.sites {
            ip(&[
                "netns", "exec", site, "nft", "delete", "table", "inet", "lossy",
            ]);
        }
    }

    /// Takes site `site`'s link down (`false`) or up again (`true`).
    pub fn set_link(&self, site: usize, up: bool) {
        ip(&[
            "link",
            "set",
            &self.links[site],
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for Split {
    fn drop(&mut self) {
        if let Some(proxy) = &self.proxy {
            proxy.abort();
        }
        for site in &self.sites {
            // Deleting a namespace deletes its end of the veth pair, and so the pair.
            let _ = Command::new("ip").args(["netns", "del", site]).output();
        }
    }
}
