//! A MySQL/MariaDB SQL tokenizer, good enough to classify statements: it skips whitespace and
//! comments (`-- `, `#`, `/* */`), lexes the content of executable comments (`/*! */`,
//! `/*!40101 */`, `/*M!100100 */`) as code, keeps strings, quoted identifiers and variables
//! whole, and splits a query into its `;`-separated statements (a compound statement's body,
//! `BEGIN ... END`, stays in one piece). It never fails: unterminated strings and comments run
//! to the end of the text, which the server rejects anyway.

use suture_protocol::mysql::status;

/// The parts of `sql_mode` that change how SQL text is lexed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SqlMode {
    /// `ANSI_QUOTES`: `"..."` is an identifier, not a string.
    pub(crate) ansi_quotes: bool,
    /// `NO_BACKSLASH_ESCAPES`: a backslash in a string is an ordinary character.
    pub(crate) no_backslash_escapes: bool,
}

impl SqlMode {
    /// The mode the server status flags reveal: only `NO_BACKSLASH_ESCAPES` has a status bit
    /// (`SERVER_STATUS_NO_BACKSLASH_ESCAPES`); `ansi_quotes` is false.
    pub(crate) fn from_status(status: u16) -> SqlMode {
        SqlMode {
            ansi_quotes: false,
            no_backslash_escapes: status & status::SERVER_STATUS_NO_BACKSLASH_ESCAPES != 0,
        }
    }

    /// This mode with what a `sql_mode` value as the server reports it (a comma-separated list
    /// such as `ANSI_QUOTES,STRICT_TRANS_TABLES`) says: `ANSI_QUOTES` (also implied by `ANSI`)
    /// and `NO_BACKSLASH_ESCAPES`.
    pub(crate) fn with_sql_mode(self, sql_mode: &str) -> SqlMode {
        let has = |want: &str| {
            sql_mode
                .split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(want))
        };
        SqlMode {
            ansi_quotes: has("ANSI_QUOTES") || has("ANSI"),
            no_backslash_escapes: has("NO_BACKSLASH_ESCAPES"),
        }
    }
}

/// What a token is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenKind {
    /// A keyword, unquoted identifier or number (`SELECT`, `t1`, `0`, `1e5`, `0x1F`).
    Word,
    /// `` `name` ``, or `"name"` under `ANSI_QUOTES`.
    QuotedIdent,
    /// `'text'`, or `"text"` without `ANSI_QUOTES`.
    String,
    /// `@name`, `@'name'`, `` @`name` ``: a user variable.
    UserVar,
    /// `@@name`, `@@session.name`, `@@global.name`: a system variable.
    SystemVar,
    /// `:=`, the assignment operator.
    Assign,
    /// `;`, the end of a statement.
    Semicolon,
    /// Any other single character: `(`, `)`, `,`, `.`, `=`, `?`, operators.
    Punct,
}

/// One token: its kind and its text as written (quotes included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Token<'a> {
    pub(crate) kind: TokenKind,
    pub(crate) text: &'a [u8],
}

impl Token<'_> {
    /// Whether this is the unquoted word `word` (ASCII, any case).
    pub(crate) fn is(&self, word: &str) -> bool {
        self.kind == TokenKind::Word && self.text.eq_ignore_ascii_case(word.as_bytes())
    }

    /// Whether this is the single character `c`.
    pub(crate) fn is_punct(&self, c: u8) -> bool {
        self.kind == TokenKind::Punct && self.text == [c]
    }

    /// Whether this is one of the unquoted words in `words`.
    pub(crate) fn is_any(&self, words: &[&str]) -> bool {
        self.kind == TokenKind::Word && words.iter().any(|w| self.is(w))
    }
}

/// The tokens of SQL text, comments skipped.
#[derive(Clone, Debug)]
pub(crate) struct Lexer<'a> {
    text: &'a [u8],
    pos: usize,
    mode: SqlMode,
    /// Inside an executable comment: its `*/` is skipped, not lexed.
    in_executable_comment: bool,
}

impl<'a> Lexer<'a> {
    pub(crate) fn new(text: &'a [u8], mode: SqlMode) -> Lexer<'a> {
        Lexer {
            text,
            pos: 0,
            mode,
            in_executable_comment: false,
        }
    }

    fn peek(&self, ahead: usize) -> Option<u8> {
        self.text.get(self.pos + ahead).copied()
    }

    /// Skips whitespace and comments; enters executable comments.
    fn skip_trivia(&mut self) {
        while let Some(b) = self.peek(0) {
            match b {
                b if b.is_ascii_whitespace() || b == 0 => self.pos += 1,
                b'#' => self.skip_line(),
                b'-' if self.peek(1) == Some(b'-')
                    && self
                        .peek(2)
                        .is_none_or(|c| c.is_ascii_whitespace() || c.is_ascii_control()) =>
                {
                    self.skip_line()
                }
                b'*' if self.in_executable_comment && self.peek(1) == Some(b'/') => {
                    self.in_executable_comment = false;
                    self.pos += 2;
                }
                b'/' if self.peek(1) == Some(b'*') => {
                    if let Some(code_start) = self.executable_comment_start() {
                        self.in_executable_comment = true;
                        self.pos = code_start;
                    } else {
                        self.skip_block_comment();
                    }
                }
                _ => return,
            }
        }
    }

    /// Where the code of an executable comment opening at `pos` starts: after `/*!` or
    /// `/*M!` and an optional version number of up to six digits.
    fn executable_comment_start(&self) -> Option<usize> {
        let after_bang = match (self.peek(2), self.peek(3)) {
            (Some(b'!'), _) => self.pos + 3,
            (Some(b'M'), Some(b'!')) => self.pos + 4,
            _ => return None,
        };
        let digits = self.text[after_bang..]
            .iter()
            .take(6)
            .take_while(|b| b.is_ascii_digit())
            .count();
        Some(after_bang + digits)
    }

    fn skip_line(&mut self) {
        match self.text[self.pos..].iter().position(|&b| b == b'\n') {
            Some(n) => self.pos += n + 1,
            None => self.pos = self.text.len(),
        }
    }

    fn skip_block_comment(&mut self) {
        let body = self.pos + 2;
        match self.text[body..].windows(2).position(|w| w == b"*/") {
            Some(n) => self.pos = body + n + 2,
            None => self.pos = self.text.len(),
        }
    }

    /// The end of a quoted run opened at `start` with `quote`: a doubled quote stands for
    /// itself, a backslash escapes the next byte when `escapes`.
    fn quoted_end(&self, start: usize, quote: u8, escapes: bool) -> usize {
        let mut i = start + 1;
        while let Some(&b) = self.text.get(i) {
            if escapes && b == b'\\' {
                i += 2;
            } else if b == quote {
                if self.text.get(i + 1) == Some(&quote) {
                    i += 2;
                } else {
                    return i + 1;
                }
            } else {
                i += 1;
            }
        }
        self.text.len()
    }

    /// The end of the word starting at `start`.
    fn word_end(&self, start: usize) -> usize {
        start
            + self.text[start..]
                .iter()
                .take_while(|&&b| is_word_byte(b))
                .count()
    }

    /// The end of a `@...` or `@@...` variable starting at `start`, and its kind.
    fn variable_end(&self, start: usize) -> (usize, TokenKind) {
        let system = self.text.get(start + 1) == Some(&b'@');
        let mut i = start + if system { 2 } else { 1 };
        loop {
            match self.text.get(i) {
                Some(&q @ (b'\'' | b'"' | b'`')) => {
                    let escapes = q != b'`' && !self.mode.no_backslash_escapes;
                    i = self.quoted_end(i, q, escapes);
                }
                Some(&b) if is_word_byte(b) => i = self.word_end(i),
                _ => break,
            }
            // `@@session.sql_mode`, `@@global.x`: the scope and the name are one token.
            if system
                && self.text.get(i) == Some(&b'.')
                && self
                    .text
                    .get(i + 1)
                    .is_some_and(|&b| is_word_byte(b) || b == b'`')
            {
                i += 1;
                continue;
            }
            break;
        }
        let kind = if system {
            TokenKind::SystemVar
        } else {
            TokenKind::UserVar
        };
        (i, kind)
    }
}

/// Bytes of an unquoted identifier, keyword or number.
fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        self.skip_trivia();
        let start = self.pos;
        let b = self.peek(0)?;
        let (end, kind) = match b {
            b'\'' => (
                self.quoted_end(start, b, !self.mode.no_backslash_escapes),
                TokenKind::String,
            ),
            b'"' if self.mode.ansi_quotes => {
                (self.quoted_end(start, b, false), TokenKind::QuotedIdent)
            }
            b'"' => (
                self.quoted_end(start, b, !self.mode.no_backslash_escapes),
                TokenKind::String,
            ),
            b'`' => (self.quoted_end(start, b, false), TokenKind::QuotedIdent),
            b'@' => self.variable_end(start),
            b':' if self.peek(1) == Some(b'=') => (start + 2, TokenKind::Assign),
            b';' => (start + 1, TokenKind::Semicolon),
            b if is_word_byte(b) => (self.word_end(start), TokenKind::Word),
            _ => (start + 1, TokenKind::Punct),
        };
        let end = end.min(self.text.len());
        self.pos = end;
        Some(Token {
            kind,
            text: &self.text[start..end],
        })
    }
}

/// The statements of `sql`, each as its tokens without the `;` that ends it; empty statements
/// (nothing between two `;`, or only comments) are left out. A stored program's body
/// (`CREATE PROCEDURE ... BEGIN ... END`, MariaDB's `BEGIN NOT ATOMIC ... END`) is not split
/// at the `;` inside it.
pub(crate) fn statements(sql: &[u8], mode: SqlMode) -> Vec<Vec<Token<'_>>> {
    let mut all = Vec::new();
    let mut current: Vec<Token<'_>> = Vec::new();
    let mut depth = 0usize;
    let mut compound = false;
    for token in Lexer::new(sql, mode) {
        if token.kind == TokenKind::Semicolon && depth == 0 {
            if !current.is_empty() {
                all.push(std::mem::take(&mut current));
            }
            compound = false;
            continue;
        }
        current.push(token);
        if compound {
            if token.kind == TokenKind::Word {
                depth = body_depth(depth, &current);
            }
        } else if current.len() <= COMPOUND_HEAD && has_compound_body(&current) {
            compound = true;
            depth = (1..=current.len()).fold(0, |d, n| body_depth(d, &current[..n]));
        }
    }
    if !current.is_empty() {
        all.push(current);
    }
    all
}

/// Tokens of a statement's start within which a stored program definition names its kind
/// (`CREATE OR REPLACE DEFINER = `u`@`%` PROCEDURE`).
const COMPOUND_HEAD: usize = 12;

/// Whether a statement starting with `head` has a body that may hold `;`: a stored program
/// definition or an anonymous compound statement.
fn has_compound_body(head: &[Token<'_>]) -> bool {
    match head {
        [first, second, ..] if first.is("BEGIN") => second.is("NOT"),
        [first, rest @ ..] if first.is("CREATE") => rest
            .iter()
            .any(|t| t.is_any(&["PROCEDURE", "FUNCTION", "TRIGGER", "EVENT", "PACKAGE"])),
        _ => false,
    }
}

/// The nesting depth of `BEGIN ... END` and `CASE ... END [CASE]` after the last token of
/// `tokens`, given the depth before it. `END IF`, `END LOOP`, `END WHILE`, `END REPEAT` and
/// `END FOR` close blocks that were not counted: their `END` is given back.
fn body_depth(depth: usize, tokens: &[Token<'_>]) -> usize {
    let Some((last, before)) = tokens.split_last() else {
        return depth;
    };
    let after_end = before.last().is_some_and(|t| t.is("END"));
    if last.is("BEGIN") || last.is("CASE") && !after_end {
        depth + 1
    } else if last.is("END") {
        depth.saturating_sub(1)
    } else if after_end && last.is_any(&["IF", "LOOP", "WHILE", "REPEAT", "FOR"]) {
        depth + 1
    } else {
        depth
    }
}

#[cfg(test)]
#[path = "lexer_tests.rs"]
mod tests;
