//! `resnetc bench`: warm-up, then timed runs until the median is stable
//! (at least 10 runs and 2 s, at most 1000 runs), reported as median, min,
//! spread and achieved GFLOP/s.

use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Serialize, Debug, Clone)]
pub struct BenchReport {
    pub model: String,
    pub target: String,
    pub batch: usize,
    pub threads: usize,
    pub runs: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    /// (p90 − p10) / median.
    pub spread: f64,
    /// 2 × MACs × batch / median.
    pub gflops: f64,
    pub compile_ms: f64,
}

/// Times `run` (which must do one whole forward pass).
pub fn measure(mut run: impl FnMut()) -> (usize, f64, f64, f64) {
    for _ in 0..2 {
        run();
    }
    let mut times: Vec<Duration> = Vec::new();
    let start = Instant::now();
    while times.len() < 1000 && (times.len() < 10 || start.elapsed() < Duration::from_secs(2)) {
        let t = Instant::now();
        run();
        times.push(t.elapsed());
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let q = |f: f64| ms(times[((times.len() - 1) as f64 * f).round() as usize]);
    let median = q(0.5);
    (
        times.len(),
        median,
        ms(times[0]),
        (q(0.9) - q(0.1)) / median,
    )
}

impl BenchReport {
    pub fn text(&self) -> String {
        format!(
            "{} ({}, batch {}, {} thread(s)): median {:.3} ms, min {:.3} ms, spread {:.1}% over {} runs, {:.1} GFLOP/s (compile {:.0} ms)\n",
            self.model,
            self.target,
            self.batch,
            self.threads,
            self.median_ms,
            self.min_ms,
            self.spread * 100.0,
            self.runs,
            self.gflops,
            self.compile_ms
        )
    }
}
