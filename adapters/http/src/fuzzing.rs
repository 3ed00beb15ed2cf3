//! Fuzzing entry points for what adapters read from engines: the SSE / JSON-lines parser
//! fed in arbitrary pieces, and the chat decoder on every event it completes. Neither may
//! panic, hang or buffer past its bounds on any input.

use orchd_adapter_abi::Phase;

use crate::Decoder;
use crate::chat::ChatDecoder;
use crate::sse::SseParser;

const MAX_LINE: usize = 4096;
const MAX_FRAME: usize = 16 * 1024;

/// The first byte says where to split the rest into reads (as a socket might); every event
/// that completes goes through the chat decoder.
pub fn sse_stream(data: &[u8]) {
    let Some((&split, body)) = data.split_first() else {
        return;
    };
    let piece = usize::from(split).max(1);
    let mut parser = SseParser::new(MAX_LINE, MAX_FRAME);
    let mut decoder = ChatDecoder::new();
    let mut phase = Phase::BeforeFirstToken;
    for chunk in body.chunks(piece) {
        let Ok(events) = parser.push(chunk) else {
            return;
        };
        for ev in &events {
            assert!(ev.data.len() <= MAX_FRAME, "a frame past its bound");
            match decoder.on_data(ev, phase) {
                Ok(out) if !out.is_empty() => phase = Phase::MidStream,
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }
    if let Ok(events) = parser.finish() {
        for ev in &events {
            let _ = decoder.on_data(ev, phase);
        }
    }
    let _ = decoder.on_eof(phase);
}
