//! The [`Connector`] over webrtc-rs 0.21: one peer connection and one reliable, ordered data
//! channel per transfer and side.
//!
//! Facts this relies on (see the project's webrtc notes):
//! - webrtc-rs skips loopback and link-local interfaces when bound to `0.0.0.0`, so the default
//!   binds `127.0.0.1` as well: two d2dfs processes on one machine must find each other.
//! - Pausing on buffered-amount events does not bound memory; a per-channel send-buffer limit
//!   with `send().await` does, and is what gives the sender backpressure.
//! - Event-handler callbacks run on the connection's driver: they only forward, never wait.
//! - On a relayed path the driver sends a packet only on its next turn; channels wake it
//!   while they are busy (see [`RELAY_NUDGE_INTERVAL`]). During set-up it holds the SCTP
//!   INIT and the channel's OPEN the same way; once ICE has started, channels wake it until
//!   they open, for at most [`OPENING_NUDGE_WINDOW`].
//! - Answers take the DTLS server role (`a=setup:passive`): an answerer that starts DTLS can
//!   send its ClientHello before the offerer is ready for it, and then waits out a
//!   retransmission. With both, a connection opens in ~25 ms on loopback instead of ~430.
//! - The kernel's default UDP receive buffer drops a busy connection's packets and SCTP
//!   reads every drop as congestion; sockets get 4 MiB ([`super::sockets`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use rtc::ice::mdns::MulticastDnsMode;
use rtc::peer_connection::configuration::setting_engine::SctpMaxMessageSize;
use rtc::peer_connection::transport::RTCDtlsRole;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, warn};
use webrtc::data_channel::{DataChannel, DataChannelEvent, RTCDataChannelInit};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceCandidateInit, RTCIceCandidateType, RTCIceGatheringState, RTCIceServer,
    RTCIceTransportPolicy, RTCPeerConnectionIceEvent, RTCPeerConnectionState,
    RTCSessionDescription, SettingEngine, SettingEngineBuilder,
};

use super::sockets::BufferedRuntime;
use super::{Channel, Connector, MAIN_LABEL, NewPeer, Peer, PeerEvent, TransportError};
use crate::signalling::events::Candidate;
use crate::signalling::turn::IceServers;

/// How a [`WebRtcConnector`] makes connections.
#[derive(Debug, Clone)]
pub struct WebRtcConfig {
    /// Local UDP addresses to gather host candidates on.
    pub udp_addrs: Vec<String>,
    /// Use TURN relays only (tests prove the relayed path with it).
    pub relay_only: bool,
    /// Bytes a data channel may hold unsent before `send` waits.
    pub send_buffer_limit: usize,
    /// How long to wait for candidates before the description is sent (the rest trickle).
    pub gathering_wait: Duration,
    /// SCTP receive window in bytes (`None`: webrtc-rs's 1 MiB).
    pub sctp_receive_buffer: Option<u32>,
    /// SCTP packet budget in bytes (`None`: webrtc-rs's 1191, safe through TURN over IPv6).
    pub sctp_mtu: Option<u32>,
    /// Largest message this side accepts (SDP `max-message-size`; `None`: 64 KiB).
    pub max_message_size: Option<u32>,
    /// Pause between ICE connectivity checks (`None`: webrtc-rs's 200 ms). d2dfs uses 20 ms:
    /// webrtc-rs's driver sends what the DTLS handshake queued only when a timer wakes it, and
    /// during checking that timer is this one; measured on loopback, a connection opens in
    /// ~430 ms instead of ~610 (median of 12; contrib/bench/RESULTS.md).
    pub ice_check_interval: Option<Duration>,
    /// Kernel receive and send buffer for each UDP socket (`None`: the kernel's default,
    /// which a busy connection overruns; see [`super::sockets`]).
    pub udp_buffer: Option<usize>,
}

impl Default for WebRtcConfig {
    fn default() -> Self {
        Self {
            udp_addrs: vec!["0.0.0.0:0".to_owned(), "127.0.0.1:0".to_owned()],
            relay_only: false,
            send_buffer_limit: 4 << 20,
            gathering_wait: Duration::from_millis(500),
            sctp_receive_buffer: None,
            sctp_mtu: None,
            max_message_size: None,
            ice_check_interval: Some(Duration::from_millis(20)),
            udp_buffer: Some(4 << 20),
        }
    }
}

/// Makes webrtc-rs peer connections.
#[derive(Debug, Clone, Default)]
pub struct WebRtcConnector {
    config: WebRtcConfig,
}

impl WebRtcConnector {
    pub fn new(config: WebRtcConfig) -> Self {
        Self { config }
    }

    async fn build(
        &self,
        ice: &IceServers,
        events: mpsc::Sender<PeerEvent>,
    ) -> Result<(Arc<dyn PeerConnection>, mpsc::Receiver<()>, ConnectionRef), TransportError> {
        let configuration = || {
            let mut configuration = RTCConfigurationBuilder::new();
            if !ice.is_empty() {
                configuration = configuration.with_ice_servers(vec![RTCIceServer {
                    urls: ice.uris.clone(),
                    username: ice.username.clone(),
                    credential: ice.credential.clone(),
                }]);
            }
            if self.config.relay_only {
                configuration =
                    configuration.with_ice_transport_policy(RTCIceTransportPolicy::Relay);
            }
            configuration.build()
        };
        let (gathered_tx, gathered_rx) = mpsc::channel(1);
        let connection = ConnectionRef::default();
        let handler = Arc::new(Handler {
            events,
            gathered: gathered_tx,
            connection: connection.clone(),
        });
        // mDNS (to resolve browsers' `.local` candidates) joins a multicast group, which fails
        // with ENODEV on a network without a multicast route (no default route: an isolated
        // LAN, a container): then connect without it rather than not at all.
        let mut last_error = None;
        for mdns in [MulticastDnsMode::QueryOnly, MulticastDnsMode::Disabled] {
            let mut builder = PeerConnectionBuilder::new();
            if let Some(buffer) = self.config.udp_buffer {
                builder = builder.with_runtime(BufferedRuntime::new(buffer));
            }
            let built = builder
                .with_configuration(configuration())
                .with_setting_engine(self.settings(mdns))
                .with_handler(handler.clone())
                .with_udp_addrs(self.config.udp_addrs.clone())
                .with_data_channel_send_buffer_limit(self.config.send_buffer_limit)
                .build()
                .await;
            match built {
                Ok(peer) => {
                    let peer: Arc<dyn PeerConnection> = Arc::new(peer);
                    connection.set(&peer);
                    return Ok((peer, gathered_rx, connection));
                }
                Err(error) => {
                    debug!(%error, ?mdns, "peer connection not made");
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.map_or_else(
            || TransportError::Other("no peer connection".to_owned()),
            other,
        ))
    }

    /// webrtc-rs's settings for one connection.
    fn settings(&self, mdns: MulticastDnsMode) -> SettingEngine {
        let mut settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(mdns)
            .with_answering_dtls_role(RTCDtlsRole::Server);
        if let Some(size) = self.config.sctp_receive_buffer {
            settings = settings.with_sctp_max_receive_buffer_size(size);
        }
        if let Some(mtu) = self.config.sctp_mtu {
            settings = settings.with_sctp_mtu(mtu);
        }
        if let Some(interval) = self.config.ice_check_interval {
            settings = settings.with_ice_connection_attempts(Some(interval), None);
        }
        if let Some(size) = self.config.max_message_size {
            settings = settings.with_sctp_max_message_size(SctpMaxMessageSize::Bounded(size));
        }
        settings.build()
    }

    /// Waits (briefly) for gathering, then returns the local description's SDP.
    async fn local_sdp(
        &self,
        peer: &Arc<dyn PeerConnection>,
        mut gathered: mpsc::Receiver<()>,
    ) -> Result<String, TransportError> {
        let _ = tokio::time::timeout(self.config.gathering_wait, gathered.recv()).await;
        peer.local_description()
            .await
            .map(|description| description.sdp)
            .ok_or_else(|| TransportError::Other("no local description".to_owned()))
    }
}

/// Longest SDP accepted from the network (a whole Matrix event is at most 64 KiB anyway).
pub const MAX_SDP: usize = 64 * 1024;

/// Which description a remote SDP is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdpKind {
    Offer,
    Answer,
}

/// Judges an SDP from the network before webrtc-rs acts on it: bounded in size, parseable,
/// and describing a data channel (`m=application`), the only thing d2dfs connects.
pub fn remote_description(
    kind: SdpKind,
    sdp: &str,
) -> Result<RTCSessionDescription, TransportError> {
    let bad = |error: String| TransportError::BadDescription(error);
    if sdp.len() > MAX_SDP {
        return Err(bad(format!(
            "{} bytes of SDP (at most {MAX_SDP})",
            sdp.len()
        )));
    }
    let description = match kind {
        SdpKind::Offer => RTCSessionDescription::offer(sdp.to_owned()),
        SdpKind::Answer => RTCSessionDescription::answer(sdp.to_owned()),
    }
    .map_err(|e| bad(e.to_string()))?;
    let parsed = description.unmarshal().map_err(|e| bad(e.to_string()))?;
    if !parsed
        .media_descriptions
        .iter()
        .any(|media| media.media_name.media == "application")
    {
        return Err(bad("no data channel (m=application) in the SDP".to_owned()));
    }
    Ok(description)
}

fn other(error: impl std::fmt::Display) -> TransportError {
    TransportError::Other(error.to_string())
}

#[async_trait]
impl Connector for WebRtcConnector {
    async fn offer(&self, ice: &IceServers) -> Result<NewPeer, TransportError> {
        let (events_tx, events_rx) = mpsc::channel(64);
        let (peer, gathered, connection) = self.build(ice, events_tx.clone()).await?;
        let channel = peer
            .create_data_channel(MAIN_LABEL, Some(RTCDataChannelInit::default()))
            .await
            .map_err(other)?;
        tokio::spawn(announce_when_open(channel, connection.clone(), events_tx));
        let offer = peer.create_offer(None).await.map_err(other)?;
        peer.set_local_description(offer).await.map_err(other)?;
        let sdp = self.local_sdp(&peer, gathered).await?;
        Ok(NewPeer {
            peer: Box::new(WebRtcPeer { peer, connection }),
            sdp,
            events: events_rx,
        })
    }

    async fn answer(&self, ice: &IceServers, offer_sdp: &str) -> Result<NewPeer, TransportError> {
        let offer = remote_description(SdpKind::Offer, offer_sdp)?;
        let (events_tx, events_rx) = mpsc::channel(64);
        let (peer, gathered, connection) = self.build(ice, events_tx).await?;
        peer.set_remote_description(offer)
            .await
            .map_err(|e| TransportError::BadDescription(e.to_string()))?;
        let answer = peer.create_answer(None).await.map_err(other)?;
        peer.set_local_description(answer).await.map_err(other)?;
        let sdp = self.local_sdp(&peer, gathered).await?;
        Ok(NewPeer {
            peer: Box::new(WebRtcPeer { peer, connection }),
            sdp,
            events: events_rx,
        })
    }
}

/// Forwards what the connection reports; never waits on the driver.
struct Handler {
    events: mpsc::Sender<PeerEvent>,
    gathered: mpsc::Sender<()>,
    connection: ConnectionRef,
}

#[async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            Ok(init) => {
                let candidate = Candidate {
                    candidate: init.candidate,
                    sdp_mid: init.sdp_mid,
                    sdp_mline_index: init.sdp_mline_index,
                };
                let _ = self
                    .events
                    .try_send(PeerEvent::LocalCandidates(vec![candidate]));
            }
            Err(error) => debug!(%error, "local candidate not representable"),
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.try_send(());
            let _ = self.events.try_send(PeerEvent::GatheringComplete);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        debug!(%state, "peer connection state");
        if matches!(
            state,
            RTCPeerConnectionState::Connecting | RTCPeerConnectionState::Connected
        ) {
            self.connection.mark_under_way();
        }
        if state == RTCPeerConnectionState::Failed {
            let _ = self.events.try_send(PeerEvent::Failed(
                "the peer connection failed (ICE or DTLS)".to_owned(),
            ));
        }
    }

    async fn on_data_channel(&self, channel: Arc<dyn DataChannel>) {
        tokio::spawn(announce_when_open(
            channel,
            self.connection.clone(),
            self.events.clone(),
        ));
    }
}

/// Reports `Connected` once `channel` opens (or `Failed` if it closes first).
async fn announce_when_open(
    channel: Arc<dyn DataChannel>,
    connection: ConnectionRef,
    events: mpsc::Sender<PeerEvent>,
) {
    if wait_until_open(channel.as_ref(), connection.under_way()).await {
        let channel = WebRtcChannel::open(channel, connection).await;
        let _ = events.send(PeerEvent::Connected(Box::new(channel))).await;
    } else {
        let _ = events
            .send(PeerEvent::Failed(
                "the data channel closed before it opened".to_owned(),
            ))
            .await;
    }
}

/// webrtc-rs 0.21's driver sends what it queued while handling an event (the SCTP INIT once
/// DTLS is up, the channel's DCEP OPEN once SCTP is) only on its next wake-up, which during
/// set-up is a timer up to 200 ms away: measured, two such stalls were most of a connection's
/// ~430 ms open time on loopback. While set-up is under way it is woken this often...
const OPENING_NUDGE_INTERVAL: Duration = Duration::from_millis(2);
/// ...for at most this long (a connection that takes longer is waiting on the network, and
/// webrtc-rs's own timers serve it).
const OPENING_NUDGE_WINDOW: Duration = Duration::from_secs(10);

/// Waits for `channel` to open (`true`) or close (`false`). Once `under_way` says ICE has
/// started, the connection's driver is woken every [`OPENING_NUDGE_INTERVAL`] for at most
/// [`OPENING_NUDGE_WINDOW`]; re-setting the (unused, zero) low-water mark is the cheapest
/// public call that wakes it.
async fn wait_until_open(channel: &dyn DataChannel, mut under_way: watch::Receiver<bool>) -> bool {
    let mut nudge = tokio::time::interval(OPENING_NUDGE_INTERVAL);
    nudge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // `None` until set-up is under way; then the end of the nudging window.
    let mut nudge_until: Option<Instant> = None;
    loop {
        let nudging = nudge_until.is_some_and(|until| Instant::now() < until);
        tokio::select! {
            event = channel.poll() => match event {
                Some(DataChannelEvent::OnOpen) => return true,
                Some(DataChannelEvent::OnClose) | None => return false,
                Some(_) => {}
            },
            started = async { under_way.wait_for(|under_way| *under_way).await.is_ok() },
                if nudge_until.is_none() =>
            {
                // `false`: the connection is gone, and its channel closes next.
                let window = if started { OPENING_NUDGE_WINDOW } else { Duration::ZERO };
                nudge_until = Some(Instant::now() + window);
            }
            _ = nudge.tick(), if nudging => {
                // An error means the connection no longer knows the channel: stop nudging and
                // wait for its close.
                if channel.set_buffered_amount_low_threshold(0).await.is_err() {
                    nudge_until = Some(Instant::now());
                }
            }
        }
    }
}

struct WebRtcPeer {
    peer: Arc<dyn PeerConnection>,
    connection: ConnectionRef,
}

/// The connection a channel belongs to, once it is built: a channel's pump asks it whether
/// its packets go through a TURN relay. Weak, so channels never keep a connection alive.
#[derive(Clone)]
struct ConnectionRef {
    peer: Arc<OnceLock<Weak<dyn PeerConnection>>>,
    /// Whether set-up is under way (ICE connecting or connected). An offer waits for its
    /// answer for as long as it lives: until then there is nothing to wake the driver for.
    under_way: Arc<watch::Sender<bool>>,
}

impl Default for ConnectionRef {
    fn default() -> Self {
        Self {
            peer: Arc::default(),
            under_way: Arc::new(watch::Sender::new(false)),
        }
    }
}

impl ConnectionRef {
    fn set(&self, peer: &Arc<dyn PeerConnection>) {
        let _ = self.peer.set(Arc::downgrade(peer));
    }

    fn mark_under_way(&self) {
        self.under_way
            .send_if_modified(|under_way| !std::mem::replace(under_way, true));
    }

    fn under_way(&self) -> watch::Receiver<bool> {
        self.under_way.subscribe()
    }

    async fn path(&self) -> Option<&'static str> {
        let peer = self.peer.get()?.upgrade()?;
        selected_path(peer.as_ref()).await
    }
}

/// `direct` or `relay` (a TURN server on either end), by the selected candidate pair.
async fn selected_path(peer: &dyn PeerConnection) -> Option<&'static str> {
    let sctp = peer.sctp().await?;
    let pair = sctp
        .transport()
        .ice_transport()
        .get_selected_candidate_pair()
        .await
        .ok()??;
    let relayed = [pair.local(), pair.remote()]
        .iter()
        .any(|candidate| candidate.typ == RTCIceCandidateType::Relay);
    Some(if relayed { "relay" } else { "direct" })
}

#[async_trait]
impl Peer for WebRtcPeer {
    async fn set_answer(&self, sdp: &str) -> Result<(), TransportError> {
        let answer = remote_description(SdpKind::Answer, sdp)?;
        self.peer
            .set_remote_description(answer)
            .await
            .map_err(|e| TransportError::BadDescription(e.to_string()))
    }

    async fn add_candidates(&self, candidates: &[Candidate]) -> Result<(), TransportError> {
        for candidate in candidates.iter().filter(|c| !c.is_end_of_candidates()) {
            let init = RTCIceCandidateInit {
                candidate: candidate.candidate.clone(),
                sdp_mid: candidate.sdp_mid.clone(),
                sdp_mline_index: candidate.sdp_mline_index,
                ..RTCIceCandidateInit::default()
            };
            if let Err(error) = self.peer.add_ice_candidate(init).await {
                // One bad candidate (or one already in the SDP) must not spoil the others.
                debug!(%error, candidate = %candidate.candidate, "remote candidate refused");
            }
        }
        Ok(())
    }

    async fn close(&self) {
        if let Err(error) = self.peer.close().await {
            warn!(%error, "closing the peer connection");
        }
    }

    async fn path(&self) -> Option<String> {
        selected_path(self.peer.as_ref()).await.map(str::to_owned)
    }

    async fn open_channel(&self, label: &str) -> Result<Box<dyn Channel>, TransportError> {
        let channel = self
            .peer
            .create_data_channel(label, Some(RTCDataChannelInit::default()))
            .await
            .map_err(other)?;
        let opened = async {
            if wait_until_open(channel.as_ref(), self.connection.under_way()).await {
                Ok(())
            } else {
                Err(TransportError::Closed)
            }
        };
        tokio::time::timeout(CHANNEL_OPEN_TIMEOUT, opened)
            .await
            .map_err(|_| {
                TransportError::ConnectionFailed("the channel did not open".to_owned())
            })??;
        Ok(Box::new(
            WebRtcChannel::open(channel, self.connection.clone()).await,
        ))
    }
}

/// Longest wait for an extra channel on a connected peer to open.
const CHANNEL_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// An open data channel. A pump task keeps polling it (webrtc-rs stalls its driver when
/// events are not consumed) and hands messages over through a bounded queue, which is what
/// pushes back on a fast sender when this side reads slowly.
struct WebRtcChannel {
    channel: Arc<dyn DataChannel>,
    label: String,
    incoming: mpsc::Receiver<Result<Bytes, TransportError>>,
    activity: Arc<Activity>,
}

/// Messages queued between the pump and the reader.
const INCOMING_QUEUE: usize = 64;
/// Longest wait for the peer to acknowledge everything sent before a close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(60);

impl WebRtcChannel {
    async fn open(channel: Arc<dyn DataChannel>, connection: ConnectionRef) -> Self {
        let label = channel.label().await.unwrap_or_default();
        let (tx, incoming) = mpsc::channel(INCOMING_QUEUE);
        let activity = Arc::new(Activity::new());
        tokio::spawn(pump(channel.clone(), tx, activity.clone()));
        tokio::spawn(nudge_relayed_driver(
            Arc::downgrade(&channel),
            connection,
            activity.clone(),
        ));
        Self {
            channel,
            label,
            incoming,
            activity,
        }
    }
}

async fn pump(
    channel: Arc<dyn DataChannel>,
    tx: mpsc::Sender<Result<Bytes, TransportError>>,
    activity: Arc<Activity>,
) {
    while let Some(event) = channel.poll().await {
        let forwarded = match event {
            DataChannelEvent::OnMessage(message) => {
                activity.touch();
                tx.send(Ok(message.data.freeze())).await
            }
            DataChannelEvent::OnError => {
                tx.send(Err(TransportError::ConnectionFailed(
                    "data channel error".to_owned(),
                )))
                .await
            }
            DataChannelEvent::OnClose => return,
            _ => Ok(()),
        };
        if forwarded.is_err() {
            return;
        }
    }
}

/// webrtc-rs 0.21's driver drains its TURN client's send queue *before* it feeds that queue
/// with the turn's new packets, so on a relayed path every packet waits for the driver's next
/// wake-up: the next packet in, or a timer (200 ms). Measured: 1 MB through coturn on
/// loopback took 15 s, and with 3% loss it never finished in 60 s. While a relayed channel is
/// busy, it wakes the driver this often; each wake sends what the previous turn queued.
const RELAY_NUDGE_INTERVAL: Duration = Duration::from_millis(1);
/// A channel is busy this long after it last sent or received, and while data it sent is
/// unacknowledged.
const BUSY_FOR: Duration = Duration::from_millis(500);
/// How often an idle (or direct) channel looks again at its path and its unacknowledged data.
const IDLE_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// How often the selected path is asked again (ICE may switch pairs).
const PATH_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// When a channel last moved a message.
struct Activity {
    opened: Instant,
    last_micros: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            last_micros: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let micros = u64::try_from(self.opened.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last_micros.store(micros, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_micros(self.last_micros.load(Ordering::Relaxed));
        self.opened.elapsed().saturating_sub(last)
    }
}

/// Wakes the connection's driver every [`RELAY_NUDGE_INTERVAL`] while `channel` is busy on a
/// relayed path. Re-setting the (unused, zero) low-water mark is the cheapest public call that
/// wakes it. Ends with the channel or its connection.
async fn nudge_relayed_driver(
    channel: Weak<dyn DataChannel>,
    connection: ConnectionRef,
    activity: Arc<Activity>,
) {
    let mut relayed = false;
    let mut next_path_check = Instant::now();
    loop {
        let Some(channel) = channel.upgrade() else {
            return;
        };
        if Instant::now() >= next_path_check {
            relayed = connection.path().await == Some("relay");
            next_path_check = Instant::now() + PATH_CHECK_INTERVAL;
        }
        let busy = relayed
            && (activity.idle_for() < BUSY_FOR
                || channel
                    .outstanding_bytes()
                    .await
                    .is_ok_and(|bytes| bytes > 0));
        if busy && channel.set_buffered_amount_low_threshold(0).await.is_err() {
            return;
        }
        drop(channel);
        let wait = if busy {
            RELAY_NUDGE_INTERVAL
        } else {
            IDLE_CHECK_INTERVAL
        };
        tokio::time::sleep(wait).await;
    }
}

#[async_trait]
impl Channel for WebRtcChannel {
    fn label(&self) -> &str {
        &self.label
    }

    async fn send(&mut self, message: Bytes) -> Result<(), TransportError> {
        self.activity.touch();
        self.channel
            .send(BytesMut::from(&message[..]))
            .await
            .map_err(|e| TransportError::ConnectionFailed(e.to_string()))
    }

    async fn recv(&mut self) -> Option<Result<Bytes, TransportError>> {
        self.incoming.recv().await
    }

    /// Closes once the peer acknowledged every byte sent: closing earlier would let the
    /// connection's teardown overtake data still in flight.
    async fn close(&mut self) -> Result<(), TransportError> {
        let drained = async {
            loop {
                match self.channel.outstanding_bytes().await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        };
        tokio::time::timeout(CLOSE_TIMEOUT, drained)
            .await
            .map_err(|_| TransportError::Other("the peer stopped acknowledging data".to_owned()))?;
        self.channel.close().await.map_err(other)
    }
}

/// Two peers of this process connected straight to each other, without Matrix in between:
/// for benchmarks and transport tests. Keep it alive as long as the channels are used.
pub struct DirectPair {
    pub offerer: Box<dyn Channel>,
    pub answerer: Box<dyn Channel>,
    offerer_peer: Box<dyn Peer>,
    _answerer_peer: Box<dyn Peer>,
    answerer_events: mpsc::Receiver<PeerEvent>,
}

impl DirectPair {
    /// Connects an offer from `offerer` to an answer from `answerer`, trickling candidates
    /// directly, and waits until both channels are open.
    pub async fn connect(
        offerer: &WebRtcConnector,
        answerer: &WebRtcConnector,
    ) -> Result<Self, TransportError> {
        let ice = IceServers::default();
        let mut a = offerer.offer(&ice).await?;
        let mut b = answerer.answer(&ice, &a.sdp).await?;
        a.peer.set_answer(&b.sdp).await?;
        let (mut a_channel, mut b_channel) = (None, None);
        let connect = async {
            while a_channel.is_none() || b_channel.is_none() {
                tokio::select! {
                    Some(event) = a.events.recv() => match event {
                        PeerEvent::LocalCandidates(c) => b.peer.add_candidates(&c).await?,
                        PeerEvent::Connected(channel) => a_channel = Some(channel),
                        PeerEvent::Failed(reason) => return Err(TransportError::ConnectionFailed(reason)),
                        PeerEvent::GatheringComplete => {}
                    },
                    Some(event) = b.events.recv() => match event {
                        PeerEvent::LocalCandidates(c) => a.peer.add_candidates(&c).await?,
                        PeerEvent::Connected(channel) => b_channel = Some(channel),
                        PeerEvent::Failed(reason) => return Err(TransportError::ConnectionFailed(reason)),
                        PeerEvent::GatheringComplete => {}
                    },
                    else => return Err(TransportError::Closed),
                }
            }
            Ok(())
        };
        tokio::time::timeout(Duration::from_secs(30), connect)
            .await
            .map_err(|_| {
                TransportError::ConnectionFailed("no connection within 30 s".to_owned())
            })??;
        match (a_channel, b_channel) {
            (Some(offerer), Some(answerer)) => Ok(Self {
                offerer,
                answerer,
                offerer_peer: a.peer,
                _answerer_peer: b.peer,
                answerer_events: b.events,
            }),
            _ => Err(TransportError::Closed),
        }
    }

    /// Opens one more channel on the same connection: (offerer's end, answerer's end).
    pub async fn open_channel(
        &mut self,
        label: &str,
    ) -> Result<(Box<dyn Channel>, Box<dyn Channel>), TransportError> {
        let offerer = self.offerer_peer.open_channel(label).await?;
        loop {
            match self.answerer_events.recv().await {
                Some(PeerEvent::Connected(answerer)) => return Ok((offerer, answerer)),
                Some(PeerEvent::Failed(reason)) => {
                    return Err(TransportError::ConnectionFailed(reason));
                }
                Some(_) => {}
                None => return Err(TransportError::Closed),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = include_str!("../../fuzz/corpus/sdp/offer.sdp");

    #[test]
    fn a_data_channel_offer_passes() {
        assert!(remote_description(SdpKind::Offer, OFFER).is_ok());
        assert!(remote_description(SdpKind::Answer, OFFER).is_ok());
    }

    #[test]
    fn hostile_descriptions_are_refused_with_a_reason() {
        let audio_only = include_str!("../../fuzz/corpus/sdp/audio-only.sdp");
        let oversized = format!("{OFFER}{}", "a=x\r\n".repeat(MAX_SDP / 5));
        for (sdp, reason) in [
            (audio_only, "no data channel"),
            (oversized.as_str(), "bytes of SDP"),
            ("", ""),
            ("v=0\r\no=\r\n", ""),
            ("\u{0}\u{1}garbage", ""),
        ] {
            match remote_description(SdpKind::Offer, sdp) {
                Err(TransportError::BadDescription(error)) => {
                    assert!(error.contains(reason), "{error}");
                }
                other => panic!("{sdp:?} was not refused: {:?}", other.map(|d| d.sdp)),
            }
        }
    }
}
