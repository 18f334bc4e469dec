//! PostgreSQL wire protocol (version 3.0): framing, the startup and authentication messages, the
//! few command-phase messages the proxy inspects, encoders for what Suture writes, and the
//! command-phase [`Scanner`].
//!
//! Reference: <https://www.postgresql.org/docs/current/protocol-message-formats.html>.

mod backend;
mod cursor;
mod encode;
mod frame;
mod frontend;
mod scanner;
mod startup;

#[cfg(test)]
mod encode_tests;
#[cfg(test)]
mod proptests;

pub use backend::{
    auth_code, parse_authentication, parse_backend_key_data, parse_data_row_text,
    parse_error_fields, parse_notification_pid, parse_parameter_status, parse_ready_for_query,
    Authentication, ErrorFields, TxStatus,
};
pub use encode::{
    encode_auth_cleartext, encode_auth_md5, encode_auth_ok, encode_auth_sasl,
    encode_auth_sasl_continue, encode_auth_sasl_final, encode_backend_key_data,
    encode_cancel_request, encode_command_complete, encode_empty_reply, encode_error_response,
    encode_no_parameters, encode_notice_response, encode_parameter_status, encode_password,
    encode_query, encode_ready_for_query, encode_sasl_initial_response, encode_sasl_response,
    encode_ssl_request, encode_startup, encode_terminate,
};
pub use frame::{parse_header, split_message, FrameHeader, Message, HEADER_LEN};
pub use frontend::{
    parse_bind_statement, parse_close_statement, parse_parse_message, parse_parse_message_raw,
    parse_password_message, parse_query, parse_query_raw, parse_sasl_initial_response,
    SaslInitialResponse,
};
pub use scanner::{Scanner, Step, DEFAULT_STREAM_THRESHOLD};
pub use startup::{
    parse_startup, CancelRequest, StartupMessage, StartupRequest, CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE, PROTOCOL_VERSION_3_0, SSL_REQUEST_CODE,
};

/// Message type bytes the proxy looks at. Some bytes mean different messages in each direction.
pub mod tag {
    // Backend to client.
    pub const AUTHENTICATION: u8 = b'R';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const DATA_ROW: u8 = b'D';
    pub const ROW_DESCRIPTION: u8 = b'T';
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const BIND_COMPLETE: u8 = b'2';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const COPY_IN_RESPONSE: u8 = b'G';
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    // Both directions.
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    // Client to backend.
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const CLOSE: u8 = b'C';
    pub const SYNC: u8 = b'S';
    pub const FLUSH: u8 = b'H';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const COPY_FAIL: u8 = b'f';
    pub const TERMINATE: u8 = b'X';
    /// PasswordMessage, SASLInitialResponse, SASLResponse, GSSResponse.
    pub const PASSWORD: u8 = b'p';
}
