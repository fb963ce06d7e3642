//! Reading `text/event-stream` as the HTML standard's "event stream interpretation" defines
//! it (WHATWG HTML §9.2.6): lines end in CRLF, LF or CR; `:` starts a comment (the gateway's
//! heartbeat); `data` lines accumulate; a blank line dispatches; the last `id` seen is kept
//! for resuming with `Last-Event-ID`. Fed in arbitrary chunks, as they come off the network.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event {
    /// The last event id seen so far (the stream's, not only this event's).
    pub id: Option<String>,
    /// `event`, or `message` when the stream named none.
    pub event: String,
    /// The `data` lines joined with LF.
    pub data: String,
}

/// An incremental parser; keeps partial lines between chunks.
#[derive(Debug, Default)]
pub(crate) struct Parser {
    /// Bytes of a line not yet ended.
    line: Vec<u8>,
    /// The previous chunk ended in CR: an LF starting this one belongs to it.
    after_cr: bool,
    /// Before the first line: a byte order mark is dropped there.
    started: bool,
    data: String,
    event: String,
    id: Option<String>,
}

impl Parser {
    /// Feeds a chunk; returns the events it completed, in order.
    pub(crate) fn feed(&mut self, chunk: &[u8]) -> Vec<Event> {
        let mut events = Vec::new();
        for &byte in chunk {
            if std::mem::take(&mut self.after_cr) && byte == b'\n' {
                continue;
            }
            match byte {
                b'\r' | b'\n' => {
                    self.after_cr = byte == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(event) = self.line_ended(&line) {
                        events.push(event);
                    }
                }
                _ => self.line.push(byte),
            }
        }
        events
    }

    fn line_ended(&mut self, raw: &[u8]) -> Option<Event> {
        let mut line = String::from_utf8_lossy(raw).into_owned();
        if !self.started {
            self.started = true;
            if let Some(rest) = line.strip_prefix('\u{feff}') {
                line = rest.to_owned();
            }
        }
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_str(), ""),
        };
        match field {
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "event" => value.clone_into(&mut self.event),
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            // `retry`: the client has its own backoff. Unknown fields are ignored.
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<Event> {
        let event = std::mem::take(&mut self.event);
        if self.data.is_empty() {
            return None;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop();
        Some(Event { id: self.id.clone(), event: if event.is_empty() { "message".to_owned() } else { event }, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(chunks: &[&[u8]]) -> Vec<Event> {
        let mut parser = Parser::default();
        chunks.iter().flat_map(|c| parser.feed(c)).collect()
    }

    fn ev(id: &str, event: &str, data: &str) -> Event {
        Event { id: Some(id.into()), event: event.into(), data: data.into() }
    }

    #[test]
    fn the_gateways_frames_with_heartbeats() {
        let stream = b": heartbeat\n\nid: 4\nevent: orders.misc\ndata: {\"order\":\"BX-1\"}\n\n: heartbeat\n\nid: 5\nevent: orders.misc\ndata: {\"a\":1}\ndata: {\"b\":2}\n\n";
        let want = vec![ev("4", "orders.misc", r#"{"order":"BX-1"}"#), ev("5", "orders.misc", "{\"a\":1}\n{\"b\":2}")];
        assert_eq!(all(&[stream]), want);
        // Cut anywhere, even between CR and LF, the same events come out.
        let crlf = String::from_utf8_lossy(stream).replace('\n', "\r\n");
        for cut in 0..crlf.len() {
            let (a, b) = crlf.as_bytes().split_at(cut);
            assert_eq!(all(&[a, b]), want, "cut at {cut}");
        }
    }

    #[test]
    fn spec_details() {
        // A BOM first, a lone CR as line end, a field without colon, no space after the colon,
        // no event name, an incomplete event at the end (never dispatched).
        let got = all(&["\u{feff}data\rdata:x\r\rid:7\ndata: y\n\ndata: lost".as_bytes()]);
        assert_eq!(
            got,
            vec![
                Event { id: None, event: "message".into(), data: "\nx".into() },
                Event { id: Some("7".into()), event: "message".into(), data: "y".into() },
            ]
        );
        // The id stays for later events; an event without data is not dispatched but resets
        // the name.
        let got = all(&[b"id: 9\nevent: a\n\nevent: b\ndata: z\n\n"]);
        assert_eq!(got, vec![ev("9", "b", "z")]);
    }
}
