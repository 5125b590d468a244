//! What a session message carries (`whitepaper/sessions.md` §15): the application message.
//!
//! ```text
//! message = 0x01 || u8(kind) || msg_id (16) || u64be(sent_ms) || body
//! ```
//!
//! `msg_id` names the message for the reader's deduplication and for later status updates;
//! `sent_ms` is the sender's claim of when it was written (shown, never trusted). The body's
//! meaning depends on `kind` (1 text, 4 file: `whitepaper/attachments.md` §4); a reader
//! skips kinds it does not know.
//!
//! Kinds 2 and 3 travel only between the devices of one account (`whitepaper/devices.md` §5):
//! a *sent copy* of a message one device sent (body `peer (32) || u8(kind) || body`, with the
//! copied message's `msg_id` and `sent_ms`), and a *device list* (body: the list signed by the
//! account), which tells a device whether it is still on its account. [`Incoming`] reads all
//! of them; [`AppMessage`] only what people read.
//!
//! Kinds 5 to 7 are groups' (`whitepaper/groups.md`
//! §13): an *invitation* (5, body `seed (32) || u8(n) || name (n) || list`) and its *answer* (6,
//! body `G (32) || u8(1 accepted, 0 refused)`) travel over sessions; *leaving* (7, empty body)
//! is a message inside a group.
//!
//! Kind 8 carries the sender's delivery token (body: 32 bytes): with it, the recipient stores
//! into the sender's inbox rather than the strangers' requests share (`whitepaper/storage.md`
//! §4.5). It travels inside the session, so only the peer learns it.

use thiserror::Error;

use crate::attach::FileRef;

/// Version byte of [`AppMessage`].
pub const VERSION: u8 = 1;
/// Bytes before the body.
pub const HEADER_LEN: usize = 1 + 1 + 16 + 8;

/// A kind of application message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// UTF-8 text for a person to read.
    Text = 1,
    /// A copy, for the account's other devices, of a message one device sent.
    SentCopy = 2,
    /// The account's device list, sent by its primary device.
    DeviceList = 3,
    /// A file: its chunks' place, key and root (`whitepaper/attachments.md` §4).
    File = 4,
    /// The sender's delivery token.
    Token = 8,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Text),
            2 => Some(Kind::SentCopy),
            3 => Some(Kind::DeviceList),
            4 => Some(Kind::File),
            8 => Some(Kind::Token),
            _ => None,
        }
    }
}

/// Kind of a group invitation (over a session).
pub const KIND_GROUP_INVITATION: u8 = 5;
/// Kind of the answer to a group invitation (over a session).
pub const KIND_GROUP_ANSWER: u8 = 6;
/// Kind of a member's last message in a group: it leaves.
pub const KIND_GROUP_LEAVE: u8 = 7;

/// An invitation into a group: what the invitee needs to read its mailbox and trust its lists.
#[derive(Clone, PartialEq, Eq)]
pub struct GroupInvitation {
    /// The group's seed (`whitepaper/groups.md` §2).
    pub seed: zeroize::Zeroizing<[u8; 32]>,
    /// The name the inviter gave the group (another person's text: checked before use).
    pub name: String,
    /// The head membership list when the invitation was made (its encoding).
    pub list: Vec<u8>,
}

impl std::fmt::Debug for GroupInvitation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupInvitation")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The message of kind `kind` with `body`.
fn with_header(kind: u8, msg_id: [u8; 16], sent_ms: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&msg_id);
    out.extend_from_slice(&sent_ms.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Kind 5: an invitation. Refuses a name longer than 255 bytes.
pub fn group_invitation_message(
    msg_id: [u8; 16],
    sent_ms: u64,
    invitation: &GroupInvitation,
) -> Result<zeroize::Zeroizing<Vec<u8>>, PayloadError> {
    let n = u8::try_from(invitation.name.len()).map_err(|_| PayloadError::BadGroup)?;
    let mut body =
        zeroize::Zeroizing::new(Vec::with_capacity(33 + n as usize + invitation.list.len()));
    body.extend_from_slice(invitation.seed.as_ref());
    body.push(n);
    body.extend_from_slice(invitation.name.as_bytes());
    body.extend_from_slice(&invitation.list);
    Ok(zeroize::Zeroizing::new(with_header(
        KIND_GROUP_INVITATION,
        msg_id,
        sent_ms,
        &body,
    )))
}

/// Kind 2 holding kind 5: the copy of an invitation into a group that this account sent to
/// `invitee`, for the account's other devices (`whitepaper/groups.md` §13.1): it tells them
/// whom the account invited, so any of them adds the invitee once it accepts.
pub fn group_invitation_copy(
    msg_id: [u8; 16],
    sent_ms: u64,
    invitee: &[u8; 32],
    invitation: &GroupInvitation,
) -> Result<zeroize::Zeroizing<Vec<u8>>, PayloadError> {
    let inner = group_invitation_message(msg_id, sent_ms, invitation)?;
    let mut body = zeroize::Zeroizing::new(Vec::with_capacity(
        SENT_COPY_OVERHEAD + inner.len() - HEADER_LEN,
    ));
    body.extend_from_slice(invitee);
    body.push(KIND_GROUP_INVITATION);
    body.extend_from_slice(&inner[HEADER_LEN..]);
    Ok(zeroize::Zeroizing::new(with_header(
        Kind::SentCopy as u8,
        msg_id,
        sent_ms,
        &body,
    )))
}

/// Kind 6: the answer to an invitation into group `group`.
pub fn group_answer_message(
    msg_id: [u8; 16],
    sent_ms: u64,
    group: &[u8; 32],
    accepted: bool,
) -> Vec<u8> {
    let mut body = [0u8; 33];
    body[..32].copy_from_slice(group);
    body[32] = u8::from(accepted);
    with_header(KIND_GROUP_ANSWER, msg_id, sent_ms, &body)
}

/// Kind 7: the writer leaves the group (sent inside it).
pub fn group_leave_message(msg_id: [u8; 16], sent_ms: u64) -> Vec<u8> {
    with_header(KIND_GROUP_LEAVE, msg_id, sent_ms, &[])
}

/// Bytes a sent copy adds to the body of the message it copies: the peer and the kind.
pub const SENT_COPY_OVERHEAD: usize = 32 + 1;

/// Why a decrypted message could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PayloadError {
    /// Shorter than its header.
    #[error("message shorter than its header")]
    Truncated,
    /// A version this client does not read.
    #[error("message version {0} unknown")]
    Version(u8),
    /// A kind this client does not know (sent by a newer client).
    #[error("message kind {0} unknown")]
    UnknownKind(u8),
    /// Text that is not UTF-8.
    #[error("text is not UTF-8")]
    NotUtf8,
    /// A sent copy too short for its peer, or copying a kind that cannot be copied.
    #[error("malformed sent copy")]
    BadCopy,
    /// A token message whose body is not 32 bytes.
    #[error("malformed delivery token")]
    BadToken,
    /// A group invitation, answer or leaving message that does not decode.
    #[error("malformed group message")]
    BadGroup,
    /// A file message that does not decode (attachments.md §4).
    #[error("unreadable file message")]
    BadFile,
}

/// One application message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppMessage {
    /// The message id, random per message.
    pub msg_id: [u8; 16],
    /// When the sender wrote it (its clock, Unix ms).
    pub sent_ms: u64,
    /// What it says.
    pub content: Content,
}

/// The body of an [`AppMessage`], by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Text.
    Text(String),
    /// A file.
    File(FileRef),
}

impl Content {
    /// What the history and the terminal show for it: the text, or a line naming the file.
    pub fn summary(&self) -> String {
        match self {
            Content::Text(t) => t.clone(),
            Content::File(f) => format!("[file] {} ({} bytes)", f.name, f.size),
        }
    }
}

impl AppMessage {
    /// The encoding sealed into a session message.
    pub fn encode(&self) -> Vec<u8> {
        let file;
        let (kind, body) = match &self.content {
            Content::Text(t) => (Kind::Text, t.as_bytes()),
            Content::File(f) => {
                file = f.encode();
                (Kind::File, file.as_slice())
            }
        };
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.push(VERSION);
        out.push(kind as u8);
        out.extend_from_slice(&self.msg_id);
        out.extend_from_slice(&self.sent_ms.to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    /// Decodes [`Self::encode`]: a message people read (kinds 2 and 3 are [`Incoming`]'s).
    pub fn decode(bytes: &[u8]) -> Result<Self, PayloadError> {
        match Incoming::decode(bytes)? {
            Incoming::Message(m) => Ok(m),
            _ => Err(PayloadError::UnknownKind(bytes[1])),
        }
    }

    /// The copy of this message (sent to `peer`) for the sender's other devices: kind 2.
    pub fn sent_copy(&self, peer: &[u8; 32]) -> Vec<u8> {
        let inner = self.encode();
        let mut out = Vec::with_capacity(inner.len() + SENT_COPY_OVERHEAD);
        out.extend_from_slice(&inner[..HEADER_LEN]);
        out[1] = Kind::SentCopy as u8;
        out.extend_from_slice(peer);
        out.push(inner[1]);
        out.extend_from_slice(&inner[HEADER_LEN..]);
        out
    }
}

/// Kind 3: the device list `list` (its encoding), sent by the primary as `msg_id` at `sent_ms`.
pub fn device_list_message(msg_id: [u8; 16], sent_ms: u64, list: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + list.len());
    out.push(VERSION);
    out.push(Kind::DeviceList as u8);
    out.extend_from_slice(&msg_id);
    out.extend_from_slice(&sent_ms.to_be_bytes());
    out.extend_from_slice(list);
    out
}

/// Kind 4: the sender's delivery token `token`, as `msg_id` at `sent_ms`.
pub fn token_message(msg_id: [u8; 16], sent_ms: u64, token: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + token.len());
    out.push(VERSION);
    out.push(Kind::Token as u8);
    out.extend_from_slice(&msg_id);
    out.extend_from_slice(&sent_ms.to_be_bytes());
    out.extend_from_slice(token);
    out
}

/// Any application message: one for people, or one between the devices of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A message people read.
    Message(AppMessage),
    /// A copy of a message another device of this account sent to `peer`.
    SentCopy {
        /// The account it was sent to.
        peer: [u8; 32],
        /// The message as sent.
        message: AppMessage,
    },
    /// The account's device list (not yet verified), from a device of the account.
    DeviceList {
        /// The message id.
        msg_id: [u8; 16],
        /// The list's encoding.
        list: Vec<u8>,
    },
    /// The sender's delivery token (storage.md §4.5).
    Token([u8; 32]),
    /// An invitation into a group (kind 5).
    GroupInvitation {
        /// The message id.
        msg_id: [u8; 16],
        /// What it carries.
        invitation: Box<GroupInvitation>,
    },
    /// The answer to an invitation (kind 6).
    GroupAnswer {
        /// The message id.
        msg_id: [u8; 16],
        /// The group's key.
        group: [u8; 32],
        /// Accepted, or refused.
        accepted: bool,
    },
    /// The copy of an invitation another device of this account sent (kind 2 holding 5).
    GroupInvitationCopy {
        /// The message id.
        msg_id: [u8; 16],
        /// Whom it invited.
        invitee: [u8; 32],
        /// What the invitation carried.
        invitation: Box<GroupInvitation>,
    },
    /// The writer leaves the group it wrote this in (kind 7).
    GroupLeave {
        /// The message id.
        msg_id: [u8; 16],
    },
}

fn content(kind: Kind, body: &[u8]) -> Result<Content, PayloadError> {
    match kind {
        Kind::Text => Ok(Content::Text(
            std::str::from_utf8(body)
                .map_err(|_| PayloadError::NotUtf8)?
                .to_owned(),
        )),
        Kind::File => Ok(Content::File(
            FileRef::decode(body).map_err(|_| PayloadError::BadFile)?,
        )),
        Kind::SentCopy | Kind::DeviceList | Kind::Token => Err(PayloadError::BadCopy),
    }
}

impl Incoming {
    /// The group kinds (5 to 7); `None` for any other kind.
    fn decode_group(kind: u8, msg_id: [u8; 16], body: &[u8]) -> Result<Option<Self>, PayloadError> {
        Ok(Some(match kind {
            KIND_GROUP_INVITATION => {
                let (seed, rest) = body
                    .split_first_chunk::<32>()
                    .ok_or(PayloadError::BadGroup)?;
                let (&n, rest) = rest.split_first().ok_or(PayloadError::BadGroup)?;
                let (name, list) = rest
                    .split_at_checked(usize::from(n))
                    .ok_or(PayloadError::BadGroup)?;
                let name = std::str::from_utf8(name).map_err(|_| PayloadError::NotUtf8)?;
                if list.is_empty() {
                    return Err(PayloadError::BadGroup);
                }
                Incoming::GroupInvitation {
                    msg_id,
                    invitation: Box::new(GroupInvitation {
                        seed: zeroize::Zeroizing::new(*seed),
                        name: name.to_owned(),
                        list: list.to_vec(),
                    }),
                }
            }
            KIND_GROUP_ANSWER => {
                let (group, rest) = body
                    .split_first_chunk::<32>()
                    .ok_or(PayloadError::BadGroup)?;
                let accepted = match rest {
                    [0] => false,
                    [1] => true,
                    _ => return Err(PayloadError::BadGroup),
                };
                Incoming::GroupAnswer {
                    msg_id,
                    group: *group,
                    accepted,
                }
            }
            KIND_GROUP_LEAVE if body.is_empty() => Incoming::GroupLeave { msg_id },
            KIND_GROUP_LEAVE => return Err(PayloadError::BadGroup),
            _ => return Ok(None),
        }))
    }

    /// Decodes an application message of any kind this version knows.
    pub fn decode(bytes: &[u8]) -> Result<Self, PayloadError> {
        if bytes.len() < HEADER_LEN {
            return Err(PayloadError::Truncated);
        }
        if bytes[0] != VERSION {
            return Err(PayloadError::Version(bytes[0]));
        }
        let mut msg_id = [0u8; 16];
        msg_id.copy_from_slice(&bytes[2..18]);
        if let Some(group) = Self::decode_group(bytes[1], msg_id, &bytes[HEADER_LEN..])? {
            return Ok(group);
        }
        let kind = Kind::from_u8(bytes[1]).ok_or(PayloadError::UnknownKind(bytes[1]))?;
        let mut sent = [0u8; 8];
        sent.copy_from_slice(&bytes[18..26]);
        let sent_ms = u64::from_be_bytes(sent);
        let body = &bytes[HEADER_LEN..];
        Ok(match kind {
            Kind::Text | Kind::File => Incoming::Message(AppMessage {
                msg_id,
                sent_ms,
                content: content(kind, body)?,
            }),
            Kind::SentCopy => {
                if body.len() < SENT_COPY_OVERHEAD {
                    return Err(PayloadError::BadCopy);
                }
                let mut peer = [0u8; 32];
                peer.copy_from_slice(&body[..32]);
                if body[32] == KIND_GROUP_INVITATION {
                    let Some(Incoming::GroupInvitation { invitation, .. }) = Self::decode_group(
                        KIND_GROUP_INVITATION,
                        msg_id,
                        &body[SENT_COPY_OVERHEAD..],
                    )?
                    else {
                        return Err(PayloadError::BadGroup);
                    };
                    return Ok(Incoming::GroupInvitationCopy {
                        msg_id,
                        invitee: peer,
                        invitation,
                    });
                }
                let inner = Kind::from_u8(body[32]).ok_or(PayloadError::UnknownKind(body[32]))?;
                Incoming::SentCopy {
                    peer,
                    message: AppMessage {
                        msg_id,
                        sent_ms,
                        content: content(inner, &body[SENT_COPY_OVERHEAD..])?,
                    },
                }
            }
            Kind::DeviceList => Incoming::DeviceList {
                msg_id,
                list: body.to_vec(),
            },
            Kind::Token => Incoming::Token(body.try_into().map_err(|_| PayloadError::BadToken)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = AppMessage::decode(&bytes);
        }

        #[test]
        fn incoming_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            let _ = Incoming::decode(&bytes);
        }

        #[test]
        fn copies_round_trip(id in any::<[u8; 16]>(), t in any::<u64>(), text in ".{0,40}",
                             peer in any::<[u8; 32]>()) {
            let m = AppMessage { msg_id: id, sent_ms: t, content: Content::Text(text) };
            let copy = m.sent_copy(&peer);
            prop_assert_eq!(copy.len(), m.encode().len() + SENT_COPY_OVERHEAD);
            prop_assert_eq!(Incoming::decode(&copy), Ok(Incoming::SentCopy { peer, message: m }));
            prop_assert_eq!(AppMessage::decode(&copy), Err(PayloadError::UnknownKind(2)));
        }

        #[test]
        fn tokens_round_trip(id in any::<[u8; 16]>(), t in any::<u64>(), token in any::<[u8; 32]>()) {
            let m = token_message(id, t, &token);
            prop_assert_eq!(Incoming::decode(&m), Ok(Incoming::Token(token)));
            prop_assert_eq!(Incoming::decode(&m[..m.len() - 1]), Err(PayloadError::BadToken));
            prop_assert_eq!(AppMessage::decode(&m), Err(PayloadError::UnknownKind(8)));
        }

        #[test]
        fn group_messages_round_trip(id in any::<[u8; 16]>(), t in any::<u64>(), name in ".{0,20}",
                                     seed in any::<[u8; 32]>(), list in proptest::collection::vec(any::<u8>(), 1..40),
                                     group in any::<[u8; 32]>(), accepted in any::<bool>()) {
            let inv = GroupInvitation { seed: zeroize::Zeroizing::new(seed), name, list };
            let m = group_invitation_message(id, t, &inv).unwrap();
            prop_assert_eq!(Incoming::decode(&m), Ok(Incoming::GroupInvitation { msg_id: id, invitation: Box::new(inv) }));
            for cut in 0..m.len() {
                let _ = Incoming::decode(&m[..cut]);
            }
            let a = group_answer_message(id, t, &group, accepted);
            prop_assert_eq!(Incoming::decode(&a), Ok(Incoming::GroupAnswer { msg_id: id, group, accepted }));
            prop_assert_eq!(Incoming::decode(&a[..a.len() - 1]), Err(PayloadError::BadGroup));
            prop_assert_eq!(Incoming::decode(&group_leave_message(id, t)), Ok(Incoming::GroupLeave { msg_id: id }));
            prop_assert_eq!(AppMessage::decode(&a), Err(PayloadError::UnknownKind(KIND_GROUP_ANSWER)));
        }

        #[test]
        fn text_round_trips(id in any::<[u8; 16]>(), t in any::<u64>(), text in ".{0,40}") {
            let m = AppMessage { msg_id: id, sent_ms: t, content: Content::Text(text) };
            prop_assert_eq!(AppMessage::decode(&m.encode()), Ok(m));
        }
    }

    /// `whitepaper/vectors/group_payloads.json`, recomputed from its inputs.
    #[test]
    fn group_kinds_match_the_vectors() {
        let v: serde_json::Value = serde_json::from_str(include_str!(
            "../../../whitepaper/vectors/group_payloads.json"
        ))
        .unwrap();
        let hex_of = |k: &str| hex::decode(v["inputs"][k].as_str().unwrap()).unwrap();
        let msg_id: [u8; 16] = hex_of("msg_id").try_into().unwrap();
        let sent = v["inputs"]["sent_ms"].as_u64().unwrap();
        let group: [u8; 32] = hex_of("group").try_into().unwrap();
        let seed: [u8; 32] = hex_of("seed").try_into().unwrap();
        let inv = GroupInvitation {
            seed: zeroize::Zeroizing::new(seed),
            name: v["inputs"]["name"].as_str().unwrap().to_owned(),
            list: hex_of("list"),
        };
        let want = |k: &str| v[k].as_str().unwrap().to_owned();
        let m = group_invitation_message(msg_id, sent, &inv).unwrap();
        assert_eq!(hex::encode(&*m), want("invitation"));
        assert_eq!(
            hex::encode(group_answer_message(msg_id, sent, &group, true)),
            want("answer_accepted")
        );
        assert_eq!(
            hex::encode(group_answer_message(msg_id, sent, &group, false)),
            want("answer_refused")
        );
        assert_eq!(
            hex::encode(group_leave_message(msg_id, sent)),
            want("leave")
        );
        let invitee: [u8; 32] = hex_of("invitee").try_into().unwrap();
        let copy = group_invitation_copy(msg_id, sent, &invitee, &inv).unwrap();
        assert_eq!(hex::encode(&*copy), want("invitation_copy"));
        assert_eq!(
            Incoming::decode(&copy),
            Ok(Incoming::GroupInvitationCopy {
                msg_id,
                invitee,
                invitation: Box::new(inv.clone()),
            })
        );
        // Cut anywhere: never a panic; a typed error until the list begins (the list itself is
        // checked when it is used).
        let list_at = HEADER_LEN + SENT_COPY_OVERHEAD + 32 + 1 + inv.name.len();
        for cut in 0..copy.len() {
            let got = Incoming::decode(&copy[..cut]);
            assert!(cut > list_at || got.is_err(), "{cut}");
        }
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let m = AppMessage {
            msg_id: [7; 16],
            sent_ms: 1,
            content: Content::Text("hi".into()),
        };
        let mut b = m.encode();
        assert_eq!(AppMessage::decode(&b[..25]), Err(PayloadError::Truncated));
        b[1] = 9;
        assert_eq!(AppMessage::decode(&b), Err(PayloadError::UnknownKind(9)));
        b[1] = 1;
        b[0] = 2;
        assert_eq!(AppMessage::decode(&b), Err(PayloadError::Version(2)));
        let mut bad = m.encode();
        bad.push(0xff);
        assert_eq!(AppMessage::decode(&bad), Err(PayloadError::NotUtf8));
        let mut file = m.encode();
        file[1] = 4;
        assert_eq!(AppMessage::decode(&file), Err(PayloadError::BadFile));
        // A copy of a copy, or of a device list, is refused.
        let mut copy = m.sent_copy(&[1; 32]);
        copy[HEADER_LEN + 32] = 2;
        assert_eq!(Incoming::decode(&copy), Err(PayloadError::BadCopy));
        assert_eq!(
            Incoming::decode(&copy[..HEADER_LEN + 10]),
            Err(PayloadError::BadCopy)
        );
        let list = device_list_message([3; 16], 9, b"list");
        assert_eq!(
            Incoming::decode(&list),
            Ok(Incoming::DeviceList {
                msg_id: [3; 16],
                list: b"list".to_vec()
            })
        );
    }
}
