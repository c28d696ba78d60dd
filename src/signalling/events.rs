//! The `m.d2dfile.*` events of MSC2354 (version 0) and d2dfs's namespaced extensions.
//!
//! Parsing is strict about what MSC2354 requires (every field present, of the right type,
//! `version` the integer 0, values within sane limits) and tolerant of everything else: unknown
//! keys are ignored, and a malformed *extension* only disables that extension, so a d2dfs peer
//! degrades to plain MSC2354 rather than to nothing. Contents from the network are limits, never
//! allocations: nothing here sizes a buffer from a field.
//!
//! # Extensions (namespace `org.d2dfs`)
//!
//! | key | in | meaning |
//! |---|---|---|
//! | `org.d2dfs.party_id` | all | the sending device (VoIP v1's `party_id`): tells answers, candidates and cancels of several devices of one user apart |
//! | `org.d2dfs.range` | invite, answer | `{"version": 1, "lanes": N}`: this side speaks the range protocol (used only when both sides advertise it) and takes up to `N` extra connections for it (`0` when absent; the smaller of the two numbers is used) |
//! | `org.d2dfs.sha256` | invite | lowercase hex SHA-256 of the whole file, checked by a receiver that saw every byte |
//! | `org.d2dfs.reason` | cancel | why the transfer ended (free text, shown to the user) |
//!
//! And one event type of our own, VoIP v1's `m.call.select_answer` under our namespace:
//! `org.d2dfs.select_answer` `{transfer_id, version: 0, org.d2dfs.party_id,
//! selected_party_id?, selected_answer}` — the offerer took the answer with event id
//! `selected_answer` (and party id `selected_party_id` when it had one); every other answering
//! device learns the offer was taken elsewhere. Plain MSC2354 peers ignore it.
//!
//! And VoIP v1's `m.call.negotiate`, likewise: `org.d2dfs.negotiate` `{transfer_id, version: 0,
//! org.d2dfs.party_id, description: {type, sdp}}` — a range-mode connection that failed is
//! made again for the same transfer: the receiving device sends a fresh offer, the sending
//! device answers it, candidates follow as `m.d2dfile.candidates`.
//!
//! End of candidates follows VoIP v1: a candidate whose `candidate` string is empty.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// The only MSC2354 version there is.
pub const VERSION: u64 = 0;

pub const INVITE: &str = "m.d2dfile.invite";
pub const ANSWER: &str = "m.d2dfile.answer";
pub const CANDIDATES: &str = "m.d2dfile.candidates";
pub const CANCEL: &str = "m.d2dfile.cancel";
pub const SELECT_ANSWER: &str = "org.d2dfs.select_answer";
pub const NEGOTIATE: &str = "org.d2dfs.negotiate";

pub const PARTY_ID_KEY: &str = "org.d2dfs.party_id";
pub const RANGE_KEY: &str = "org.d2dfs.range";
pub const SHA256_KEY: &str = "org.d2dfs.sha256";
pub const REASON_KEY: &str = "org.d2dfs.reason";

/// Version of the range protocol this build speaks (see `man/d2dfs-protocol.7`).
pub const RANGE_PROTOCOL_VERSION: u64 = 1;

/// Most extra connections ("lanes") one range-mode transfer may use; larger claims are cut.
pub const MAX_LANES: u8 = 15;

/// Limits on what a peer may claim. Beyond them an event is ignored as absurd.
pub mod limits {
    /// Longest transfer id accepted (VoIP call ids are short; this is generous).
    pub const MAX_TRANSFER_ID: usize = 255;
    /// Longest offer lifetime accepted: one week, in milliseconds.
    pub const MAX_LIFETIME_MS: u64 = 7 * 24 * 3600 * 1000;
    /// Largest file size accepted: 1 PiB.
    pub const MAX_FILE_SIZE: u64 = 1 << 50;
    /// Longest SDP accepted (a Matrix event is at most 64 KiB in all).
    pub const MAX_SDP: usize = 65_536;
    /// Most candidates in one event.
    pub const MAX_CANDIDATES: usize = 256;
    /// Longest file name kept before sanitising (longer ones are cut, not refused).
    pub const MAX_FILENAME: usize = 4096;
    /// Longest party id accepted.
    pub const MAX_PARTY_ID: usize = 255;
}

/// An SDP offer or answer (`{"type", "sdp"}`, as in Matrix VoIP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionDescription {
    #[serde(rename = "type")]
    pub kind: String,
    pub sdp: String,
}

/// One ICE candidate, as the browser API's `RTCIceCandidateInit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub candidate: String,
    #[serde(rename = "sdpMid", default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(
        rename = "sdpMLineIndex",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub sdp_mline_index: Option<u16>,
}

impl Candidate {
    /// VoIP v1's end-of-candidates marker.
    pub fn end_of_candidates() -> Self {
        Self {
            candidate: String::new(),
            sdp_mid: Some("0".to_owned()),
            sdp_mline_index: Some(0),
        }
    }

    pub fn is_end_of_candidates(&self) -> bool {
        self.candidate.is_empty()
    }
}

/// `info` of an invite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    pub mimetype: String,
    pub size: u64,
}

/// `m.d2dfile.invite`: a device offers a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    pub transfer_id: String,
    /// Milliseconds the offer stays valid after it was sent.
    pub lifetime_ms: u64,
    /// As sent: sanitise before showing it (see `crate::fs` names).
    pub filename: String,
    pub info: FileInfo,
    pub offer: SessionDescription,
    pub party_id: Option<String>,
    /// The offerer speaks the range protocol.
    pub range: bool,
    /// Extra connections the offerer takes for range mode (at most [`MAX_LANES`]).
    pub lanes: u8,
    /// SHA-256 of the whole file.
    pub sha256: Option<[u8; 32]>,
}

/// `m.d2dfile.answer`: a device accepts an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub transfer_id: String,
    pub lifetime_ms: u64,
    pub answer: SessionDescription,
    pub party_id: Option<String>,
    pub range: bool,
    /// Extra connections the answerer takes for range mode (at most [`MAX_LANES`]).
    pub lanes: u8,
}

/// `m.d2dfile.candidates`: ICE candidates of one side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidates {
    pub transfer_id: String,
    pub candidates: Vec<Candidate>,
    pub party_id: Option<String>,
}

/// `m.d2dfile.cancel`: either side ends the transfer (or the receiver rejects the offer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancel {
    pub transfer_id: String,
    pub party_id: Option<String>,
    pub reason: Option<String>,
}

/// `org.d2dfs.select_answer`: the offerer took one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectAnswer {
    pub transfer_id: String,
    pub party_id: Option<String>,
    pub selected_party_id: Option<String>,
    /// Event id of the answer that was taken.
    pub selected_answer: String,
}

/// `org.d2dfs.negotiate`: a fresh offer or answer for a transfer whose connection failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiate {
    pub transfer_id: String,
    pub party_id: Option<String>,
    /// `type` is `offer` (from the receiving device) or `answer` (from the sending device).
    pub description: SessionDescription,
}

/// Any signalling event d2dfs understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum D2dEvent {
    Invite(Invite),
    Answer(Answer),
    Candidates(Candidates),
    Cancel(Cancel),
    SelectAnswer(SelectAnswer),
    Negotiate(Negotiate),
}

/// Why an event was ignored. Shown in the log line, never to the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not a d2dfile event type")]
    UnknownType,
    #[error("content is not a JSON object")]
    NotAnObject,
    #[error("unsupported version {0}")]
    WrongVersion(String),
    #[error("malformed content: {0}")]
    Malformed(String),
    #[error("{0} out of range")]
    OutOfRange(&'static str),
}

impl D2dEvent {
    /// The transfer this event belongs to.
    pub fn transfer_id(&self) -> &str {
        match self {
            Self::Invite(e) => &e.transfer_id,
            Self::Answer(e) => &e.transfer_id,
            Self::Candidates(e) => &e.transfer_id,
            Self::Cancel(e) => &e.transfer_id,
            Self::SelectAnswer(e) => &e.transfer_id,
            Self::Negotiate(e) => &e.transfer_id,
        }
    }

    /// The `org.d2dfs.party_id` of the sending device, if it gave one.
    pub fn party_id(&self) -> Option<&str> {
        match self {
            Self::Invite(e) => e.party_id.as_deref(),
            Self::Answer(e) => e.party_id.as_deref(),
            Self::Candidates(e) => e.party_id.as_deref(),
            Self::Cancel(e) => e.party_id.as_deref(),
            Self::SelectAnswer(e) => e.party_id.as_deref(),
            Self::Negotiate(e) => e.party_id.as_deref(),
        }
    }

    /// The Matrix event type.
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::Invite(_) => INVITE,
            Self::Answer(_) => ANSWER,
            Self::Candidates(_) => CANDIDATES,
            Self::Cancel(_) => CANCEL,
            Self::SelectAnswer(_) => SELECT_ANSWER,
            Self::Negotiate(_) => NEGOTIATE,
        }
    }

    /// Whether `event_type` is one of ours (worth parsing, and worth a log line if broken).
    pub fn is_d2d_type(event_type: &str) -> bool {
        matches!(
            event_type,
            INVITE | ANSWER | CANDIDATES | CANCEL | SELECT_ANSWER | NEGOTIATE
        )
    }

    /// Parses the `content` of an event of type `event_type`.
    pub fn parse(event_type: &str, content: &Value) -> Result<Self, ParseError> {
        if !Self::is_d2d_type(event_type) {
            return Err(ParseError::UnknownType);
        }
        let object = content.as_object().ok_or(ParseError::NotAnObject)?;
        match object.get("version") {
            Some(Value::Number(n)) if n.as_u64() == Some(VERSION) => {}
            Some(other) => return Err(ParseError::WrongVersion(other.to_string())),
            None => return Err(ParseError::Malformed("missing field `version`".to_owned())),
        }
        let party_id = extension_string(object, PARTY_ID_KEY, limits::MAX_PARTY_ID);
        let event = match event_type {
            INVITE => {
                let raw: RawInvite = from_object(object)?;
                check_transfer_id(&raw.transfer_id)?;
                check_lifetime(raw.lifetime)?;
                check_sdp(&raw.offer, "offer")?;
                if raw.info.size > limits::MAX_FILE_SIZE {
                    return Err(ParseError::OutOfRange("info.size"));
                }
                Self::Invite(Invite {
                    transfer_id: raw.transfer_id,
                    lifetime_ms: raw.lifetime,
                    filename: truncate_chars(raw.filename, limits::MAX_FILENAME),
                    info: FileInfo {
                        mimetype: truncate_chars(raw.info.mimetype, 255),
                        size: raw.info.size,
                    },
                    offer: raw.offer,
                    party_id,
                    range: advertises_range(object),
                    lanes: advertised_lanes(object),
                    sha256: object.get(SHA256_KEY).and_then(parse_sha256),
                })
            }
            ANSWER => {
                let raw: RawAnswer = from_object(object)?;
                check_transfer_id(&raw.transfer_id)?;
                check_lifetime(raw.lifetime)?;
                check_sdp(&raw.answer, "answer")?;
                Self::Answer(Answer {
                    transfer_id: raw.transfer_id,
                    lifetime_ms: raw.lifetime,
                    answer: raw.answer,
                    party_id,
                    range: advertises_range(object),
                    lanes: advertised_lanes(object),
                })
            }
            CANDIDATES => {
                let raw: RawCandidates = from_object(object)?;
                check_transfer_id(&raw.transfer_id)?;
                if raw.candidates.len() > limits::MAX_CANDIDATES {
                    return Err(ParseError::OutOfRange("candidates"));
                }
                if raw.candidates.iter().any(|c| c.candidate.len() > 1024) {
                    return Err(ParseError::OutOfRange("candidate"));
                }
                Self::Candidates(Candidates {
                    transfer_id: raw.transfer_id,
                    candidates: raw.candidates,
                    party_id,
                })
            }
            CANCEL => {
                let raw: RawTransferId = from_object(object)?;
                check_transfer_id(&raw.transfer_id)?;
                Self::Cancel(Cancel {
                    transfer_id: raw.transfer_id,
                    party_id,
                    reason: extension_string(object, REASON_KEY, 1024),
                })
            }
            SELECT_ANSWER => {
                let raw: RawSelectAnswer = from_object(object)?;
                check_transfer_id(&raw.transfer_id)?;
                Self::SelectAnswer(SelectAnswer {
                    transfer_id: raw.transfer_id,
                    party_id,
                    selected_party_id: raw
                        .selected_party_id
                        .filter(|p| p.len() <= limits::MAX_PARTY_ID),
                    selected_answer: raw.selected_answer,
                })
            }
            NEGOTIATE => {
                let raw: RawNegotiate = from_object(object)?;
                check_transfer_id(&raw.transfer_id)?;
                let kind = raw.description.kind.clone();
                if kind != "offer" && kind != "answer" {
                    return Err(ParseError::Malformed(format!(
                        "session description of type {kind:?}, expected \"offer\" or \"answer\""
                    )));
                }
                check_sdp(&raw.description, &kind)?;
                Self::Negotiate(Negotiate {
                    transfer_id: raw.transfer_id,
                    party_id,
                    description: raw.description,
                })
            }
            _ => return Err(ParseError::UnknownType),
        };
        Ok(event)
    }

    /// The event content to send (the inverse of [`parse`](Self::parse)).
    pub fn to_content(&self) -> Value {
        let mut content = match self {
            Self::Invite(e) => {
                let mut c = json!({
                    "transfer_id": e.transfer_id,
                    "lifetime": e.lifetime_ms,
                    "filename": e.filename,
                    "info": { "mimetype": e.info.mimetype, "size": e.info.size },
                    "offer": e.offer,
                });
                if e.range {
                    c[RANGE_KEY] = range_content(e.lanes);
                }
                if let Some(digest) = &e.sha256 {
                    c[SHA256_KEY] = json!(crate::hex::encode(digest));
                }
                c
            }
            Self::Answer(e) => {
                let mut c = json!({
                    "transfer_id": e.transfer_id,
                    "lifetime": e.lifetime_ms,
                    "answer": e.answer,
                });
                if e.range {
                    c[RANGE_KEY] = range_content(e.lanes);
                }
                c
            }
            Self::Candidates(e) => json!({
                "transfer_id": e.transfer_id,
                "candidates": e.candidates,
            }),
            Self::Cancel(e) => {
                let mut c = json!({ "transfer_id": e.transfer_id });
                if let Some(reason) = &e.reason {
                    c[REASON_KEY] = json!(reason);
                }
                c
            }
            Self::SelectAnswer(e) => {
                let mut c = json!({
                    "transfer_id": e.transfer_id,
                    "selected_answer": e.selected_answer,
                });
                if let Some(selected) = &e.selected_party_id {
                    c["selected_party_id"] = json!(selected);
                }
                c
            }
            Self::Negotiate(e) => json!({
                "transfer_id": e.transfer_id,
                "description": e.description,
            }),
        };
        content["version"] = json!(VERSION);
        if let Some(party_id) = self.party_id() {
            content[PARTY_ID_KEY] = json!(party_id);
        }
        content
    }
}

#[derive(Deserialize)]
struct RawFileInfo {
    mimetype: String,
    size: u64,
}

#[derive(Deserialize)]
struct RawInvite {
    transfer_id: String,
    lifetime: u64,
    filename: String,
    info: RawFileInfo,
    offer: SessionDescription,
}

#[derive(Deserialize)]
struct RawAnswer {
    transfer_id: String,
    lifetime: u64,
    answer: SessionDescription,
}

#[derive(Deserialize)]
struct RawCandidates {
    transfer_id: String,
    candidates: Vec<Candidate>,
}

#[derive(Deserialize)]
struct RawTransferId {
    transfer_id: String,
}

#[derive(Deserialize)]
struct RawNegotiate {
    transfer_id: String,
    description: SessionDescription,
}

#[derive(Deserialize)]
struct RawSelectAnswer {
    transfer_id: String,
    selected_answer: String,
    #[serde(default)]
    selected_party_id: Option<String>,
}

fn from_object<T: serde::de::DeserializeOwned>(
    object: &Map<String, Value>,
) -> Result<T, ParseError> {
    T::deserialize(object).map_err(|e| ParseError::Malformed(e.to_string()))
}

fn check_transfer_id(id: &str) -> Result<(), ParseError> {
    if id.is_empty() || id.len() > limits::MAX_TRANSFER_ID {
        return Err(ParseError::OutOfRange("transfer_id"));
    }
    Ok(())
}

fn check_lifetime(lifetime: u64) -> Result<(), ParseError> {
    if lifetime == 0 || lifetime > limits::MAX_LIFETIME_MS {
        return Err(ParseError::OutOfRange("lifetime"));
    }
    Ok(())
}

fn check_sdp(description: &SessionDescription, kind: &str) -> Result<(), ParseError> {
    if description.kind != kind {
        return Err(ParseError::Malformed(format!(
            "session description of type {:?}, expected {kind:?}",
            description.kind
        )));
    }
    if description.sdp.is_empty() || description.sdp.len() > limits::MAX_SDP {
        return Err(ParseError::OutOfRange("sdp"));
    }
    Ok(())
}

fn advertises_range(object: &Map<String, Value>) -> bool {
    object
        .get(RANGE_KEY)
        .and_then(|range| range.get("version"))
        .and_then(Value::as_u64)
        == Some(RANGE_PROTOCOL_VERSION)
}

/// Extra connections a range-mode side takes: 0 unless it speaks range mode and says so.
fn advertised_lanes(object: &Map<String, Value>) -> u8 {
    if !advertises_range(object) {
        return 0;
    }
    object
        .get(RANGE_KEY)
        .and_then(|range| range.get("lanes"))
        .and_then(Value::as_u64)
        .map_or(0, |lanes| lanes.min(u64::from(MAX_LANES)) as u8)
}

fn range_content(lanes: u8) -> Value {
    let mut content = json!({ "version": RANGE_PROTOCOL_VERSION });
    if lanes > 0 {
        content["lanes"] = json!(lanes.min(MAX_LANES));
    }
    content
}

fn extension_string(object: &Map<String, Value>, key: &str, max_len: usize) -> Option<String> {
    object
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= max_len)
        .map(str::to_owned)
}

fn parse_sha256(value: &Value) -> Option<[u8; 32]> {
    crate::hex::decode(value.as_str()?)
}

fn truncate_chars(mut text: String, max_bytes: usize) -> String {
    if text.len() > max_bytes {
        let mut end = max_bytes;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msc_invite() -> Value {
        // The example of MSC2354, verbatim.
        json!({
            "transfer_id": "12345",
            "lifetime": 60000,
            "filename": "example.doc",
            "info": { "mimetype": "application/msword", "size": 46144 },
            "offer": { "sdp": "v=0\r\no=- 6584580628695956864 2 IN IP4 127.0.0.1[...]", "type": "offer" },
            "version": 0
        })
    }

    #[test]
    fn parses_the_msc_examples() {
        let D2dEvent::Invite(invite) = D2dEvent::parse(INVITE, &msc_invite()).unwrap() else {
            panic!("not an invite");
        };
        assert_eq!(invite.transfer_id, "12345");
        assert_eq!(invite.lifetime_ms, 60000);
        assert_eq!(invite.info.size, 46144);
        assert!(!invite.range && invite.sha256.is_none() && invite.party_id.is_none());

        let candidates = json!({
            "transfer_id": "12345",
            "candidates": [{
                "candidate": "candidate:863018703 1 tcp 2122260223 10.9.64.156 43670 typ host generation 0",
                "sdpMLineIndex": 0, "sdpMid": "0"
            }],
            "version": 0
        });
        let D2dEvent::Candidates(c) = D2dEvent::parse(CANDIDATES, &candidates).unwrap() else {
            panic!("not candidates");
        };
        assert_eq!(c.candidates[0].sdp_mid.as_deref(), Some("0"));

        let answer = json!({
            "answer": { "sdp": "v=0\r\n", "type": "answer" },
            "transfer_id": "12345", "lifetime": 60000, "version": 0
        });
        assert!(matches!(
            D2dEvent::parse(ANSWER, &answer),
            Ok(D2dEvent::Answer(_))
        ));
        let cancel = json!({ "transfer_id": "12345", "version": 0 });
        assert!(matches!(
            D2dEvent::parse(CANCEL, &cancel),
            Ok(D2dEvent::Cancel(_))
        ));
    }

    #[test]
    fn unknown_keys_are_ignored_and_extensions_read() {
        let mut content = msc_invite();
        content["some.other.key"] = json!({"x": [1, 2]});
        content[PARTY_ID_KEY] = json!("DEVICEA");
        content[RANGE_KEY] = json!({ "version": 1, "future": true });
        content[SHA256_KEY] = json!("ab".repeat(32));
        let D2dEvent::Invite(invite) = D2dEvent::parse(INVITE, &content).unwrap() else {
            panic!()
        };
        assert_eq!(invite.party_id.as_deref(), Some("DEVICEA"));
        assert!(invite.range);
        assert_eq!(invite.lanes, 0, "no lanes unless advertised");
        assert_eq!(invite.sha256, Some([0xab; 32]));
    }

    #[test]
    fn lanes_are_read_and_bounded() {
        for (claim, lanes) in [
            (json!(3), 3),
            (json!(1_000_000), MAX_LANES),
            (json!(-1), 0),
            (json!("8"), 0),
            (json!(2.5), 0),
        ] {
            let mut content = msc_invite();
            content[RANGE_KEY] = json!({ "version": 1, "lanes": claim });
            let D2dEvent::Invite(invite) = D2dEvent::parse(INVITE, &content).unwrap() else {
                panic!()
            };
            assert_eq!(invite.lanes, lanes, "{content}");
        }
        // Lanes without range mode mean nothing.
        let mut content = msc_invite();
        content[RANGE_KEY] = json!({ "version": 2, "lanes": 3 });
        let D2dEvent::Invite(invite) = D2dEvent::parse(INVITE, &content).unwrap() else {
            panic!()
        };
        assert_eq!((invite.range, invite.lanes), (false, 0));
    }

    #[test]
    fn malformed_extensions_only_disable_themselves() {
        let mut content = msc_invite();
        content[PARTY_ID_KEY] = json!(42);
        content[RANGE_KEY] = json!("yes");
        content[SHA256_KEY] = json!("zz");
        let D2dEvent::Invite(invite) = D2dEvent::parse(INVITE, &content).unwrap() else {
            panic!()
        };
        assert!(invite.party_id.is_none() && !invite.range && invite.sha256.is_none());
        content[SHA256_KEY] = json!("é".repeat(32));
        assert!(D2dEvent::parse(INVITE, &content).is_ok());
    }

    #[test]
    fn wrong_versions_are_rejected() {
        for version in [json!(1), json!("0"), json!(0.5), json!(null), json!(-1)] {
            let mut content = msc_invite();
            content["version"] = version.clone();
            assert!(
                matches!(
                    D2dEvent::parse(INVITE, &content),
                    Err(ParseError::WrongVersion(_))
                ),
                "{version}"
            );
        }
        let mut content = msc_invite();
        content.as_object_mut().unwrap().remove("version");
        assert!(matches!(
            D2dEvent::parse(INVITE, &content),
            Err(ParseError::Malformed(_))
        ));
    }

    #[test]
    fn missing_and_ill_typed_fields_are_rejected() {
        for (field, value) in [
            ("transfer_id", None),
            ("transfer_id", Some(json!(12345))),
            ("lifetime", Some(json!("60000"))),
            ("lifetime", Some(json!(-5))),
            ("filename", None),
            ("info", Some(json!({ "mimetype": "a/b" }))),
            ("info", Some(json!({ "mimetype": "a/b", "size": -1 }))),
            ("offer", Some(json!({ "type": "answer", "sdp": "v=0" }))),
            ("offer", Some(json!("v=0"))),
        ] {
            let mut content = msc_invite();
            match value {
                Some(v) => content[field] = v,
                None => {
                    content.as_object_mut().unwrap().remove(field);
                }
            }
            assert!(
                D2dEvent::parse(INVITE, &content).is_err(),
                "{field} accepted: {content}"
            );
        }
        assert_eq!(
            D2dEvent::parse(INVITE, &json!([1])),
            Err(ParseError::NotAnObject)
        );
        assert_eq!(
            D2dEvent::parse("m.room.message", &msc_invite()),
            Err(ParseError::UnknownType)
        );
    }

    #[test]
    fn absurd_values_are_rejected() {
        let cases = [
            ("lifetime", json!(0)),
            ("lifetime", json!(limits::MAX_LIFETIME_MS + 1)),
            ("transfer_id", json!("")),
            ("transfer_id", json!("x".repeat(256))),
            (
                "info",
                json!({ "mimetype": "a/b", "size": limits::MAX_FILE_SIZE + 1 }),
            ),
            ("info", json!({ "mimetype": "a/b", "size": u64::MAX })),
            ("offer", json!({ "type": "offer", "sdp": "" })),
        ];
        for (field, value) in cases {
            let mut content = msc_invite();
            content[field] = value;
            assert!(
                matches!(
                    D2dEvent::parse(INVITE, &content),
                    Err(ParseError::OutOfRange(_))
                ),
                "{field}: {content}"
            );
        }
        let many = vec![json!({"candidate": "c", "sdpMid": "0"}); limits::MAX_CANDIDATES + 1];
        let content = json!({ "transfer_id": "t", "candidates": many, "version": 0 });
        assert!(D2dEvent::parse(CANDIDATES, &content).is_err());
    }

    #[test]
    fn long_filenames_are_cut_on_a_char_boundary() {
        let mut content = msc_invite();
        content["filename"] = json!("é".repeat(5000));
        let D2dEvent::Invite(invite) = D2dEvent::parse(INVITE, &content).unwrap() else {
            panic!()
        };
        assert!(invite.filename.len() <= limits::MAX_FILENAME);
        assert!(invite.filename.chars().all(|c| c == 'é'));
    }

    #[test]
    fn contents_round_trip() {
        let events = [
            D2dEvent::Invite(Invite {
                transfer_id: "t1".into(),
                lifetime_ms: 1000,
                filename: "a.txt".into(),
                info: FileInfo {
                    mimetype: "text/plain".into(),
                    size: 3,
                },
                offer: SessionDescription {
                    kind: "offer".into(),
                    sdp: "v=0".into(),
                },
                party_id: Some("DEV".into()),
                range: true,
                lanes: 7,
                sha256: Some([7; 32]),
            }),
            D2dEvent::Answer(Answer {
                transfer_id: "t1".into(),
                lifetime_ms: 1000,
                answer: SessionDescription {
                    kind: "answer".into(),
                    sdp: "v=0".into(),
                },
                party_id: None,
                range: true,
                lanes: 0,
            }),
            D2dEvent::Candidates(Candidates {
                transfer_id: "t1".into(),
                candidates: vec![
                    Candidate {
                        candidate: "candidate:1".into(),
                        sdp_mid: Some("0".into()),
                        sdp_mline_index: Some(0),
                    },
                    Candidate::end_of_candidates(),
                ],
                party_id: Some("DEV".into()),
            }),
            D2dEvent::Cancel(Cancel {
                transfer_id: "t1".into(),
                party_id: Some("DEV".into()),
                reason: Some("user rejected".into()),
            }),
            D2dEvent::SelectAnswer(SelectAnswer {
                transfer_id: "t1".into(),
                party_id: Some("DEV".into()),
                selected_party_id: Some("OTHER".into()),
                selected_answer: "$event".into(),
            }),
            D2dEvent::Negotiate(Negotiate {
                transfer_id: "t1".into(),
                party_id: Some("DEV".into()),
                description: SessionDescription {
                    kind: "offer".into(),
                    sdp: "v=0".into(),
                },
            }),
        ];
        for event in events {
            let content = event.to_content();
            assert_eq!(content["version"], json!(0));
            assert_eq!(
                D2dEvent::parse(event.event_type(), &content).unwrap(),
                event
            );
        }
    }

    #[test]
    fn negotiate_takes_offers_and_answers_only() {
        let content = |kind: &str, sdp: &str| {
            json!({
                "transfer_id": "t1",
                "version": 0,
                "description": { "type": kind, "sdp": sdp },
            })
        };
        for kind in ["offer", "answer"] {
            assert!(D2dEvent::parse(NEGOTIATE, &content(kind, "v=0")).is_ok());
        }
        for (kind, sdp) in [("pranswer", "v=0"), ("offer", ""), ("", "v=0")] {
            assert!(
                D2dEvent::parse(NEGOTIATE, &content(kind, sdp)).is_err(),
                "{kind:?} {sdp:?}"
            );
        }
        let huge = "x".repeat(limits::MAX_SDP + 1);
        assert!(D2dEvent::parse(NEGOTIATE, &content("offer", &huge)).is_err());
        let no_description = json!({ "transfer_id": "t1", "version": 0 });
        assert!(D2dEvent::parse(NEGOTIATE, &no_description).is_err());
    }
}
