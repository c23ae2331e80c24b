//! An incremental Server-Sent-Events parser (the `text/event-stream` format of the WHATWG HTML
//! standard), as used by OpenAI-compatible streaming APIs.
//!
//! Feed it the body's byte chunks as they arrive — a chunk may end anywhere, in the middle of a
//! line, between `\r` and `\n`, or inside a multi-byte UTF-8 character — and it hands back the
//! `data` payload of every event completed so far. Multi-line data is joined with `\n`; comments
//! (`:` lines) and other fields (`event`, `id`, `retry`, unknown) are ignored. Lines may end with
//! `\n`, `\r\n` or a lone `\r`.

/// Incremental SSE parser. See the module docs.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of the line being received (no terminator yet).
    buf: Vec<u8>,
    /// How far `buf` has been searched for a terminator already.
    scanned: usize,
    /// The data of the event being built; `None` until its first `data` field.
    data: Option<String>,
    /// Whether the start of the stream has been checked for a UTF-8 byte-order mark.
    bom_checked: bool,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one chunk of the body; returns the data of each event it completed, in order.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        self.feed_into(chunk, &mut out);
        out
    }

    /// Like [`feed`](Self::feed), appending to `out`.
    pub fn feed_into(&mut self, chunk: &[u8], out: &mut Vec<String>) {
        self.buf.extend_from_slice(chunk);
        if !self.bom_checked {
            if self.buf.len() < BOM.len() && BOM.starts_with(&self.buf) {
                return; // could still become a BOM
            }
            if self.buf.starts_with(BOM) {
                self.buf.drain(..BOM.len());
            }
            self.bom_checked = true;
        }
        let mut start = 0;
        let mut i = self.scanned;
        while i < self.buf.len() {
            match self.buf[i] {
                b'\n' => {
                    self.line(start, i, out);
                    i += 1;
                    start = i;
                }
                b'\r' => {
                    if i + 1 == self.buf.len() {
                        break; // a `\n` may follow in the next chunk
                    }
                    self.line(start, i, out);
                    i += if self.buf[i + 1] == b'\n' { 2 } else { 1 };
                    start = i;
                }
                _ => i += 1,
            }
        }
        self.buf.drain(..start);
        self.scanned = i - start;
    }

    /// Ends the stream: a last line without a terminator is taken as complete, and an event
    /// still being built is returned (lenient: the standard would drop it, but a server that
    /// closes right after `data: [DONE]` loses nothing this way).
    pub fn finish(&mut self) -> Option<String> {
        let mut out = Vec::new();
        if !self.buf.is_empty() {
            let end = if self.buf.ends_with(b"\r") {
                self.buf.len() - 1
            } else {
                self.buf.len()
            };
            self.line(0, end, &mut out);
            self.buf.clear();
            self.scanned = 0;
        }
        if let Some(data) = self.data.take() {
            out.push(data);
        }
        out.pop()
    }

    /// Bytes held for an incomplete line plus the data of the event being built: lets a caller
    /// refuse an upstream that never ends its lines or events.
    pub fn pending_bytes(&self) -> usize {
        self.buf.len() + self.data.as_ref().map_or(0, String::len)
    }

    fn line(&mut self, start: usize, end: usize, out: &mut Vec<String>) {
        let line = &self.buf[start..end];
        if line.is_empty() {
            if let Some(data) = self.data.take() {
                out.push(data);
            }
            return;
        }
        if line[0] == b':' {
            return; // comment
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(p) => {
                let v = &line[p + 1..];
                (&line[..p], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &[][..]),
        };
        if field == b"data" {
            let value = String::from_utf8_lossy(value);
            match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(&value);
                }
                None => self.data = Some(value.into_owned()),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// Feeds `input` split at every given position, collecting all events (and `finish`).
    fn parse_split(input: &[u8], cuts: &[usize]) -> Vec<String> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        let mut prev = 0;
        for &c in cuts {
            out.extend(p.feed(&input[prev..c]));
            prev = c;
        }
        out.extend(p.feed(&input[prev..]));
        out.extend(p.finish());
        out
    }

    fn parse(input: &str) -> Vec<String> {
        parse_split(input.as_bytes(), &[])
    }

    /// Every way of cutting `input` into two and three chunks gives the same events.
    fn assert_all_splits(input: &str, expected: &[&str]) {
        let b = input.as_bytes();
        assert_eq!(parse(input), expected, "whole");
        for i in 0..=b.len() {
            assert_eq!(parse_split(b, &[i]), expected, "cut at {i}");
            for j in i..=b.len() {
                assert_eq!(parse_split(b, &[i, j]), expected, "cuts at {i}, {j}");
            }
        }
        // One byte at a time.
        let cuts: Vec<usize> = (1..b.len()).collect();
        assert_eq!(parse_split(b, &cuts), expected, "byte by byte");
    }

    #[test]
    fn single_event() {
        assert_all_splits("data: hello\n\n", &["hello"]);
    }

    #[test]
    fn several_events_in_one_chunk() {
        assert_eq!(
            parse("data: a\n\ndata: b\n\ndata: [DONE]\n\n"),
            ["a", "b", "[DONE]"]
        );
    }

    #[test]
    fn openai_stream_all_splits() {
        let input = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n\
                     : keep-alive\n\n\
                     data: {\"choices\":[{\"delta\":{\"content\":\" there\"}}]}\n\n\
                     data: [DONE]\n\n";
        assert_all_splits(
            input,
            &[
                "{\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}",
                "{\"choices\":[{\"delta\":{\"content\":\" there\"}}]}",
                "[DONE]",
            ],
        );
    }

    #[test]
    fn crlf_line_endings_all_splits() {
        assert_all_splits("data: a\r\n\r\ndata: b\r\n\r\n", &["a", "b"]);
    }

    #[test]
    fn lone_cr_line_endings_all_splits() {
        assert_all_splits("data: a\r\rdata: b\r\r", &["a", "b"]);
    }

    #[test]
    fn mixed_line_endings() {
        assert_all_splits("data: a\r\n\ndata: b\n\r\ndata: c\r\r\n", &["a", "b", "c"]);
    }

    #[test]
    fn multi_line_data_is_joined_with_newline() {
        assert_all_splits(
            "data: one\ndata: two\r\ndata:three\n\n",
            &["one\ntwo\nthree"],
        );
    }

    #[test]
    fn comments_and_other_fields_are_ignored() {
        assert_all_splits(
            ": comment\nevent: message\nid: 7\nretry: 1000\nfoo: bar\ndata: x\n\n",
            &["x"],
        );
        // An event with no data field is no event.
        assert_eq!(parse("event: ping\n\n: hi\n\n"), Vec::<String>::new());
    }

    #[test]
    fn field_syntax_details() {
        // Only one leading space is stripped; no colon means an empty value.
        assert_eq!(parse("data:  two spaces\n\n"), [" two spaces"]);
        assert_eq!(parse("data:nospace\n\n"), ["nospace"]);
        assert_eq!(parse("data\n\n"), [""]);
        assert_eq!(parse("data:\n\n"), [""]);
        assert_eq!(parse("data: a:b: c\n\n"), ["a:b: c"]);
        // `data` must be the whole field name.
        assert_eq!(parse("database: x\n\n"), Vec::<String>::new());
    }

    #[test]
    fn utf8_split_anywhere() {
        // "你好" is 3 bytes per character, "😀" 4 bytes: every cut lands somewhere inside them.
        assert_all_splits("data: 你好😀\n\ndata: é\n\n", &["你好😀", "é"]);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        let out = parse_split(b"data: a\xFFb\n\n", &[]);
        assert_eq!(out, ["a\u{FFFD}b"]);
    }

    #[test]
    fn byte_order_mark_is_skipped_even_when_split() {
        assert_all_splits("\u{FEFF}data: x\n\n", &["x"]);
        // Only at the very start.
        assert_eq!(parse("data: x\n\n\u{FEFF}data: y\n\n"), ["x"]);
    }

    #[test]
    fn incomplete_event_is_held_until_completed() {
        let mut p = SseParser::new();
        assert!(p.feed(b"data: par").is_empty());
        assert!(p.feed(b"tial\n").is_empty());
        assert!(p.pending_bytes() > 0);
        assert_eq!(p.feed(b"\n"), ["partial"]);
        assert_eq!(p.pending_bytes(), 0);
    }

    #[test]
    fn finish_flushes_an_unterminated_event() {
        let mut p = SseParser::new();
        assert!(p.feed(b"data: [DONE]").is_empty());
        assert_eq!(p.finish().as_deref(), Some("[DONE]"));
        let mut p = SseParser::new();
        assert!(p.feed(b"data: x\r").is_empty());
        assert_eq!(p.finish().as_deref(), Some("x"));
        let mut p = SseParser::new();
        assert_eq!(p.finish(), None);
    }

    #[test]
    fn long_line_in_many_chunks() {
        let payload = "x".repeat(10_000);
        let input = format!("data: {payload}\n\n");
        let cuts: Vec<usize> = (1..input.len()).step_by(7).collect();
        assert_eq!(parse_split(input.as_bytes(), &cuts), [payload]);
    }
}
