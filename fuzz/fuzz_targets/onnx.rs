//! Any bytes as an ONNX model: `resnetc import` gives a model that compiles
//! or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let opts = resnetc::import::LiftOptions::default();
    if let Ok(imp) = resnetc::import::import(data, "fuzz.onnx", "fuzz", &opts) {
        // `import` compiled the text already; it must compile again.
        assert!(resnetc::front::compile_source("fuzz.res", &imp.res, None).is_ok());
    }
});
