//! Session state information: the typed records an OK packet carries after its info string when
//! CLIENT_SESSION_TRACK is agreed and SERVER_SESSION_STATE_CHANGED is set. Each record is a type
//! byte and a `string<lenenc>` whose content depends on the type.

use super::lenenc::{put_lenenc_int, put_lenenc_str, Reader};
use crate::ProtocolError;

/// Record type bytes (`SESSION_TRACK_*`).
pub mod track {
    pub const SYSTEM_VARIABLES: u8 = 0;
    pub const SCHEMA: u8 = 1;
    pub const STATE_CHANGE: u8 = 2;
    pub const GTIDS: u8 = 3;
    pub const TRANSACTION_CHARACTERISTICS: u8 = 4;
    pub const TRANSACTION_STATE: u8 = 5;
}

/// One session state record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionChange<'a> {
    /// 0: a tracked system variable was assigned: (name, value).
    SystemVariable { name: &'a [u8], value: &'a [u8] },
    /// 1: the current schema changed.
    Schema(&'a [u8]),
    /// 2: some session state changed (`"1"`); the change itself is not described.
    StateChange(&'a [u8]),
    /// 3: GTIDs: the encoding specification byte and the GTID set.
    Gtids { encoding: u8, gtids: &'a [u8] },
    /// 4: the statements that would restore the transaction characteristics.
    TransactionCharacteristics(&'a [u8]),
    /// 5: the transaction state, eight characters (e.g. `T_______`).
    TransactionState(&'a [u8]),
    /// A type this crate does not know, with its raw data.
    Other { kind: u8, data: &'a [u8] },
}

impl SessionChange<'_> {
    /// The record type byte.
    pub fn kind(&self) -> u8 {
        match self {
            SessionChange::SystemVariable { .. } => track::SYSTEM_VARIABLES,
            SessionChange::Schema(_) => track::SCHEMA,
            SessionChange::StateChange(_) => track::STATE_CHANGE,
            SessionChange::Gtids { .. } => track::GTIDS,
            SessionChange::TransactionCharacteristics(_) => track::TRANSACTION_CHARACTERISTICS,
            SessionChange::TransactionState(_) => track::TRANSACTION_STATE,
            SessionChange::Other { kind, .. } => *kind,
        }
    }
}

/// Iterates over the records of a session state information block (the `session_state` of an
/// [`OkPacket`](super::OkPacket)). A malformed record ends the iteration with an error.
pub fn session_changes(state: &[u8]) -> SessionChanges<'_> {
    SessionChanges {
        r: Reader::new(state),
        failed: false,
    }
}

/// Iterator returned by [`session_changes`].
#[derive(Clone, Debug)]
pub struct SessionChanges<'a> {
    r: Reader<'a>,
    failed: bool,
}

impl<'a> Iterator for SessionChanges<'a> {
    type Item = Result<SessionChange<'a>, ProtocolError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.r.is_empty() {
            return None;
        }
        let item = next_record(&mut self.r);
        self.failed = item.is_err();
        Some(item)
    }
}

fn next_record<'a>(r: &mut Reader<'a>) -> Result<SessionChange<'a>, ProtocolError> {
    let kind = r.u8("session state record type")?;
    let data = r.lenenc_str()?;
    let mut d = Reader::new(data);
    let change = match kind {
        track::SYSTEM_VARIABLES => SessionChange::SystemVariable {
            name: d.lenenc_str()?,
            value: d.lenenc_str()?,
        },
        track::SCHEMA => SessionChange::Schema(d.lenenc_str()?),
        // MySQL and MariaDB both write the flag byte itself (`02 01 31`), not the
        // `string<lenenc>` the protocol documentation describes; both forms are read.
        track::STATE_CHANGE if is_bare_flag(data) => return Ok(SessionChange::StateChange(data)),
        track::STATE_CHANGE => SessionChange::StateChange(d.lenenc_str()?),
        track::GTIDS => SessionChange::Gtids {
            encoding: d.u8("GTID record encoding specification")?,
            gtids: d.lenenc_str()?,
        },
        track::TRANSACTION_CHARACTERISTICS => {
            SessionChange::TransactionCharacteristics(d.lenenc_str()?)
        }
        track::TRANSACTION_STATE => SessionChange::TransactionState(d.lenenc_str()?),
        kind => return Ok(SessionChange::Other { kind, data }),
    };
    d.finish("bytes after a session state record")?;
    Ok(change)
}

/// Whether a state-change record's data is the flag byte itself, as servers write it: one byte
/// that cannot be the length of an empty `string<lenenc>`.
fn is_bare_flag(data: &[u8]) -> bool {
    matches!(data, [flag] if *flag != 0)
}

/// Appends one record to a session state information block (for building OK packets).
pub fn put_session_change(change: &SessionChange<'_>, out: &mut Vec<u8>) {
    let mut data = Vec::new();
    match change {
        SessionChange::SystemVariable { name, value } => {
            put_lenenc_str(name, &mut data);
            put_lenenc_str(value, &mut data);
        }
        SessionChange::StateChange(s) if is_bare_flag(s) => data.extend_from_slice(s),
        SessionChange::StateChange(s) => put_lenenc_str(s, &mut data),
        SessionChange::Schema(s)
        | SessionChange::TransactionCharacteristics(s)
        | SessionChange::TransactionState(s) => put_lenenc_str(s, &mut data),
        SessionChange::Gtids { encoding, gtids } => {
            data.push(*encoding);
            put_lenenc_str(gtids, &mut data);
        }
        SessionChange::Other { data: raw, .. } => data.extend_from_slice(raw),
    }
    out.push(change.kind());
    put_lenenc_int(data.len() as u64, out);
    out.extend_from_slice(&data);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The records of `SET autocommit = OFF` and `USE test` with every tracker on, as servers
    /// write them (the state-change flag as its byte, as MariaDB 10.11 sends it).
    const STATE: &[u8] = b"\x00\x0f\x0aautocommit\x03OFF\
\x01\x05\x04test\
\x02\x01\x31\
\x03\x07\x00\x05a:1-5\
\x04\x18\x17START TRANSACTION; -- x\
\x05\x09\x08T_______";

    #[test]
    fn golden_records() {
        let changes: Vec<_> = session_changes(STATE).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            changes,
            vec![
                SessionChange::SystemVariable {
                    name: b"autocommit",
                    value: b"OFF"
                },
                SessionChange::Schema(b"test"),
                SessionChange::StateChange(b"1"),
                SessionChange::Gtids {
                    encoding: 0,
                    gtids: b"a:1-5"
                },
                SessionChange::TransactionCharacteristics(b"START TRANSACTION; -- x"),
                SessionChange::TransactionState(b"T_______"),
            ]
        );
        let mut out = Vec::new();
        for c in &changes {
            put_session_change(c, &mut out);
        }
        assert_eq!(out, STATE);
    }

    #[test]
    fn the_state_change_flag_is_read_in_both_forms() {
        for state in [&b"\x02\x01\x31"[..], b"\x02\x02\x01\x31"] {
            let changes: Vec<_> = session_changes(state).collect::<Result<_, _>>().unwrap();
            assert_eq!(changes, vec![SessionChange::StateChange(b"1")], "{state:?}");
        }
    }

    #[test]
    fn unknown_types_are_kept_and_bad_records_stop() {
        let changes: Vec<_> = session_changes(b"\x09\x02ab\x01\x02\x01x").collect();
        assert_eq!(
            changes,
            vec![
                Ok(SessionChange::Other {
                    kind: 9,
                    data: b"ab"
                }),
                Ok(SessionChange::Schema(b"x"))
            ]
        );
        for bad in [
            &b"\x01"[..],
            b"\x01\x05\x04tes",
            b"\x01\x03\x01xy",
            b"\x00\x02\x01a",
        ] {
            let all: Vec<_> = session_changes(bad).collect();
            assert_eq!(all.len(), 1, "{bad:?}");
            assert!(all[0].is_err(), "{bad:?}");
        }
        assert_eq!(session_changes(b"").count(), 0);
    }
}
