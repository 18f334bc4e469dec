//! The map between the prepared-statement ids a client sees and the ids of the backend that
//! serves it (DESIGN §4). Client ids are Suture's own, counted from 1, so they stay valid when
//! the session moves to a new backend: there each statement is prepared again (lazily, before
//! its next use) and its new backend id bound to the same client id.

use std::collections::BTreeMap;

use bytes::Bytes;

/// One statement the client prepared with COM_STMT_PREPARE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PreparedStatement {
    /// Its id on the backend that prepared it last.
    pub(crate) backend_id: u32,
    /// Whether `backend_id` is valid on the current backend (false after a backend change,
    /// until the statement is prepared again and [`StatementMap::rebind`] called).
    pub(crate) bound: bool,
    /// The statement text, as the client sent it, to prepare it again.
    pub(crate) sql: Bytes,
    /// Its parameter and column counts, as the first COM_STMT_PREPARE_OK told them: a new
    /// backend must report the same ones.
    pub(crate) params: u16,
    pub(crate) columns: u16,
}

/// The prepared statements of one client session, by client id.
#[derive(Debug)]
pub(crate) struct StatementMap {
    statements: BTreeMap<u32, PreparedStatement>,
    /// The next client id to try.
    next_id: u32,
    /// Bytes of statement text held.
    sql_bytes: usize,
}

impl Default for StatementMap {
    fn default() -> StatementMap {
        StatementMap::new()
    }
}

impl StatementMap {
    pub(crate) fn new() -> StatementMap {
        StatementMap {
            statements: BTreeMap::new(),
            next_id: 1,
            sql_bytes: 0,
        }
    }

    /// Records a statement the backend prepared as `backend_id`; returns the id the client
    /// is given for it.
    pub(crate) fn prepared(
        &mut self,
        backend_id: u32,
        sql: Bytes,
        params: u16,
        columns: u16,
    ) -> u32 {
        let client_id = self.unused_id();
        self.sql_bytes += sql.len();
        self.statements.insert(
            client_id,
            PreparedStatement {
                backend_id,
                bound: true,
                sql,
                params,
                columns,
            },
        );
        client_id
    }

    /// A free client id: counting up from 1, never 0, skipping ids in use after a wrap.
    fn unused_id(&mut self) -> u32 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            if !self.statements.contains_key(&id) {
                return id;
            }
        }
    }

    /// The backend id of a client's statement, if it is known and bound on the current
    /// backend.
    pub(crate) fn backend_id(&self, client_id: u32) -> Option<u32> {
        self.statements
            .get(&client_id)
            .filter(|s| s.bound)
            .map(|s| s.backend_id)
    }

    /// The statement behind a client id, bound or not.
    #[cfg(test)]
    pub(crate) fn get(&self, client_id: u32) -> Option<&PreparedStatement> {
        self.statements.get(&client_id)
    }

    /// The client closed a statement (COM_STMT_CLOSE); unknown ids are ignored, as the server
    /// does.
    pub(crate) fn closed(&mut self, client_id: u32) {
        if let Some(s) = self.statements.remove(&client_id) {
            self.sql_bytes -= s.sql.len();
        }
    }

    /// A statement was prepared again, on a new backend, as `new_backend_id`.
    pub(crate) fn rebind(&mut self, client_id: u32, new_backend_id: u32) {
        if let Some(s) = self.statements.get_mut(&client_id) {
            s.backend_id = new_backend_id;
            s.bound = true;
        }
    }

    /// The session moved to a new backend: no backend id is valid any more.
    pub(crate) fn unbind_all(&mut self) {
        for s in self.statements.values_mut() {
            s.bound = false;
        }
    }

    /// Every statement, by client id in ascending order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &PreparedStatement)> {
        self.statements.iter().map(|(&id, s)| (id, s))
    }

    /// Forgets every statement (COM_RESET_CONNECTION, COM_CHANGE_USER). Client ids keep
    /// counting, so an id the client still holds never names a new statement.
    pub(crate) fn clear(&mut self) {
        self.statements.clear();
        self.sql_bytes = 0;
    }

    pub(crate) fn len(&self) -> usize {
        self.statements.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }

    /// Bytes of statement text held, for the session's memory limit.
    pub(crate) fn sql_bytes(&self) -> usize {
        self.sql_bytes
    }
}

#[cfg(test)]
#[path = "statement_ids_tests.rs"]
mod tests;
