//! tract-bench MODEL.onnx C H W BATCH: loads the model with a fixed input
//! shape, optimizes it, runs twice to warm up, then times runs until it has
//! at least 10 and 2 s of them, and prints the median in ms. tract runs on
//! one thread.

use std::time::{Duration, Instant};
use tract_onnx::prelude::*;

fn main() -> TractResult<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        eprintln!("usage: tract-bench MODEL.onnx C H W BATCH");
        std::process::exit(2);
    }
    let dims: Vec<usize> = args[2..6].iter().map(|a| a.parse().expect("a number")).collect();
    let (c, h, w, n) = (dims[0], dims[1], dims[2], dims[3]);
    let model = tract_onnx::onnx()
        .model_for_path(&args[1])?
        .with_input_fact(0, f32::fact([n, c, h, w]).into())?
        .into_optimized()?
        .into_runnable()?;
    let input: Tensor = tract_ndarray::Array4::<f32>::from_shape_fn((n, c, h, w), |(a, b, y, x)| {
        ((a * 7 + b * 13 + y * 17 + x * 19) % 23) as f32 / 11.5 - 1.0
    })
    .into();
    for _ in 0..2 {
        model.run(tvec!(input.clone().into()))?;
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 1000 && (times.len() < 10 || start.elapsed() < Duration::from_secs(2)) {
        let t = Instant::now();
        model.run(tvec!(input.clone().into()))?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!("{:.3}", times[times.len() / 2]);
    Ok(())
}
