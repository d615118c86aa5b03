//! `kserve::decoded_bound` is what the service reserves before it decodes a request body:
//! it must bound what `decode_request` really allocates, whatever the client wrote. Each
//! body here is an attack on that bound (large, cheap-to-write JSON that turns into many
//! small heap objects), measured with the counting allocator (installed for this test
//! binary alone) under the service's default limits.

use beltbox::serve::kserve::{self, DecodeLimits};
use beltbox_core::memory::alloc::{self, CountingAlloc};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// About 1 MB of JSON for each attack.
const TARGET: usize = 1 << 20;

fn repeat(item: &str) -> String {
    vec![item; TARGET / (item.len() + 1)].join(",")
}

/// Heap high-water mark above the current heap while decoding `body` (JSON part of
/// `json_len` bytes, the rest binary); whether the request decoded does not matter.
fn decode_peak(body: &[u8], json_len: Option<usize>) -> u64 {
    let limits = DecodeLimits {
        max_elements: 8 << 20,
        max_json_depth: 32,
    };
    let header = json_len.map(|n| n.to_string());
    alloc::peak_during(|| {
        if let Ok((json, binary)) = kserve::split_body(body, header.as_deref()) {
            let _ = std::hint::black_box(kserve::decode_request(json, binary, &limits));
        }
    }) as u64
}

#[test]
fn hostile_json_cannot_outgrow_the_decoders_reservation() {
    alloc::mark_installed();
    let zeros = repeat("0");
    let input = |dt: &str, n: usize, data: &str| {
        format!(r#"{{"name":"x","shape":[{n}],"datatype":"{dt}","data":[{data}]}}"#)
    };
    let n_zeros = TARGET / 2;
    let attacks: Vec<(&str, String)> = vec![
        // Parameters the service never reads, full of values.
        (
            "request_parameters_array",
            format!(
                r#"{{"parameters":{{"x":[{zeros}]}},"inputs":[{}]}}"#,
                input("FP32", 1, "0")
            ),
        ),
        (
            "input_parameters_objects",
            format!(
                r#"{{"inputs":[{{"name":"x","shape":[1],"datatype":"FP32","data":[0],"parameters":{{"y":[{}]}}}}]}}"#,
                repeat("{}")
            ),
        ),
        (
            "many_parameter_keys",
            format!(
                r#"{{"parameters":{{{}}},"inputs":[{}]}}"#,
                (0..TARGET / 12)
                    .map(|i| format!(r#""{i:07}":0"#))
                    .collect::<Vec<_>>()
                    .join(","),
                input("FP32", 1, "0")
            ),
        ),
        // Many small objects in the envelope.
        (
            "many_outputs",
            format!(
                r#"{{"inputs":[{}],"outputs":[{}]}}"#,
                input("FP32", 1, "0"),
                repeat(r#"{"name":""}"#)
            ),
        ),
        (
            "many_outputs_with_parameters",
            format!(
                r#"{{"inputs":[{}],"outputs":[{}]}}"#,
                input("FP32", 1, "0"),
                repeat(r#"{"name":"","parameters":{"binary_data":true}}"#)
            ),
        ),
        (
            "many_inputs",
            format!(
                r#"{{"inputs":[{}]}}"#,
                repeat(r#"{"name":"","shape":[],"datatype":""}"#)
            ),
        ),
        (
            "long_shape",
            format!(
                r#"{{"inputs":[{{"name":"x","shape":[{}],"datatype":"FP32","data":[0]}}]}}"#,
                repeat("1")
            ),
        ),
        (
            "long_id",
            format!(
                r#"{{"id":"{}","inputs":[{}]}}"#,
                "i".repeat(TARGET),
                input("FP32", 1, "0")
            ),
        ),
        // Tensor data at the widest element per byte of text.
        (
            "fp64_data",
            format!(r#"{{"inputs":[{}]}}"#, input("FP64", n_zeros, &zeros)),
        ),
        (
            "int64_data",
            format!(r#"{{"inputs":[{}]}}"#, input("INT64", n_zeros, &zeros)),
        ),
        (
            "uint8_data",
            format!(r#"{{"inputs":[{}]}}"#, input("UINT8", n_zeros, &zeros)),
        ),
        (
            "bytes_data",
            format!(
                r#"{{"inputs":[{}]}}"#,
                input("BYTES", n_zeros, &repeat(r#""""#))
            ),
        ),
        (
            "nested_data",
            format!(
                r#"{{"inputs":[{}]}}"#,
                input("FP64", n_zeros, &repeat("[[0]]"))
            ),
        ),
    ];
    let mut over = Vec::new();
    for (name, json) in &attacks {
        let body = json.as_bytes();
        let peak = decode_peak(body, None);
        let bound = kserve::decoded_bound(body.len() as u64, None);
        println!(
            "{name}: {} bytes, decoder peak {peak}, bound {bound}",
            body.len()
        );
        if peak > bound {
            over.push(format!("{name}: peak {peak} > bound {bound}"));
        }
    }
    // The binary extension: a JSON header, then the tensor's bytes, copied once.
    let data = vec![7u8; TARGET];
    let header = format!(
        r#"{{"inputs":[{{"name":"x","shape":[{}],"datatype":"UINT8","parameters":{{"binary_data_size":{}}}}}]}}"#,
        data.len(),
        data.len()
    );
    let body = [header.as_bytes(), &data].concat();
    let peak = decode_peak(&body, Some(header.len()));
    let bound = kserve::decoded_bound(body.len() as u64, Some(header.len() as u64));
    println!(
        "binary: {} bytes, decoder peak {peak}, bound {bound}",
        body.len()
    );
    if peak > bound {
        over.push(format!("binary: peak {peak} > bound {bound}"));
    }
    assert!(over.is_empty(), "decoded_bound is not a bound: {over:?}");
}
