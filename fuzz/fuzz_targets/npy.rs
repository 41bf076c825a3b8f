//! Any bytes as a .npy file: a tensor or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = resnetc::weights::parse_npy(data, "fuzz.npy") {
        assert_eq!(t.shape.iter().product::<usize>(), t.data.len());
        let _ = resnetc::weights::check_input_shape(&t, &[3, 32, 32], "fuzz.npy");
    }
});
