//! Benchmark reports: a readable table on stdout and `bench-results/<area>.json` as
//! `{"measures":[{"name","value","unit","baseline","ratio"}]}`, every baseline measured in the same run.

use std::path::PathBuf;

use serde::Serialize;

/// One measured figure and the same-run baseline it is judged against.
#[derive(Debug, Clone, Serialize)]
pub struct Measure {
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub baseline: f64,
    /// `value / baseline` (0 when the baseline is 0).
    pub ratio: f64,
}

impl Measure {
    pub fn new(name: &str, value: f64, unit: &str, baseline: f64) -> Self {
        Measure {
            name: name.to_string(),
            value,
            unit: unit.to_string(),
            baseline,
            ratio: if baseline == 0.0 {
                0.0
            } else {
                value / baseline
            },
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub measures: Vec<Measure>,
    #[serde(skip)]
    pub notes: Vec<String>,
}

impl Report {
    pub fn push(&mut self, m: Measure) {
        self.measures.push(m);
    }

    pub fn note(&mut self, s: impl Into<String>) {
        self.notes.push(s.into());
    }

    /// Prints the table and writes `bench-results/<area>.json` at the workspace root.
    pub fn finish(&self, area: &str) -> std::io::Result<PathBuf> {
        let w = self
            .measures
            .iter()
            .map(|m| m.name.len())
            .max()
            .unwrap_or(4)
            .max(4);
        println!("\n{area}");
        println!(
            "{:<w$}  {:>14}  {:<8}  {:>14}  {:>8}",
            "name", "value", "unit", "baseline", "ratio"
        );
        for m in &self.measures {
            println!(
                "{:<w$}  {:>14.3}  {:<8}  {:>14.3}  {:>8.3}",
                m.name, m.value, m.unit, m.baseline, m.ratio
            );
        }
        for n in &self.notes {
            println!("  note: {n}");
        }
        let dir = workspace_root().join("bench-results");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{area}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(self)?)?;
        println!("wrote {}", path.display());
        Ok(path)
    }
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ is inside the workspace")
        .to_path_buf()
}

/// Median of a sample (sorted copy).
pub fn median(xs: &[f64]) -> f64 {
    percentile(xs, 50.0)
}

/// Nearest-rank percentile of a sample.
pub fn percentile(xs: &[f64], p: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

/// Resident set size of this process, in MiB (from /proc/self/status VmRSS).
pub fn rss_mb() -> f64 {
    rss_mb_of("self")
}

/// Resident set size of `pid` ("self" for this process), in MiB.
pub fn rss_mb_of(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&xs, 50.0), 50.0);
        assert_eq!(percentile(&xs, 99.0), 99.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    }

    #[test]
    fn ratio_is_value_over_baseline() {
        let m = Measure::new("x", 50.0, "ns", 100.0);
        assert_eq!(m.ratio, 0.5);
        assert_eq!(Measure::new("y", 1.0, "ns", 0.0).ratio, 0.0);
        let j = serde_json::to_value(Report {
            measures: vec![m],
            notes: vec![],
        })
        .unwrap();
        assert_eq!(j["measures"][0]["name"], "x");
        assert!(j.get("notes").is_none());
    }
}
