//! A streaming parser for SSE (`field: value` lines, events separated by a blank line) that
//! also reads JSON lines (a line starting with `{` is one event). Bytes arrive in arbitrary
//! pieces: lines, frames and UTF-8 sequences may be split across reads. Lines and frames are
//! bounded, so a hostile engine cannot make the adapter buffer without limit.

/// One event: its `id:` and `event:` name (if any), its `data` (lines joined by `\n`), and
/// an `error:` field, which llama.cpp's server uses for errors inside a stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
    pub error: Option<String>,
}

pub struct SseParser {
    buf: Vec<u8>,
    current: SseEvent,
    has_fields: bool,
    max_line: usize,
    max_frame: usize,
}

impl SseParser {
    pub fn new(max_line: usize, max_frame: usize) -> Self {
        Self {
            buf: Vec::new(),
            current: SseEvent::default(),
            has_fields: false,
            max_line,
            max_frame,
        }
    }

    /// Feeds bytes; returns the events they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(nl) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + nl;
            let line = &self.buf[start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.len() > self.max_line {
                return Err(format!(
                    "a line of {} bytes exceeds {}",
                    line.len(),
                    self.max_line
                ));
            }
            let line = std::str::from_utf8(line)
                .map_err(|e| format!("the engine sent invalid UTF-8: {e}"))?
                .to_owned();
            start = end + 1;
            if let Some(ev) = self.line(&line)? {
                out.push(ev);
            }
        }
        self.buf.drain(..start);
        if self.buf.len() > self.max_line {
            return Err(format!(
                "a line of more than {} bytes without a newline",
                self.max_line
            ));
        }
        Ok(out)
    }

    /// The stream ended: a last line without its newline, and an event without its blank
    /// line, still count.
    pub fn finish(&mut self) -> Result<Vec<SseEvent>, orchd_adapter_abi::AdapterError> {
        let mut out = Vec::new();
        let rest = std::mem::take(&mut self.buf);
        let protocol = |m: String| {
            orchd_adapter_abi::AdapterError::new(
                orchd_adapter_abi::ErrorKind::Protocol,
                orchd_adapter_abi::Phase::MidStream,
                m,
            )
        };
        if !rest.is_empty() {
            let line = String::from_utf8(rest)
                .map_err(|e| protocol(format!("the engine sent invalid UTF-8: {e}")))?;
            if let Some(ev) = self.line(line.trim_end_matches('\r')).map_err(protocol)? {
                out.push(ev);
            }
        }
        if self.has_fields {
            out.push(self.take());
        }
        Ok(out)
    }

    fn take(&mut self) -> SseEvent {
        self.has_fields = false;
        std::mem::take(&mut self.current)
    }

    fn line(&mut self, line: &str) -> Result<Option<SseEvent>, String> {
        if line.is_empty() {
            return Ok(self.has_fields.then(|| self.take()));
        }
        if line.starts_with(':') {
            return Ok(None); // a comment (keep-alive)
        }
        if line.starts_with('{') && !self.has_fields {
            // JSON lines: one event per line.
            return Ok(Some(SseEvent {
                data: line.to_owned(),
                ..SseEvent::default()
            }));
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_fields && !self.current.data.is_empty() {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
            }
            "event" => self.current.event = Some(value.to_owned()),
            "error" => self.current.error = Some(value.to_owned()),
            "id" => self.current.id = Some(value.to_owned()),
            _ => {} // retry and unknown fields are ignored
        }
        self.has_fields = true;
        if self.current.data.len() > self.max_frame {
            return Err(format!("an event of more than {} bytes", self.max_frame));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_pieces(input: &[u8], piece: usize) -> Vec<SseEvent> {
        let mut p = SseParser::new(1024, 4096);
        let mut out = Vec::new();
        for chunk in input.chunks(piece) {
            out.extend(p.push(chunk).unwrap());
        }
        out.extend(p.finish().unwrap());
        out
    }

    #[test]
    fn frames_and_utf8_split_anywhere_parse_the_same() {
        let input = "data: {\"content\":\"héllo ✓\"}\n\n: keep-alive\n\nevent: x\ndata: a\ndata: b\n\ndata: [DONE]\n\n"
            .as_bytes();
        let whole = parse_in_pieces(input, input.len());
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[0].data, "{\"content\":\"héllo ✓\"}");
        assert_eq!(whole[1].event.as_deref(), Some("x"));
        assert_eq!(whole[1].data, "a\nb");
        assert_eq!(whole[2].data, "[DONE]");
        for piece in 1..8 {
            assert_eq!(parse_in_pieces(input, piece), whole, "pieces of {piece}");
        }
    }

    #[test]
    fn crlf_no_space_json_lines_and_error_fields() {
        let evs = parse_in_pieces(
            b"data:{\"a\":1}\r\n\r\n{\"b\":2}\nerror: {\"code\":500}\n\n",
            3,
        );
        assert_eq!(evs[0].data, "{\"a\":1}");
        assert_eq!(evs[1].data, "{\"b\":2}");
        assert_eq!(evs[2].error.as_deref(), Some("{\"code\":500}"));
    }

    #[test]
    fn a_last_event_without_its_blank_line_counts() {
        let evs = parse_in_pieces(b"data: {\"x\":1}", 4);
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].data, "{\"x\":1}");
    }

    #[test]
    fn oversized_lines_frames_and_bad_utf8_are_errors() {
        let mut p = SseParser::new(16, 64);
        assert!(
            p.push(&[b'x'; 17]).is_err(),
            "a line without newline past the bound"
        );
        let mut p = SseParser::new(16, 64);
        assert!(p.push(b"data: 0123456789abcdef\n").is_err());
        let mut p = SseParser::new(1024, 20);
        assert!(p.push(b"data: 0123456789\ndata: 0123456789\n").is_err());
        let mut p = SseParser::new(1024, 1024);
        assert!(p.push(b"data: \xff\xfe\n\n").is_err());
    }
}
