//! The event-stream decoder and the stream usage meters never panic, whatever the
//! bytes and however they are split into chunks, and splitting never changes the
//! result.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_filter::usage::StreamMeter;
use tollgate_wire::api::Operation;
use tollgate_wire::eventstream::Decoder;

fuzz_target!(|data: &[u8]| {
    let Some((&split_seed, bytes)) = data.split_first() else {
        return;
    };
    let split = if bytes.is_empty() { 0 } else { split_seed as usize % bytes.len() };

    let whole = decode_all(&[bytes]);
    let parts = decode_all(&[&bytes[..split], &bytes[split..]]);
    assert_eq!(whole, parts);

    for op in [Operation::ConverseStream, Operation::InvokeWithResponseStream] {
        let mut a = StreamMeter::new(op);
        a.push(bytes);
        let mut b = StreamMeter::new(op);
        b.push(&bytes[..split]);
        b.push(&bytes[split..]);
        assert_eq!(a.observation(), b.observation());
    }
});

fn decode_all(chunks: &[&[u8]]) -> Vec<Result<tollgate_wire::eventstream::Message, String>> {
    let mut d = Decoder::new();
    let mut out = Vec::new();
    for c in chunks {
        d.push(c);
        while let Some(m) = d.next_message() {
            out.push(m.map_err(|e| e.to_string()));
        }
    }
    out
}
