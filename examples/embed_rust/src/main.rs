//! Runs the embedded CIFAR ResNet-20 on a float32 .npy input (e.g.
//! tests/fixtures/cifar_resnet20.input.npy) and prints one output per line.

mod model {
    include!(concat!(env!("OUT_DIR"), "/model.rs"));
}

/// The data of a float32, C-order, version 1.0 .npy file (what numpy writes
/// for such arrays); enough for this demo.
fn read_npy_f32(path: &str) -> Result<Vec<f32>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" || bytes[6] != 1 {
        return Err(format!("{path}: not a version 1.0 .npy file"));
    }
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = String::from_utf8_lossy(bytes.get(10..10 + header_len).ok_or("truncated header")?);
    if !header.contains("'<f4'") || header.contains("'fortran_order': True") {
        return Err(format!("{path}: expected little-endian float32 in C order"));
    }
    Ok(bytes[10 + header_len..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

fn main() {
    let path = std::env::args().nth(1).unwrap_or_else(|| {
        eprintln!("usage: embed_rust INPUT.npy");
        std::process::exit(2)
    });
    let input = read_npy_f32(&path).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1)
    });
    match model::forward(&input) {
        Ok(output) => {
            // The same run in a kept arena, twice: the same numbers.
            let mut runner = model::Runner::new();
            let mut again = vec![0f32; output.len()];
            for _ in 0..2 {
                if let Err(e) = runner.forward_into(&input, &mut again) {
                    eprintln!("Runner::forward_into failed: {e:?}");
                    std::process::exit(1)
                }
                if again != output {
                    eprintln!("Runner::forward_into differs from forward");
                    std::process::exit(1)
                }
            }
            eprintln!("{} image(s) of {:?} -> {:?} each", input.len() / model::INPUT_SIZE, model::INPUT_SHAPE, model::OUTPUT_SHAPE);
            for v in output {
                println!("{v}");
            }
        }
        Err(e) => {
            eprintln!("forward failed: {e:?}");
            std::process::exit(1)
        }
    }
}
