//! ICE servers from the homeserver (`GET /_matrix/client/v3/voip/turnServer`), refreshed before
//! their ttl runs out.
//!
//! Synapse answers `200 {}` when no TURN server is configured; that — or any error — means
//! "host candidates only", never a failed transfer.

use std::fmt;
use std::time::{Duration, Instant};

use matrix_sdk::Client;
use matrix_sdk::ruma::api::client::voip::get_turn_server_info;
use tokio::sync::Mutex;
use tracing::{debug, info};

/// TURN servers and their credentials; empty `uris` means host candidates only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct IceServers {
    pub uris: Vec<String>,
    pub username: String,
    pub credential: String,
}

impl IceServers {
    pub fn is_empty(&self) -> bool {
        self.uris.is_empty()
    }
}

impl fmt::Debug for IceServers {
    /// Leaves the credential out: it must never reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IceServers")
            .field("uris", &self.uris)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Fetches ICE servers lazily and keeps them until shortly before their ttl.
pub struct TurnCache {
    client: Client,
    cached: Mutex<Option<(IceServers, Instant)>>,
}

/// How long "no TURN" is believed before asking again.
const NO_TURN_RECHECK: Duration = Duration::from_secs(300);

impl TurnCache {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            cached: Mutex::new(None),
        }
    }

    /// The current ICE servers, asking the homeserver when the cached answer is stale.
    pub async fn get(&self) -> IceServers {
        let mut cached = self.cached.lock().await;
        if let Some((servers, valid_until)) = cached.as_ref()
            && Instant::now() < *valid_until
        {
            return servers.clone();
        }
        let (servers, valid_for) = self.fetch().await;
        *cached = Some((servers.clone(), Instant::now() + valid_for));
        servers
    }

    async fn fetch(&self) -> (IceServers, Duration) {
        match self
            .client
            .send(get_turn_server_info::v3::Request::new())
            .await
        {
            Ok(response) if !response.uris.is_empty() => {
                info!(uris = ?response.uris, ttl = ?response.ttl, "TURN servers from the homeserver");
                let servers = IceServers {
                    uris: response.uris,
                    username: response.username,
                    credential: response.password,
                };
                (servers, refresh_after(response.ttl))
            }
            Ok(_) => (IceServers::default(), NO_TURN_RECHECK),
            Err(error) => {
                // Synapse's `{}` lands here (all fields are required by ruma).
                debug!(%error, "no TURN server; host candidates only");
                (IceServers::default(), NO_TURN_RECHECK)
            }
        }
    }
}

/// Refresh at 80 % of the ttl, so credentials handed to a new connection are never about to
/// expire; at least 10 s.
fn refresh_after(ttl: Duration) -> Duration {
    (ttl.mul_f64(0.8)).max(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_not_in_debug_output() {
        let servers = IceServers {
            uris: vec!["turn:127.0.0.1:3478".into()],
            username: "1:@a:b".into(),
            credential: "s3cret".into(),
        };
        assert!(!format!("{servers:?}").contains("s3cret"));
    }

    #[test]
    fn refresh_comes_before_the_ttl() {
        assert_eq!(
            refresh_after(Duration::from_secs(3600)),
            Duration::from_secs(2880)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(1)),
            Duration::from_secs(10)
        );
    }
}
