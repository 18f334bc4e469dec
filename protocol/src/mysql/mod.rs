//! MySQL and MariaDB client/server protocol (protocol 4.1): packet framing and logical packets,
//! length-encoded values, and the command-phase [`Scanner`].
//!
//! References: <https://dev.mysql.com/doc/dev/mysql-server/latest/PAGE_PROTOCOL.html> and
//! <https://mariadb.com/kb/en/clientserver-protocol/>.

mod frame;
mod lenenc;
mod scanner;

pub use frame::{
    encode_packet, parse_header, split_logical_packet, split_packet, LogicalPacket, Packet,
    PacketHeader, HEADER_LEN, MAX_PAYLOAD_LEN,
};
pub use lenenc::{
    lenenc_int_len, parse_lenenc_int, parse_lenenc_str, put_lenenc_int, put_lenenc_str,
    NULL_MARKER,
};
pub use scanner::{Part, Scanner, Step, DEFAULT_STREAM_THRESHOLD, PEEK_LEN};
