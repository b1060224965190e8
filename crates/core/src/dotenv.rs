//! The dotenv parser behind `coffer secrets import`.
//!
//! [`parse`] turns the text of a `.env` file into `(NAME, value)` pairs, in file order. It is
//! all-or-nothing: on the first problem it returns a [`DotenvError`] and no pairs, so the
//! caller imports nothing. Names are returned as written; coffer's own naming rules (such as the
//! reserved `COFFER_` prefix) are checked later, by the caller.
//!
//! # The format
//!
//! The file is read line by line (lines end in `\n` or `\r\n`). Each line is one of:
//!
//! * **blank**: empty or only spaces and tabs; ignored.
//! * **a comment**: the first character that is not a space or tab is `#`; ignored.
//! * **an assignment**: `KEY=VALUE`, optionally prefixed by `export` and one or more spaces or
//!   tabs (`export KEY=VALUE`). Spaces and tabs are allowed before the key and around the `=`
//!   (`  KEY = VALUE`).
//!
//! Anything else is an error: a line without `=` is refused, as is a key that does not match
//! `[A-Za-z_][A-Za-z0-9_]*` (so `MY.KEY=…` or `MY-KEY=…` are errors). Keys are case-sensitive.
//! `export` is only a prefix when a key follows it, so `export=1` sets a variable named `export`.
//!
//! ## Values
//!
//! * **Unquoted** (`KEY=some value`): the rest of the line, with surrounding spaces and tabs
//!   removed. An inline comment starts at a `#` that follows a space or tab (`KEY=abc # note`
//!   gives `abc`, and `KEY= # note` gives the empty value); a `#` right after a non-blank
//!   character, or right after the `=`, is part of the value (`KEY=a#b` gives `a#b`,
//!   `KEY=#b` gives `#b`). Nothing else is special: backslashes and quotes in the middle of an
//!   unquoted value are kept as they are. `KEY=` sets the empty value.
//! * **Single-quoted** (`KEY='some value'`): taken literally, with no escapes at all. The value
//!   must end on the line where it starts.
//! * **Double-quoted** (`KEY="some value"`): the escapes `\n` (newline), `\r` (carriage
//!   return), `\t` (tab), `\\` (backslash), `\"` (double quote) and `\$` (dollar sign) are
//!   recognised. **Any other backslash sequence is an error** (including `\'`, `\0`, `\u…`, and a
//!   backslash at the end of a line); write `\\` for a literal backslash. The value may span
//!   several lines: a line break inside the quotes is kept as a newline.
//! * **Triple-double-quoted** (`KEY="""…"""`): a multi-line value, everything between the
//!   opening and the closing `"""`. If the opening `"""` is directly followed by a line break,
//!   that first line break is not part of the value; a line break before the closing `"""` is.
//!   Escapes work as in double quotes (so a `"""` inside the value must be written `\"""`).
//! * **Triple-single-quoted** (`KEY='''…'''`): like `"""`, but taken literally, without
//!   escapes; the value cannot contain `'''`.
//!
//! After the closing quote of a quoted value only spaces, tabs and a comment starting with
//! a space or tab then `#` may follow on that line (`KEY="abc" # note`); anything else is an
//! error. A quote that is never closed is an error naming the line where the value started.
//!
//! ## Dollar signs are never expanded
//!
//! `$VAR` and `${VAR}` are kept literally in every kind of value. coffer does not substitute
//! variables from the file or from its own environment: expansion in other dotenv tools has
//! leaked the importing process's environment into stored secrets. `\$` in double quotes is
//! accepted (and gives `$`) only so that files written for expanding tools keep their meaning.
//!
//! ## Other details
//!
//! * Windows line endings are accepted everywhere: `\r\n` counts as one line break, and inside
//!   multi-line values it becomes `\n`. A carriage return elsewhere is treated like a space
//!   where spaces are insignificant (line ends, around `=`); inside quotes it is kept.
//! * A UTF-8 byte-order mark at the very start of the input is ignored.
//! * Setting the same key twice in one file is an error, reported on the second line.
//! * A NUL character is passed through here; the caller's validation refuses it.
//!
//! ## Errors
//!
//! A [`DotenvError`] names the 1-based physical line (the first line of the file is line 1;
//! a multi-line value counts every line it covers) and describes the problem. It never
//! contains any part of a value, nor the text of a malformed line, since either may be a
//! secret; it may contain a key name, cut to 64 characters.

use std::collections::HashMap;

use zeroize::Zeroizing;

use crate::SecretValue;

/// Why a dotenv file was refused. `Display` gives `line N: description`; neither field ever
/// contains value text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct DotenvError {
    /// 1-based physical line of the input.
    pub line: usize,
    pub message: String,
}

/// Longest key name, in characters, quoted in an error message.
const MAX_KEY_IN_MESSAGE: usize = 64;

const SUPPORTED_ESCAPES: &str = r#"\n \r \t \\ \" \$"#;

/// Parses the text of a dotenv file; see the [module documentation](self) for the format.
///
/// Returns the assignments in file order, or the first error, in which case nothing is
/// returned.
pub fn parse(input: &str) -> Result<Vec<(String, SecretValue)>, DotenvError> {
    let input = input.strip_prefix('\u{feff}').unwrap_or(input);
    Parser {
        src: input.as_bytes(),
        pos: 0,
        line: 1,
    }
    .parse_file()
}

/// Space, tab, or a carriage return (which before `\n` ends a line, and elsewhere outside
/// quotes counts as a space).
fn is_blank(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r')
}

fn is_key_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_key_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// A key name as it may appear in an error message.
fn clip(key: &str) -> String {
    if key.chars().count() <= MAX_KEY_IN_MESSAGE {
        key.to_owned()
    } else {
        let mut s: String = key.chars().take(MAX_KEY_IN_MESSAGE).collect();
        s.push('…');
        s
    }
}

/// A cursor over the input. Every position where the parser cuts the input is next to an
/// ASCII byte, so the pieces stay valid UTF-8; values are copied byte for byte.
struct Parser<'a> {
    src: &'a [u8],
    pos: usize,
    /// 1-based line of `pos`.
    line: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn at_eol(&self) -> bool {
        matches!(self.peek(), None | Some(b'\n'))
    }

    fn skip_blanks(&mut self) {
        while self.peek().is_some_and(is_blank) {
            self.pos += 1;
        }
    }

    fn skip_to_eol(&mut self) {
        while !self.at_eol() {
            self.pos += 1;
        }
    }

    fn error(line: usize, message: impl Into<String>) -> DotenvError {
        DotenvError {
            line,
            message: message.into(),
        }
    }

    fn parse_file(mut self) -> Result<Vec<(String, SecretValue)>, DotenvError> {
        let mut out = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        while self.pos < self.src.len() {
            self.skip_blanks();
            match self.peek() {
                None | Some(b'\n') => {}
                Some(b'#') => self.skip_to_eol(),
                Some(_) => {
                    let line = self.line;
                    let key = self.parse_key()?;
                    if let Some(first) = seen.get(&key) {
                        return Err(Self::error(
                            line,
                            format!("{} is already set on line {first}", clip(&key)),
                        ));
                    }
                    let value = self.parse_value(&key)?;
                    seen.insert(key.clone(), line);
                    out.push((key, value));
                }
            }
            // Every branch above stops at the end of a line.
            if self.peek() == Some(b'\n') {
                self.pos += 1;
                self.line += 1;
            }
        }
        Ok(out)
    }

    /// Reads `[export ]KEY =` and returns `KEY`, leaving the cursor after the `=`.
    fn parse_key(&mut self) -> Result<String, DotenvError> {
        if self.src[self.pos..].starts_with(b"export") {
            let mut j = self.pos + "export".len();
            if matches!(self.src.get(j), Some(b' ' | b'\t')) {
                while matches!(self.src.get(j), Some(b' ' | b'\t')) {
                    j += 1;
                }
                if self.src.get(j).copied().is_some_and(is_key_start) {
                    self.pos = j;
                }
            }
        }
        let start = self.pos;
        if self.peek().is_some_and(is_key_start) {
            while self.peek().is_some_and(is_key_char) {
                self.pos += 1;
            }
        }
        let end = self.pos;
        self.skip_blanks();
        if end > start && self.peek() == Some(b'=') {
            self.pos += 1;
            // The key is ASCII: one byte, one char.
            return Ok(self.src[start..end]
                .iter()
                .map(|&b| char::from(b))
                .collect());
        }
        let has_equals = self.src[start..]
            .iter()
            .take_while(|&&b| b != b'\n')
            .any(|&b| b == b'=');
        let message = if !has_equals {
            "expected KEY=VALUE, but the line has no '='"
        } else if end == start && self.peek() == Some(b'=') {
            "missing variable name before '='"
        } else {
            "invalid variable name: it must start with a letter or '_' and contain only \
             letters, digits and '_'"
        };
        Err(Self::error(self.line, message))
    }

    /// Reads the value after `=`, leaving the cursor at the end of the (last) line.
    fn parse_value(&mut self, key: &str) -> Result<SecretValue, DotenvError> {
        let after_equals = self.pos;
        self.skip_blanks();
        let rest = &self.src[self.pos..];
        if rest.starts_with(b"\"\"\"") {
            self.parse_triple(key, b"\"\"\"", true)
        } else if rest.starts_with(b"'''") {
            self.parse_triple(key, b"'''", false)
        } else {
            match self.peek() {
                Some(b'"') => self.parse_double(key),
                Some(b'\'') => self.parse_single(key),
                _ => Ok(self.parse_unquoted(after_equals)),
            }
        }
    }

    fn parse_unquoted(&mut self, from: usize) -> SecretValue {
        let src = self.src;
        let mut end = from;
        while end < src.len() && src[end] != b'\n' {
            if src[end] == b'#' && end > from && is_blank(src[end - 1]) {
                break;
            }
            end += 1;
        }
        let mut start = from;
        let mut stop = end;
        while start < stop && is_blank(src[start]) {
            start += 1;
        }
        while stop > start && is_blank(src[stop - 1]) {
            stop -= 1;
        }
        self.pos = end;
        self.skip_to_eol();
        SecretValue::new(src[start..stop].to_vec())
    }

    fn parse_single(&mut self, key: &str) -> Result<SecretValue, DotenvError> {
        let open = self.pos + 1;
        let mut close = open;
        while close < self.src.len() && !matches!(self.src[close], b'\'' | b'\n') {
            close += 1;
        }
        if self.src.get(close) != Some(&b'\'') {
            return Err(Self::error(
                self.line,
                format!(
                    "unterminated single-quoted value of {}: single-quoted values must end on \
                     the line where they start (use \"\"\" or ''' for multi-line values)",
                    clip(key)
                ),
            ));
        }
        let value = SecretValue::new(self.src[open..close].to_vec());
        self.pos = close + 1;
        self.after_closing_quote(key)?;
        Ok(value)
    }

    fn parse_double(&mut self, key: &str) -> Result<SecretValue, DotenvError> {
        let start_line = self.line;
        let open = self.pos + 1;
        let mut close = open;
        loop {
            match self.src.get(close) {
                None => {
                    return Err(Self::error(
                        start_line,
                        format!("unterminated double-quoted value of {}", clip(key)),
                    ))
                }
                Some(b'\\') => close += 2,
                Some(b'"') => break,
                Some(_) => close += 1,
            }
        }
        let value = self.decode(key, open, close, true)?;
        self.pos = close + 1;
        self.after_closing_quote(key)?;
        Ok(value)
    }

    fn parse_triple(
        &mut self,
        key: &str,
        delimiter: &[u8],
        escapes: bool,
    ) -> Result<SecretValue, DotenvError> {
        let start_line = self.line;
        let mut open = self.pos + delimiter.len();
        if self.src[open..].starts_with(b"\r\n") {
            open += 2;
            self.line += 1;
        } else if self.src.get(open) == Some(&b'\n') {
            open += 1;
            self.line += 1;
        }
        let mut close = open;
        loop {
            if close >= self.src.len() {
                return Err(Self::error(
                    start_line,
                    format!(
                        "unterminated {}-quoted value of {}",
                        String::from_utf8_lossy(delimiter),
                        clip(key)
                    ),
                ));
            }
            if escapes && self.src[close] == b'\\' {
                close += 2;
            } else if self.src[close..].starts_with(delimiter) {
                break;
            } else {
                close += 1;
            }
        }
        let value = self.decode(key, open, close, escapes)?;
        self.pos = close + delimiter.len();
        self.after_closing_quote(key)?;
        Ok(value)
    }

    /// Decodes the quoted text `src[from..to]`, which contains no closing quote: applies the
    /// escapes (if `escapes`), turns `\r\n` into `\n`, and advances `self.line` past it.
    fn decode(
        &mut self,
        key: &str,
        from: usize,
        to: usize,
        escapes: bool,
    ) -> Result<SecretValue, DotenvError> {
        // The output is never longer than the input, so the buffer is never reallocated (which
        // would leave a copy behind), and it is wiped if decoding fails half-way.
        let mut out = Zeroizing::new(Vec::with_capacity(to - from));
        let mut i = from;
        while i < to {
            let b = self.src[i];
            match b {
                b'\\' if escapes => {
                    // The scanners skip the byte after a backslash, so `i + 1 < to`.
                    let decoded = match self.src.get(i + 1) {
                        Some(b'n') => b'\n',
                        Some(b'r') => b'\r',
                        Some(b't') => b'\t',
                        Some(b'\\') => b'\\',
                        Some(b'"') => b'"',
                        Some(b'$') => b'$',
                        _ => {
                            return Err(Self::error(
                                self.line,
                                format!(
                                    "unknown escape sequence in the value of {} (supported: \
                                     {SUPPORTED_ESCAPES}; write \\\\ for a backslash)",
                                    clip(key)
                                ),
                            ))
                        }
                    };
                    out.push(decoded);
                    i += 2;
                }
                b'\r' if self.src.get(i + 1) == Some(&b'\n') => i += 1,
                b'\n' => {
                    out.push(b'\n');
                    self.line += 1;
                    i += 1;
                }
                _ => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        Ok(SecretValue::new(std::mem::take(&mut *out)))
    }

    /// After a closing quote: blanks, then the end of the line or a ` # comment`.
    fn after_closing_quote(&mut self, key: &str) -> Result<(), DotenvError> {
        let before = self.pos;
        self.skip_blanks();
        match self.peek() {
            None | Some(b'\n') => Ok(()),
            Some(b'#') if self.pos > before => {
                self.skip_to_eol();
                Ok(())
            }
            Some(_) => Err(Self::error(
                self.line,
                format!(
                    "unexpected text after the closing quote of {}: only a comment (' # …') may \
                     follow",
                    clip(key)
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// Parses and returns the pairs as plain strings.
    fn ok(input: &str) -> Vec<(String, String)> {
        parse(input)
            .unwrap_or_else(|e| panic!("parse failed: {e}"))
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8(v.expose_bytes().to_vec()).unwrap()))
            .collect()
    }

    fn one(input: &str) -> String {
        let pairs = ok(input);
        assert_eq!(pairs.len(), 1, "expected one pair from {input:?}");
        pairs.into_iter().next().unwrap().1
    }

    fn err(input: &str) -> DotenvError {
        match parse(input) {
            Ok(pairs) => panic!("expected an error, got {} pairs", pairs.len()),
            Err(e) => e,
        }
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    // ---- lines, comments, keys ----

    #[test]
    fn empty_input() {
        assert!(ok("").is_empty());
        assert!(ok("\n\n\r\n  \t\n").is_empty());
    }

    #[test]
    fn blank_lines_and_comments_are_ignored() {
        let input = "# header\n\n   # indented comment\n\t#tab comment\nA=1\n   \n# A=2\nB=2\n#";
        assert_eq!(ok(input), pairs(&[("A", "1"), ("B", "2")]));
    }

    #[test]
    fn leading_whitespace_before_key() {
        assert_eq!(ok("   A=1\n\t\tB=2"), pairs(&[("A", "1"), ("B", "2")]));
    }

    #[test]
    fn order_is_preserved() {
        assert_eq!(
            ok("Z=1\nA=2\nM=3\n"),
            pairs(&[("Z", "1"), ("A", "2"), ("M", "3")])
        );
    }

    #[test]
    fn export_prefix() {
        assert_eq!(
            ok("export A=1\nexport    B=2\nexport\tC=3\n  export \t D = 4\n"),
            pairs(&[("A", "1"), ("B", "2"), ("C", "3"), ("D", "4")])
        );
    }

    #[test]
    fn export_without_a_following_key_is_itself_a_key() {
        assert_eq!(ok("export=1"), pairs(&[("export", "1")]));
        assert_eq!(ok("export = 1"), pairs(&[("export", "1")]));
        assert_eq!(ok("exportFOO=1"), pairs(&[("exportFOO", "1")]));
        assert_eq!(ok("export_FOO=1"), pairs(&[("export_FOO", "1")]));
        assert_eq!(ok("export export=1"), pairs(&[("export", "1")]));
    }

    #[test]
    fn export_without_assignment_is_an_error() {
        let e = err("A=1\nexport B\n");
        assert_eq!(e.line, 2);
        assert!(e.message.contains("no '='"), "{e}");
    }

    #[test]
    fn spaces_around_equals() {
        assert_eq!(
            ok("A = 1\nB\t=\t2\nC =3\nD= 4\nE  =  \n"),
            pairs(&[("A", "1"), ("B", "2"), ("C", "3"), ("D", "4"), ("E", "")])
        );
    }

    #[test]
    fn key_shapes() {
        assert_eq!(
            ok("_=1\n_a1=2\nabc=3\nA_B_9=4\n"),
            pairs(&[("_", "1"), ("_a1", "2"), ("abc", "3"), ("A_B_9", "4")])
        );
    }

    #[test]
    fn keys_are_case_sensitive() {
        assert_eq!(ok("a=1\nA=2"), pairs(&[("a", "1"), ("A", "2")]));
    }

    #[test]
    fn invalid_keys_are_errors() {
        for input in ["1A=b", "A.B=c", "A-B=c", "A B=c", "é=1", "$A=1", "\"A\"=1"] {
            let e = err(&format!("OK=1\n{input}\n"));
            assert_eq!(e.line, 2, "{input}");
            assert!(e.message.contains("invalid variable name"), "{input}: {e}");
        }
        let e = err("=x");
        assert_eq!(e.line, 1);
        assert!(e.message.contains("missing variable name"), "{e}");
    }

    #[test]
    fn missing_equals_names_the_line() {
        let e = err("A=1\n# comment\n\nJUSTAKEY\nB=2\n");
        assert_eq!(e.line, 4);
        assert!(e.message.contains("no '='"), "{e}");
        assert_eq!(err("A").line, 1);
        assert_eq!(err("A=1\r\nB=2\r\nnot an assignment\r\n").line, 3);
    }

    #[test]
    fn byte_order_mark_is_ignored() {
        assert_eq!(ok("\u{feff}A=1\n"), pairs(&[("A", "1")]));
    }

    // ---- unquoted values ----

    #[test]
    fn unquoted_values_are_trimmed() {
        assert_eq!(one("A=   hello world  \t"), "hello world");
    }

    #[test]
    fn empty_values() {
        assert_eq!(
            ok("A=\nB=   \nC=''\nD=\"\"\n"),
            pairs(&[("A", ""), ("B", ""), ("C", ""), ("D", "")])
        );
        assert_eq!(one("A="), "");
    }

    #[test]
    fn inline_comments() {
        assert_eq!(one("A=value # comment"), "value");
        assert_eq!(one("A=value\t# comment"), "value");
        assert_eq!(one("A=value #"), "value");
        assert_eq!(one("A= # only a comment"), "");
        assert_eq!(one("A = #c"), "");
    }

    #[test]
    fn hash_without_preceding_whitespace_is_part_of_the_value() {
        assert_eq!(one("A=a#b"), "a#b");
        assert_eq!(one("A=#b"), "#b");
        assert_eq!(one("A=a#b #c"), "a#b");
        assert_eq!(one("A=color:#fff"), "color:#fff");
    }

    #[test]
    fn unquoted_values_are_literal() {
        assert_eq!(one(r"A=a\nb\\c"), r"a\nb\\c");
        assert_eq!(one(r#"A=say "hi" it's"#), r#"say "hi" it's"#);
        assert_eq!(one("A=a = b"), "a = b");
    }

    // ---- single quotes ----

    #[test]
    fn single_quotes_are_literal() {
        assert_eq!(
            one(r#"A='a\nb \" \\ $HOME ${X} "x" # not a comment'"#),
            r#"a\nb \" \\ $HOME ${X} "x" # not a comment"#
        );
        assert_eq!(one("A='  padded  '"), "  padded  ");
    }

    #[test]
    fn single_quotes_with_trailing_comment() {
        assert_eq!(one("A='v' # comment"), "v");
        assert_eq!(one("A = 'v'   "), "v");
    }

    #[test]
    fn single_quotes_with_trailing_text_are_an_error() {
        for input in ["A='v'x", "A='v' x", "A='v'#c", "A='v''w'"] {
            let e = err(input);
            assert_eq!(e.line, 1, "{input}");
            assert!(
                e.message.contains("after the closing quote of A"),
                "{input}: {e}"
            );
        }
    }

    #[test]
    fn single_quotes_must_close_on_the_same_line() {
        let e = err("A=1\nB='abc\ndef'\n");
        assert_eq!(e.line, 2);
        assert!(
            e.message.contains("unterminated single-quoted value of B"),
            "{e}"
        );
        assert_eq!(err("A='abc").line, 1);
    }

    // ---- double quotes ----

    #[test]
    fn double_quotes_keep_whitespace_and_hashes() {
        assert_eq!(one("A=\"  a # b  \""), "  a # b  ");
        assert_eq!(one("A=\"v\" # comment"), "v");
        assert_eq!(one("A=\"it's\""), "it's");
    }

    #[test]
    fn every_escape() {
        assert_eq!(one(r#"A="\n""#), "\n");
        assert_eq!(one(r#"A="\r""#), "\r");
        assert_eq!(one(r#"A="\t""#), "\t");
        assert_eq!(one(r#"A="\\""#), "\\");
        assert_eq!(one(r#"A="\"""#), "\"");
        assert_eq!(one(r#"A="\$""#), "$");
        assert_eq!(one(r#"A="a\nb\rc\td\\e\"f\$g""#), "a\nb\rc\td\\e\"f$g");
        assert_eq!(one(r#"A="\\n""#), "\\n");
    }

    #[test]
    fn unknown_escapes_are_errors() {
        for esc in [r"\x", r"\0", r"\'", r"\u0041", r"\a", r"\ ", r"\#", r"\é"] {
            let e = err(&format!("A=\"abc{esc}def\""));
            assert_eq!(e.line, 1, "{esc}");
            assert!(
                e.message
                    .contains("unknown escape sequence in the value of A"),
                "{esc}: {e}"
            );
        }
        // A backslash before a line break is not a line continuation.
        let e = err("A=\"abc\\\ndef\"");
        assert!(e.message.contains("unknown escape"), "{e}");
    }

    #[test]
    fn unknown_escape_names_the_line_of_the_backslash() {
        let e = err("X=1\nA=\"line one\nline two\nbad \\q here\n\"\n");
        assert_eq!(e.line, 4);
        let e = err("A=\"\"\"\nfirst\nsecond \\z\n\"\"\"");
        assert_eq!(e.line, 3);
    }

    #[test]
    fn double_quoted_values_span_lines() {
        assert_eq!(
            one("A=\"line 1\nline 2\n\nline 4\""),
            "line 1\nline 2\n\nline 4"
        );
        assert_eq!(ok("A=\"x\ny\"\nB=2\n"), pairs(&[("A", "x\ny"), ("B", "2")]));
    }

    #[test]
    fn line_numbers_continue_after_multi_line_values() {
        let e = err("A=\"x\ny\nz\"\nB=1\nbroken\n");
        assert_eq!(e.line, 5);
        let e = err("A=\"\"\"\nx\ny\n\"\"\"\nbroken\n");
        assert_eq!(e.line, 5);
        let e = err("A='''x\ny'''\nbroken");
        assert_eq!(e.line, 3);
    }

    #[test]
    fn double_quotes_with_trailing_text_are_an_error() {
        let e = err("A=\"x\ny\" z");
        assert_eq!(e.line, 2);
        assert!(e.message.contains("after the closing quote of A"), "{e}");
        assert!(err("A=\"v\"\"w\"").message.contains("closing quote"));
    }

    #[test]
    fn unterminated_double_quote_names_the_opening_line() {
        let e = err("A=1\n\nB=\"abc\nmore\nC=3\n");
        assert_eq!(e.line, 3);
        assert!(
            e.message.contains("unterminated double-quoted value of B"),
            "{e}"
        );
        // An escaped quote does not close the value.
        assert_eq!(err("A=\"abc\\\"").line, 1);
        assert_eq!(err("A=\"abc\\").line, 1);
        assert_eq!(err("A=\"").line, 1);
    }

    // ---- triple quotes ----

    #[test]
    fn triple_double_quotes() {
        let input =
            "KEY=\"\"\"\n-----BEGIN KEY-----\nabc\"def\"\"ghi\n-----END KEY-----\n\"\"\"\nB=2";
        assert_eq!(
            ok(input),
            pairs(&[
                (
                    "KEY",
                    "-----BEGIN KEY-----\nabc\"def\"\"ghi\n-----END KEY-----\n"
                ),
                ("B", "2")
            ])
        );
    }

    #[test]
    fn triple_double_quotes_on_one_line_or_without_leading_newline() {
        assert_eq!(one("A=\"\"\"abc\"\"\""), "abc");
        assert_eq!(one("A=\"\"\"\"\"\""), "");
        assert_eq!(one("A=\"\"\"abc\ndef\"\"\" # comment"), "abc\ndef");
        // Only one leading line break is dropped.
        assert_eq!(one("A=\"\"\"\n\nx\"\"\""), "\nx");
        // Spaces before the line break are kept, so is the break.
        assert_eq!(one("A=\"\"\" \nx\"\"\""), " \nx");
    }

    #[test]
    fn triple_double_quotes_process_escapes() {
        assert_eq!(
            one("A=\"\"\"\na\\tb\\\\c\\$d\\\"\"\"e\n\"\"\""),
            "a\tb\\c$d\"\"\"e\n"
        );
    }

    #[test]
    fn triple_double_quotes_with_trailing_text_are_an_error() {
        let e = err("A=\"\"\"\nx\n\"\"\"y\n");
        assert_eq!(e.line, 3);
        assert!(e.message.contains("after the closing quote"), "{e}");
    }

    #[test]
    fn unterminated_triple_quotes_name_the_opening_line() {
        let e = err("A=1\nB=\"\"\"\nabc\n\"\"\nC=3\n");
        assert_eq!(e.line, 2);
        assert!(
            e.message.contains("unterminated \"\"\"-quoted value of B"),
            "{e}"
        );
        let e = err("A=1\nB='''\nabc\n");
        assert_eq!(e.line, 2);
        assert!(
            e.message.contains("unterminated '''-quoted value of B"),
            "{e}"
        );
    }

    #[test]
    fn triple_single_quotes_are_literal() {
        assert_eq!(
            one("A='''\nx\\ny \"$HOME\" 'q'\n'''"),
            "x\\ny \"$HOME\" 'q'\n"
        );
        assert_eq!(one("A='''one'''"), "one");
    }

    // ---- line endings ----

    #[test]
    fn crlf_input() {
        let input =
            "# c\r\nA=1\r\n\r\nexport B = two words \r\nC='x'\r\nD=\"y\" # c\r\nE=v # c\r\n";
        assert_eq!(
            ok(input),
            pairs(&[
                ("A", "1"),
                ("B", "two words"),
                ("C", "x"),
                ("D", "y"),
                ("E", "v")
            ])
        );
    }

    #[test]
    fn crlf_inside_multi_line_values_becomes_lf() {
        assert_eq!(one("A=\"a\r\nb\r\n\""), "a\nb\n");
        assert_eq!(one("A=\"\"\"\r\na\r\nb\r\n\"\"\"\r\n"), "a\nb\n");
        assert_eq!(one("A='''\r\na\r\nb'''"), "a\nb");
        // An escaped \r is kept.
        assert_eq!(one("A=\"a\\r\r\nb\""), "a\r\nb");
    }

    #[test]
    fn lone_carriage_return() {
        assert_eq!(one("A=value\r"), "value");
        assert_eq!(one("A=\"a\rb\""), "a\rb");
        assert_eq!(one("A='a\rb'"), "a\rb");
    }

    // ---- no expansion ----

    #[test]
    fn dollar_is_never_expanded() {
        let input = concat!(
            "A=$HOME\n",
            "B=${HOME}\n",
            "C=\"$HOME and ${HOME} and $PATH\"\n",
            "D='$HOME ${HOME}'\n",
            "E=\"\"\"\n${HOME}\n\"\"\"\n",
            "F=\"\\$HOME\"\n",
            "G=$A\n",
            "H=${A:-default}\n",
            "I=$(whoami)\n",
        );
        assert_eq!(
            ok(input),
            pairs(&[
                ("A", "$HOME"),
                ("B", "${HOME}"),
                ("C", "$HOME and ${HOME} and $PATH"),
                ("D", "$HOME ${HOME}"),
                ("E", "${HOME}\n"),
                ("F", "$HOME"),
                ("G", "$A"),
                ("H", "${A:-default}"),
                ("I", "$(whoami)"),
            ])
        );
    }

    // ---- duplicates, NUL, unicode ----

    #[test]
    fn duplicate_key_is_an_error_on_the_second_line() {
        let e = err("A=1\nB=2\n\nA=3\n");
        assert_eq!(e.line, 4);
        assert_eq!(e.message, "A is already set on line 1");
        let e = err("export A=1\nA=1\n");
        assert_eq!(e.message, "A is already set on line 1");
        let e = err("A=\"x\ny\"\nB=1\nB=2");
        assert_eq!(
            (e.line, e.message.as_str()),
            (4, "B is already set on line 3")
        );
    }

    #[test]
    fn nul_passes_through_but_is_not_an_escape() {
        assert_eq!(one("A=a\0b"), "a\0b");
        assert_eq!(one("A=\"a\0b\""), "a\0b");
        assert!(err(r#"A="a\0b""#).message.contains("unknown escape"));
    }

    #[test]
    fn unicode_values() {
        assert_eq!(one("A=héllo wörld ✓ 🔑"), "héllo wörld ✓ 🔑");
        assert_eq!(one("A=\"日本語\\n\""), "日本語\n");
        assert_eq!(one("A='\u{a0}x\u{a0}'"), "\u{a0}x\u{a0}");
    }

    #[test]
    fn an_error_after_valid_lines_returns_nothing() {
        assert!(parse("A=1\nB=2\nC=\"oops\n").is_err());
    }

    // ---- errors never show values ----

    #[test]
    fn error_messages_do_not_contain_values() {
        const SECRET: &str = "s3cr3tV4LUE";
        let inputs = [
            format!("A=\"{SECRET}"),
            format!("A='{SECRET}"),
            format!("A='{SECRET}\n'"),
            format!("A=\"\"\"{SECRET}\n"),
            format!("A='''{SECRET}\n"),
            format!("A=\"{SECRET}\\q\""),
            format!("A=\"\\q{SECRET}\""),
            format!("A=\"x\"{SECRET}"),
            format!("A='x' {SECRET}"),
            format!("A=\"\"\"x\"\"\"{SECRET}"),
            format!("A=1\nA={SECRET}"),
            SECRET.to_string(),
            format!("{SECRET} more words"),
            format!("bad.key={SECRET}"),
            format!("bad.{SECRET}=1"),
            format!("={SECRET}"),
        ];
        for input in &inputs {
            let e = err(input);
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains(SECRET), "{input:?} gave {shown}");
        }
    }

    #[test]
    fn long_key_names_are_clipped_in_errors() {
        let key = "K".repeat(200);
        let e = err(&format!("{key}=1\n{key}=2\n"));
        assert_eq!(e.line, 2);
        assert!(!e.message.contains(&key));
        assert!(e.message.contains(&"K".repeat(64)));
        assert!(!e.message.contains(&"K".repeat(65)));
        assert!(e.message.len() < 120, "{}", e.message);
    }

    #[test]
    fn display_format() {
        assert_eq!(
            err("A=1\nA=2").to_string(),
            "line 2: A is already set on line 1"
        );
    }

    // ---- properties ----

    #[derive(Debug, Clone, Copy)]
    enum Style {
        Double,
        Single,
        Unquoted,
        Triple,
    }

    fn escape_double(v: &str, escape_newlines: bool) -> String {
        let mut s = String::with_capacity(v.len());
        for c in v.chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '"' => s.push_str("\\\""),
                '\n' if escape_newlines => s.push_str("\\n"),
                '\r' => s.push_str("\\r"),
                c => s.push(c),
            }
        }
        s
    }

    fn unquoted_ok(v: &str) -> bool {
        let b = v.as_bytes();
        !v.contains(['\n', '\r'])
            && v.trim_matches([' ', '\t']) == v
            && !v.starts_with(['"', '\'', '#'])
            && !b.windows(2).any(|w| is_blank(w[0]) && w[1] == b'#')
    }

    /// Renders one assignment, falling back to double quotes where `style` cannot hold `v`.
    fn render_value(v: &str, style: Style) -> String {
        match style {
            Style::Single if !v.contains(['\'', '\n']) => format!("'{v}'"),
            Style::Unquoted if unquoted_ok(v) => v.to_owned(),
            // Raw newlines are kept; the line break after the opening quotes is dropped.
            Style::Triple => format!("\"\"\"\n{}\"\"\"", escape_double(v, false)),
            _ => format!("\"{}\"", escape_double(v, true)),
        }
    }

    /// Renders a dotenv file, with comments and blank lines in between.
    fn render(entries: &[(String, String, Style, bool)], crlf: bool) -> String {
        let mut out = String::from("# generated\n\n");
        for (i, (k, v, style, export)) in entries.iter().enumerate() {
            if *export {
                out.push_str("export ");
            }
            out.push_str(k);
            out.push_str(if i % 2 == 0 { "=" } else { " = " });
            out.push_str(&render_value(v, *style));
            if i % 3 == 0 {
                out.push_str(" # comment");
            }
            out.push('\n');
            if i % 4 == 1 {
                out.push_str("\n   # another comment\n");
            }
        }
        if crlf {
            out.replace('\n', "\r\n")
        } else {
            out
        }
    }

    fn value_strategy() -> impl Strategy<Value = String> {
        let special = prop::sample::select(vec![
            '"', '\'', '\\', '\n', '\r', '$', '#', ' ', '\t', '{', '}', '=', 'n', 't',
        ]);
        let any_char = any::<char>().prop_filter("no NUL", |c| *c != '\0');
        prop::collection::vec(prop_oneof![special, any_char], 0..40)
            .prop_map(|cs| cs.into_iter().collect())
    }

    fn style_strategy() -> impl Strategy<Value = Style> {
        prop_oneof![
            Just(Style::Double),
            Just(Style::Single),
            Just(Style::Unquoted),
            Just(Style::Triple)
        ]
    }

    fn entries_strategy(
        with_export: bool,
    ) -> impl Strategy<Value = Vec<(String, String, Style, bool)>> {
        prop::collection::btree_map(
            "[A-Za-z_][A-Za-z0-9_]{0,15}",
            (value_strategy(), style_strategy(), any::<bool>()),
            0..8,
        )
        .prop_map(move |m: BTreeMap<String, (String, Style, bool)>| {
            m.into_iter()
                .map(|(k, (v, s, e))| (k, v, s, e && with_export))
                .collect()
        })
    }

    fn check_round_trip(
        entries: &[(String, String, Style, bool)],
        crlf: bool,
    ) -> Result<(), TestCaseError> {
        let text = render(entries, crlf);
        let parsed = parse(&text).map_err(|e| TestCaseError::fail(format!("{e} in {text:?}")))?;
        prop_assert_eq!(parsed.len(), entries.len());
        for ((k, v), (ek, ev, _, _)) in parsed.iter().zip(entries) {
            prop_assert_eq!(k, ek);
            // With CRLF, raw line breaks inside """ are written as \r\n and must come back as
            // \n; the renderer escapes every \r in double quotes, so values are unchanged.
            prop_assert_eq!(v.expose_bytes(), ev.as_bytes(), "in {:?}", text);
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn round_trip(entries in entries_strategy(false)) {
            check_round_trip(&entries, false)?;
        }

        #[test]
        fn round_trip_with_export_and_crlf(entries in entries_strategy(true), crlf in any::<bool>()) {
            check_round_trip(&entries, crlf)?;
        }

        #[test]
        fn never_panics_on_printable_text(s in "\\PC*") {
            let _ = parse(&s);
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn never_panics_on_dotenv_like_text(
            s in "(export |[ \t]|[A-Za-z_]{1,3}|=|#|\"|\"\"\"|'|'''|\\\\[nrt$\"\\\\x]?|\\$|\r|\n|\r\n|\u{feff}|é){0,40}"
        ) {
            let _ = parse(&s);
        }

        #[test]
        fn error_lines_are_within_the_input(
            s in "([A-Za-z_ ]{0,3}|=|#|\"|\"\"\"|'|'''|\\\\.|\r|\n|\r\n|x){0,40}"
        ) {
            if let Err(e) = parse(&s) {
                let lines = s.lines().count();
                prop_assert!((1..=lines + 1).contains(&e.line), "line {} of {} in {:?}", e.line, lines, s);
            }
        }
    }
}
