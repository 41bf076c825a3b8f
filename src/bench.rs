//! `resnetc bench`: warm-up, then timed runs until the median is stable
//! (at least 10 runs and 2 s, at most 1000 runs), reported as median, min,
//! spread, images per second and achieved GFLOP/s.

use crate::backend::cpu::Profile;
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
    /// batch / median: throughput at this batch size.
    pub images_per_s: f64,
    /// 2 × MACs × batch / median.
    pub gflops: f64,
    pub compile_ms: f64,
    /// `--target cuda`: the architecture the code was built for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu: Option<String>,
    /// `--target cuda`: the multiprocessors the plan was made for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sms: Option<u64>,
    /// With `--layers`: every parallel call, in schedule order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<LayerTime>,
}

/// The median time of one parallel call of the forward pass.
#[derive(Serialize, Debug, Clone)]
pub struct LayerTime {
    pub layer: String,
    pub median_ms: f64,
}

/// Runs `run` (which fills a profile) 20 times and takes each call's median.
pub fn profile(mut run: impl FnMut(&mut Profile)) -> Vec<LayerTime> {
    let mut samples: Vec<Vec<i64>> = Vec::new();
    let mut labels = Vec::new();
    for _ in 0..20 {
        let mut p = Profile::default();
        run(&mut p);
        labels = p.labels;
        samples.push(p.ns);
    }
    (0..labels.len())
        .map(|i| {
            let mut v: Vec<i64> = samples.iter().filter_map(|s| s.get(i).copied()).collect();
            v.sort_unstable();
            LayerTime {
                layer: labels[i].clone(),
                median_ms: v.get(v.len() / 2).copied().unwrap_or(0) as f64 / 1e6,
            }
        })
        .collect()
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
            "{} ({}, batch {}, {} thread(s)): median {:.3} ms, min {:.3} ms, spread {:.1}% over {} runs, {:.1} images/s, {:.1} GFLOP/s (compile {:.0} ms)\n",
            self.model,
            self.target,
            self.batch,
            self.threads,
            self.median_ms,
            self.min_ms,
            self.spread * 100.0,
            self.runs,
            self.images_per_s,
            self.gflops,
            self.compile_ms
        ) + &self.layers_text()
    }

    /// The per-call table, slowest first, with each call's share.
    fn layers_text(&self) -> String {
        let total: f64 = self.layers.iter().map(|l| l.median_ms).sum();
        let mut rows: Vec<&LayerTime> = self.layers.iter().collect();
        rows.sort_by(|a, b| b.median_ms.total_cmp(&a.median_ms));
        let mut out = String::new();
        if !rows.is_empty() {
            out.push_str(&format!(
                "{:>10} {:>6}  layer (sum of medians {total:.3} ms)\n",
                "ms", "share"
            ));
        }
        for l in rows {
            out.push_str(&format!(
                "{:>10.3} {:>5.1}%  {}\n",
                l.median_ms,
                100.0 * l.median_ms / total.max(1e-12),
                l.layer
            ));
        }
        out
    }
}
