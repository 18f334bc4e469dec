//! What the shared session core needs of a protocol's backend connection: its two stream
//! halves, the bytes read and not yet handled, the socket probe, and a goodbye.

use std::future::Future;

use bytes::BytesMut;

use crate::liveness::Probe;
use crate::stream::{StreamRead, StreamWrite};

/// A backend connection's parts the relay borrows at once.
pub(crate) struct LinkParts<'a, X> {
    pub(crate) reader: &'a mut StreamRead,
    pub(crate) writer: &'a mut StreamWrite,
    /// Bytes read from the backend and not yet handled.
    pub(crate) rbuf: &'a mut BytesMut,
    /// Peeks at the socket before the first write after idle.
    pub(crate) probe: &'a Probe,
    /// What the backend framer may update on the connection.
    pub(crate) extra: &'a mut X,
}

/// Implements [`Link`] for a backend connection type with the fields `reader`, `writer`,
/// `rbuf`, `probe` and `broken`, the field the framer updates (`extra`) and an inherent
/// `terminate`.
macro_rules! impl_link {
    ($conn:ty, $extra:ident: $extra_ty:ty) => {
        impl $crate::session::link::Link for $conn {
            type Extra = $extra_ty;

            fn parts(&mut self) -> $crate::session::link::LinkParts<'_, $extra_ty> {
                $crate::session::link::LinkParts {
                    reader: &mut self.reader,
                    writer: &mut self.writer,
                    rbuf: &mut self.rbuf,
                    probe: &self.probe,
                    extra: &mut self.$extra,
                }
            }

            fn rbuf(&mut self) -> &mut bytes::BytesMut {
                &mut self.rbuf
            }

            fn set_broken(&mut self) {
                self.broken = true;
            }

            async fn terminate(&mut self) {
                <$conn>::terminate(self).await;
            }
        }
    };
}
pub(crate) use impl_link;

/// An authenticated backend connection, as the session core sees it.
pub(crate) trait Link: Send + 'static {
    /// What the backend framer may update on the connection (PostgreSQL: the parameters it
    /// reports).
    type Extra: Send;

    /// Borrows the parts the relay works on.
    fn parts(&mut self) -> LinkParts<'_, Self::Extra>;

    /// Bytes read from the backend and not yet handled.
    fn rbuf(&mut self) -> &mut BytesMut;

    /// The connection must not be reused (protocol out of sync, I/O error, fatal error).
    fn set_broken(&mut self);

    /// Says goodbye (PostgreSQL Terminate, MySQL COM_QUIT), best effort, briefly.
    fn terminate(&mut self) -> impl Future<Output = ()> + Send;
}
