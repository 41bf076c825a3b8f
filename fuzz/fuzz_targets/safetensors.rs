//! Any bytes as a safetensors file: a weights map or an error, never a
//! panic or an out-of-bounds read; binding a parsed file never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use resnetc::weights::{bind, parse_safetensors, Role, WeightSpec};

fuzz_target!(|data: &[u8]| {
    if let Ok(w) = parse_safetensors(data, "fuzz.safetensors") {
        let specs = vec![
            WeightSpec { name: "conv1.weight".into(), shape: vec![4, 3, 3, 3], role: Role::ConvWeight },
            WeightSpec { name: "bn1.running_var".into(), shape: vec![4], role: Role::BnVar },
        ];
        let _ = bind(&specs, w, "fuzz.safetensors");
    }
});
