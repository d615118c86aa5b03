//! The message a spooled record travels in, the same for every sink (docs/offline.md,
//! "Payload schema"):
//!
//! ```json
//! {"id":"BOX/results/EPOCH/42","box":"BOX","stream":"results","epoch":"EPOCH","seq":42,"record":{...}}
//! ```
//!
//! `id` is unique per record for the life of the box: the spool's epoch (`spool::EPOCH`)
//! changes when a spool is started afresh and its sequence numbers begin again. A receiver
//! drops a message whose `id` it has seen (delivery is at-least-once); within one epoch,
//! `seq` orders a box's records. `record` is the spooled payload as
//! written by the service (a JSON object); a payload that is not JSON (never written by
//! beltbox) travels as `record_b64` instead, so nothing is silently lost.

use base64::Engine as _;
use serde_json::value::RawValue;

/// One record's message.
pub fn encode(box_id: &str, stream: &str, epoch: &str, seq: u64, payload: &[u8]) -> Vec<u8> {
    let id = format!("{box_id}/{stream}/{epoch}/{seq}");
    let head = serde_json::json!({
        "id": id,
        "box": box_id,
        "stream": stream,
        "epoch": epoch,
        "seq": seq,
    });
    // `{...head fields...,"record":PAYLOAD}`: the payload is inserted as it is, unparsed
    // and unrebuilt (a kept frame is large).
    let mut out = serde_json::to_vec(&head).unwrap_or_else(|_| b"{}".to_vec());
    out.pop(); // the closing brace
    match std::str::from_utf8(payload)
        .ok()
        .and_then(|t| serde_json::from_str::<&RawValue>(t).ok())
    {
        Some(raw) => {
            out.extend_from_slice(br#","record":"#);
            out.extend_from_slice(raw.get().as_bytes());
        }
        None => {
            out.extend_from_slice(br#","record_b64":""#);
            out.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(payload)
                    .as_bytes(),
            );
            out.push(b'"');
        }
    }
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn an_envelope_is_json_with_a_unique_id_and_the_record_inside() {
        let m = encode(
            "box-7",
            "results",
            "00ff",
            42,
            br#"{"model":"digits","top1":3}"#,
        );
        let v: Value = serde_json::from_slice(&m).unwrap();
        assert_eq!(v["id"], "box-7/results/00ff/42");
        assert_eq!(v["seq"], 42);
        assert_eq!(v["record"]["top1"], 3);
        let m = encode("b\"x", "inputs", "e", 1, b"\x00\xffnot json");
        let v: Value = serde_json::from_slice(&m).unwrap();
        assert_eq!(v["box"], "b\"x");
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(v["record_b64"].as_str().unwrap())
                .unwrap(),
            b"\x00\xffnot json"
        );
    }
}
