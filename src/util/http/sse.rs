//! Reading Server-Sent Events as a client (the chat CLI, `bench chat`, the
//! gateway reading its fleet): one decoder, by the WHATWG rules an OpenAI
//! stream needs. Lines end in LF, CRLF or CR; `data:` with or without the
//! one space after the colon; several `data` lines of one event joined with
//! LF; an event ends at a blank line; comments (`:`) and other fields are
//! skipped. Bytes are split on line ends, so a character cut between two
//! chunks arrives whole.

/// Feeds on a stream's bytes as they arrive; hands out each event's data.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buf: Vec<u8>,
    data: Option<String>,
    /// The last byte consumed was a CR (a following LF belongs to it).
    after_cr: bool,
}

impl SseDecoder {
    /// Adds bytes of the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The data of the next complete event, if the bytes so far hold one.
    pub fn next_data(&mut self) -> Option<String> {
        loop {
            match self.buf.first() {
                // Wait for the byte after a CR: it may be the LF of a CRLF.
                None => return None,
                Some(b'\n') if self.after_cr => {
                    self.buf.remove(0);
                }
                _ => {}
            }
            self.after_cr = false;
            let end = self.buf.iter().position(|&b| b == b'\n' || b == b'\r')?;
            self.after_cr = self.buf[end] == b'\r';
            let line: Vec<u8> = self.buf.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..end]);
            if line.is_empty() {
                if let Some(data) = self.data.take() {
                    return Some(data);
                }
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_ref(), ""),
            };
            if field == "data" {
                match &mut self.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => self.data = Some(value.to_string()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SseDecoder;

    fn all(chunks: &[&[u8]]) -> Vec<String> {
        let mut d = SseDecoder::default();
        let mut out = Vec::new();
        for c in chunks {
            d.push(c);
            while let Some(e) = d.next_data() {
                out.push(e);
            }
        }
        out
    }

    #[test]
    fn events_as_the_spec_reads_them() {
        assert_eq!(
            all(&[
                b"data: {\"a\":1}\n\ndata:{\"b\":",
                b"2}\r\n\r\n: comment\nevent: x\ndata: [DONE]\r\r"
            ]),
            ["{\"a\":1}", "{\"b\":2}", "[DONE]"]
        );
        assert_eq!(all(&[b"data: one\ndata:two\n\n"]), ["one\ntwo"]);
        assert_eq!(all(&[b"data: caf\xC3", b"\xA9\n\n"]), ["café"]);
        assert_eq!(
            all(&[b"data: x\r", b"\n", b"\r\n"]),
            ["x"],
            "a CRLF cut in two"
        );
        assert_eq!(
            all(&[b"data: open"]),
            Vec::<String>::new(),
            "no blank line yet"
        );
        assert_eq!(all(&[b"\n\nretry: 5\n\n"]), Vec::<String>::new());
    }
}
