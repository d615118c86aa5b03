//! The KServe v2 request decoder as the service runs it: the binary-extension split (the
//! first two bytes choose the Inference-Header-Content-Length, or none), the JSON envelope
//! and tensors under the service's limits, then each tensor against the digits model's
//! input spec (images, files and quantisation included) with its memory bound.
#![no_main]

use std::sync::OnceLock;

use beltbox::serve::kserve::{self, DecodeLimits};
use beltbox_core::manifest::{InputSpec, Manifest};
use beltbox_core::preprocess;
use libfuzzer_sys::fuzz_target;

fn spec() -> &'static InputSpec {
    static SPEC: OnceLock<InputSpec> = OnceLock::new();
    SPEC.get_or_init(|| {
        let text = include_str!("../../models/digits-int8-qdq/manifest.toml");
        let m = Manifest::parse(text, std::path::Path::new("manifest.toml"))
            .unwrap_or_else(|e| panic!("the bundled manifest must parse: {e}"));
        m.inputs[0].clone()
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (sel, body) = data.split_at(2);
    let n = u16::from_le_bytes([sel[0], sel[1]]) as usize;
    let header = (n != 0xffff).then(|| (n % (body.len() + 2)).to_string());
    let Ok((json, binary)) = kserve::split_body(body, header.as_deref()) else {
        return;
    };
    let limits = DecodeLimits {
        max_elements: 1 << 16,
        max_json_depth: 32,
    };
    let Ok(req) = kserve::decode_request(json, binary, &limits) else {
        return;
    };
    for t in req.inputs {
        let bound = preprocess::working_bytes(&t.shape, &t.data, spec());
        std::hint::black_box(bound);
        let _ = kserve::to_model_input(t, spec());
    }
});
