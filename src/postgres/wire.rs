//! Reading whole PostgreSQL messages with deadlines, for the login and reset phases where
//! Suture itself talks PostgreSQL; the generic socket helpers live in `crate::wire`.

use bytes::BytesMut;
use suture_protocol::pg::{self, Message};
use tokio::io::AsyncRead;

pub(crate) use crate::wire::{fill, write_all, WireError, READ_CHUNK};

/// Reads one whole tagged message (bytes after it stay in `buf`).
pub(crate) async fn read_message<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    max_message_size: usize,
) -> Result<Message, WireError> {
    loop {
        if let Some(message) = pg::split_message(buf, max_message_size)? {
            return Ok(message);
        }
        fill(reader, buf).await?;
    }
}
