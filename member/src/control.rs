//! The control protocol of `gm daemon` (STYLE S6, after strongSwan's vici): a Unix stream
//! socket carrying frames of a 32-bit big-endian length and a JSON body, capped at
//! [`MAX_FRAME`] octets.
//!
//! Client to daemon (`type`):
//! - `request`: `{"type":"request","command":"join"|"leave"|"status","args":{...}}`; one
//!   request at a time per connection: the next is read once the response is written;
//! - `event-register` / `event-unregister`: `{"type":"event-register","events":[...]}`
//!   (names of [`AgentEvent`]s such as `group-up`; empty for all).
//!
//! Daemon to client:
//! - `response`: `{"type":"response","ok":true,"result":...}` or `"ok":false,"error":"..."`;
//! - `unknown`: `{"type":"unknown","command":"..."}` for a command the daemon does not know
//!   (vici's CMD_UNKNOWN);
//! - `event-confirm`, and `event`: `{"type":"event","event":"group-up",...}`.
//!
//! A frame over the cap is answered with an error response and the connection is closed
//! (its body is never read). A malformed body gets an error response; the connection stays.
//! Nothing here ever carries key material: join requests name credential files.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::config::JoinArgs;
use crate::runtime::AgentHandle;
use crate::status::AgentEvent;

/// Largest frame body, as vici's 512 KiB segment cap.
pub const MAX_FRAME: usize = 512 * 1024;
/// Default time `join` waits for the registration outcome.
pub const DEFAULT_JOIN_WAIT_MS: u64 = 30_000;
/// The event names a client may subscribe to.
pub const EVENT_NAMES: [&str; 8] = [
    "group-up",
    "group-down",
    "rekeyed",
    "rejected",
    "refused",
    "excluded",
    "reregistering",
    "error",
];

/// Framing and message errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("frame of {0} octets exceeds the {MAX_FRAME}-octet cap")]
    FrameTooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("{field}: {reason}")]
    BadArgument { field: &'static str, reason: String },
}

/// A message from a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ClientMessage {
    Request {
        command: String,
        #[serde(default)]
        args: Value,
    },
    EventRegister {
        #[serde(default)]
        events: Vec<String>,
    },
    EventUnregister,
}

/// A message from the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ServerMessage {
    Response {
        ok: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    Unknown {
        command: String,
    },
    EventConfirm,
    Event(AgentEvent),
}

impl ServerMessage {
    pub fn ok(result: Value) -> Self {
        Self::Response {
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    pub fn error(e: impl ToString) -> Self {
        Self::Response {
            ok: false,
            result: None,
            error: Some(e.to_string()),
        }
    }
}

/// Longest wait a `join` may ask for.
pub const MAX_JOIN_WAIT_MS: u64 = 300_000;

/// Arguments of `join` over the socket: the fields of [`JoinArgs`] plus `wait_ms`, how long
/// to wait for the outcome (0 answers at once). Unknown fields are refused, so that a key
/// pasted inline is an error, never silently accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    pub args: JoinArgs,
    pub wait_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaveArgs {
    group: String,
}

/// A decoded client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Join(Box<JoinRequest>),
    Leave {
        group: String,
    },
    Status,
    Subscribe {
        events: Vec<String>,
    },
    Unsubscribe,
    /// A command this daemon does not know (answered with `unknown`).
    Unknown(String),
}

/// Decodes one frame body. Never panics, whatever the bytes (see the proptest).
pub fn decode_request(body: &[u8]) -> Result<Request, ControlError> {
    let msg: ClientMessage =
        serde_json::from_slice(body).map_err(|e| ControlError::Malformed(e.to_string()))?;
    let args_err = |e: serde_json::Error| ControlError::BadArgument {
        field: "args",
        reason: e.to_string(),
    };
    let no_args = |args: &Value| args.is_null() || args.as_object().is_some_and(|o| o.is_empty());
    match msg {
        ClientMessage::Request { command, args } => match command.as_str() {
            "join" => {
                let mut args = args;
                let wait_ms = match args.as_object_mut().and_then(|o| o.remove("wait_ms")) {
                    None => DEFAULT_JOIN_WAIT_MS,
                    Some(v) => {
                        v.as_u64()
                            .filter(|ms| *ms <= MAX_JOIN_WAIT_MS)
                            .ok_or_else(|| ControlError::BadArgument {
                                field: "wait_ms",
                                reason: format!("milliseconds up to {MAX_JOIN_WAIT_MS}"),
                            })?
                    }
                };
                let args: JoinArgs = serde_json::from_value(args).map_err(args_err)?;
                Ok(Request::Join(Box::new(JoinRequest { args, wait_ms })))
            }
            "leave" => {
                let l: LeaveArgs = serde_json::from_value(args).map_err(args_err)?;
                Ok(Request::Leave { group: l.group })
            }
            "status" if no_args(&args) => Ok(Request::Status),
            "status" => Err(ControlError::BadArgument {
                field: "args",
                reason: "status takes no arguments".into(),
            }),
            _ => Ok(Request::Unknown(command)),
        },
        ClientMessage::EventRegister { events } => {
            if let Some(bad) = events.iter().find(|e| !EVENT_NAMES.contains(&e.as_str())) {
                return Err(ControlError::BadArgument {
                    field: "events",
                    reason: format!("unknown event {bad:?}"),
                });
            }
            Ok(Request::Subscribe { events })
        }
        ClientMessage::EventUnregister => Ok(Request::Unsubscribe),
    }
}

/// Splits a byte stream into frames (sans-IO).
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame body. A length over the cap is an error (the stream cannot
    /// be resynchronised after it).
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, ControlError> {
        let Some(len) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len > MAX_FRAME {
            return Err(ControlError::FrameTooLarge(len));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let body = self.buf[4..4 + len].to_vec();
        self.buf.drain(..4 + len);
        Ok(Some(body))
    }
}

/// Encodes a frame.
pub fn encode_frame(body: &[u8]) -> Result<Vec<u8>, ControlError> {
    if body.len() > MAX_FRAME {
        return Err(ControlError::FrameTooLarge(body.len()));
    }
    let mut v = Vec::with_capacity(4 + body.len());
    v.extend_from_slice(&(body.len() as u32).to_be_bytes());
    v.extend_from_slice(body);
    Ok(v)
}

/// Reads one frame from a stream; `None` at a clean end of stream.
pub async fn read_frame<R: AsyncReadExt + Unpin>(
    r: &mut R,
) -> std::io::Result<Result<Option<Vec<u8>>, ControlError>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(Ok(None)),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Ok(Err(ControlError::FrameTooLarge(len)));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Ok(Some(body)))
}

/// Writes one message as a frame.
pub async fn write_message<W: AsyncWriteExt + Unpin, M: Serialize>(
    w: &mut W,
    msg: &M,
) -> std::io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    let frame = encode_frame(&body).map_err(std::io::Error::other)?;
    w.write_all(&frame).await?;
    w.flush().await
}

/// Serves the control socket until the listener fails.
pub async fn serve(listener: UnixListener, agent: AgentHandle) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let agent = agent.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, agent).await {
                        debug!(error = %e, "control connection");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "control socket accept");
                return;
            }
        }
    }
}

async fn connection(stream: UnixStream, agent: AgentHandle) -> std::io::Result<()> {
    let (mut rd, mut wr) = stream.into_split();
    let mut events: Option<(mpsc::Receiver<AgentEvent>, Vec<String>)> = None;
    loop {
        let frame = tokio::select! {
            f = read_frame(&mut rd) => f?,
            Some(e) = async {
                match events.as_mut() {
                    Some((rx, _)) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                let wanted = events.as_ref().is_some_and(|(_, names)| {
                    names.is_empty() || names.iter().any(|n| event_name(&e) == n)
                });
                if wanted {
                    write_message(&mut wr, &ServerMessage::Event(e)).await?;
                }
                continue;
            }
        };
        let body = match frame {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(()),
            Err(e) => {
                write_message(&mut wr, &ServerMessage::error(&e)).await?;
                return Ok(());
            }
        };
        let reply = match decode_request(&body) {
            Err(e) => ServerMessage::error(e),
            Ok(Request::Unknown(command)) => ServerMessage::Unknown { command },
            Ok(Request::Status) => match agent.status().await {
                Ok(s) => to_value(&s),
                Err(e) => ServerMessage::error(e),
            },
            Ok(Request::Join(j)) => {
                let wait = (j.wait_ms > 0).then(|| Duration::from_millis(j.wait_ms));
                match agent.join_args(&j.args, wait).await {
                    Ok(g) => to_value(&g),
                    Err(e) => ServerMessage::error(e),
                }
            }
            Ok(Request::Leave { group }) => match agent.leave(&group).await {
                Ok(()) => ServerMessage::ok(Value::Null),
                Err(e) => ServerMessage::error(e),
            },
            Ok(Request::Subscribe { events: names }) => match agent.subscribe().await {
                Ok(rx) => {
                    events = Some((rx, names));
                    ServerMessage::EventConfirm
                }
                Err(e) => ServerMessage::error(e),
            },
            Ok(Request::Unsubscribe) => {
                events = None;
                ServerMessage::EventConfirm
            }
        };
        write_message(&mut wr, &reply).await?;
    }
}

fn to_value<T: Serialize>(v: &T) -> ServerMessage {
    match serde_json::to_value(v) {
        Ok(v) => ServerMessage::ok(v),
        Err(e) => ServerMessage::error(e),
    }
}

/// The event's name as clients subscribe to it.
pub fn event_name(e: &AgentEvent) -> &'static str {
    match e {
        AgentEvent::GroupUp { .. } => "group-up",
        AgentEvent::GroupDown { .. } => "group-down",
        AgentEvent::Rekeyed { .. } => "rekeyed",
        AgentEvent::Rejected { .. } => "rejected",
        AgentEvent::Refused { .. } => "refused",
        AgentEvent::Excluded { .. } => "excluded",
        AgentEvent::Reregistering { .. } => "reregistering",
        AgentEvent::Error { .. } => "error",
    }
}

/// Client side errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the daemon at {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(#[from] ControlError),
    #[error("the daemon closed the connection")]
    Closed,
}

/// A connection to the daemon (thin client: `gm join`, `gm leave`, `gm status`).
pub struct Client {
    stream: UnixStream,
}

impl Client {
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Self { stream })
    }

    /// Sends a message and reads the next one back.
    pub async fn call(&mut self, msg: &ClientMessage) -> Result<ServerMessage, ClientError> {
        write_message(&mut self.stream, msg).await?;
        self.next().await
    }

    /// The next message from the daemon (events after `event-register`).
    pub async fn next(&mut self) -> Result<ServerMessage, ClientError> {
        let body = read_frame(&mut self.stream)
            .await??
            .ok_or(ClientError::Closed)?;
        serde_json::from_slice(&body).map_err(|e| ControlError::Malformed(e.to_string()).into())
    }

    /// A request with arguments.
    pub async fn request(
        &mut self,
        command: &str,
        args: Value,
    ) -> Result<ServerMessage, ClientError> {
        self.call(&ClientMessage::Request {
            command: command.into(),
            args,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_and_cap() {
        let mut d = FrameDecoder::default();
        let f = encode_frame(br#"{"type":"request","command":"status"}"#).unwrap();
        d.push(&f[..3]);
        assert_eq!(d.next_frame(), Ok(None));
        d.push(&f[3..]);
        d.push(&f);
        assert_eq!(
            decode_request(&d.next_frame().unwrap().unwrap()),
            Ok(Request::Status)
        );
        assert!(d.next_frame().unwrap().is_some());
        assert_eq!(d.next_frame(), Ok(None));
        let mut d = FrameDecoder::default();
        d.push(&((MAX_FRAME + 1) as u32).to_be_bytes());
        assert_eq!(
            d.next_frame(),
            Err(ControlError::FrameTooLarge(MAX_FRAME + 1))
        );
    }

    #[test]
    fn requests_decode() {
        assert_eq!(
            decode_request(br#"{"type":"request","command":"frobnicate"}"#),
            Ok(Request::Unknown("frobnicate".into()))
        );
        assert_eq!(
            decode_request(br#"{"type":"request","command":"leave","args":{"group":"g"}}"#),
            Ok(Request::Leave { group: "g".into() })
        );
        let j = decode_request(
            br#"{"type":"request","command":"join","args":{"group":"g","gcks":"127.0.0.1","sender":2}}"#,
        )
        .unwrap();
        let Request::Join(j) = j else {
            panic!("join expected")
        };
        assert_eq!(j.args.sender, Some(2));
        assert_eq!(j.wait_ms, DEFAULT_JOIN_WAIT_MS);
        assert!(matches!(
            decode_request(br#"{"type":"request","command":"leave","args":{}}"#),
            Err(ControlError::BadArgument { field: "args", .. })
        ));
        assert!(matches!(
            decode_request(br#"{"type":"event-register","events":["nope"]}"#),
            Err(ControlError::BadArgument {
                field: "events",
                ..
            })
        ));
        assert!(matches!(
            decode_request(b"\xff\x00"),
            Err(ControlError::Malformed(_))
        ));
    }

    #[test]
    fn server_messages_have_the_documented_shape() {
        let v = serde_json::to_value(ServerMessage::Unknown {
            command: "x".into(),
        })
        .unwrap();
        assert_eq!(v, serde_json::json!({"type":"unknown","command":"x"}));
        let v = serde_json::to_value(ServerMessage::Event(AgentEvent::GroupDown {
            group: "g".into(),
            reason: "left".into(),
        }))
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"event","event":"group-down","group":"g","reason":"left"})
        );
        let v = serde_json::to_value(ServerMessage::error("boom")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"response","ok":false,"error":"boom"})
        );
    }
}
