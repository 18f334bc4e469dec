//! MySQL and MariaDB client/server protocol (protocol 4.1, HandshakeV10): packet framing and
//! logical packets, the command-phase [`Scanner`], the handshake and authentication packets,
//! the generic OK / ERR / EOF packets with session tracking, prepared-statement replies and
//! statement ids, and [`Reply`], which tells when a command's reply is complete.
//!
//! References: <https://dev.mysql.com/doc/dev/mysql-server/latest/PAGE_PROTOCOL.html> and
//! <https://mariadb.com/kb/en/clientserver-protocol/>.

mod auth;
mod frame;
mod handshake;
mod lenenc;
mod packets;
mod reply;
mod scanner;
mod session_track;

#[cfg(test)]
mod handshake_tests;
#[cfg(test)]
mod packets_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod reply_tests;

pub use auth::{
    caching_sha2, encode_auth_data, encode_auth_more_data, encode_auth_switch_request,
    encode_change_user, parse_auth_packet, parse_change_user, AuthPacket, AuthSwitchRequest,
    ChangeUser, AUTH_MORE_DATA_HEADER, CACHING_SHA2_PASSWORD, MYSQL_NATIVE_PASSWORD,
};
pub use frame::{
    encode_packet, parse_header, split_logical_packet, split_packet, LogicalPacket, Packet,
    PacketHeader, HEADER_LEN, MAX_PAYLOAD_LEN,
};
pub use handshake::{
    encode_handshake_response, encode_handshake_v10, encode_ssl_request, parse_client_handshake,
    parse_handshake_v10, ClientHandshake, HandshakeResponse41, HandshakeV10, SslRequest,
    MARIADB_VERSION_PREFIX, PROTOCOL_VERSION_10, SSL_REQUEST_LEN,
};
pub use lenenc::{
    lenenc_int_len, parse_lenenc_int, parse_lenenc_str, put_lenenc_int, put_lenenc_str, NULL_MARKER,
};
pub use packets::{
    capability, command, command_text, encode_eof, encode_err, encode_ok, encode_prepare_ok,
    error_code, execute_flags, has_statement_id, is_eof_packet, is_result_terminator,
    is_unsolicited_err, parse_eof, parse_err, parse_ok, parse_prepare_ok, set_statement_id,
    statement_id, status, strip_session_track, terminator_status, EofPacket, ErrPacket, OkPacket,
    PrepareOk, CURSOR_TYPE_READ_ONLY, EOF_HEADER, ERR_HEADER, LOCAL_INFILE_HEADER, OK_HEADER,
};
pub use reply::{reply_shape, Next, PacketKind, Reply, ReplyEnd, ReplyOptions, ReplyShape, Seen};
pub use scanner::{Part, Scanner, Step, DEFAULT_STREAM_THRESHOLD, PEEK_LEN};
pub use session_track::{
    put_session_change, session_changes, track, SessionChange, SessionChanges,
};
