//! The trend of a subnet's free /28s over earlier `prefixd capacity --json` reports: the
//! consumption rate (a least-squares line through every report's free slots against time,
//! the current one included) and the day it reaches zero at that rate.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::ReportError;

/// What a report keeps of each subnet for later trends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistorySubnet {
    /// The subnet id.
    pub id: String,
    /// Its free /28s then.
    pub free_slots: u32,
}

/// The part of a capacity report a trend reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryPoint {
    /// When the report was made (RFC 3339).
    pub generated_at: String,
    /// Its subnets.
    pub subnets: Vec<HistorySubnet>,
}

/// A subnet's trend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trend {
    /// Reports it is drawn from, the current one included.
    pub points: usize,
    /// Over how many days.
    pub span_days: f64,
    /// /28s consumed per day (negative when the subnet is freeing up).
    pub slots_per_day: f64,
    /// When the free /28s run out at that rate (RFC 3339 date), if they are being consumed.
    pub runs_out: Option<String>,
    /// Days until then.
    pub days_left: Option<f64>,
}

fn parse_time(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s).ok()
}

/// Reads every `*.json` capacity report in `dir`, oldest first. A file that is not one is an
/// error that names it.
pub fn read_history(dir: &Path) -> Result<Vec<(SystemTime, HistoryPoint)>, ReportError> {
    let file_err = |path: &Path, why: String| ReportError::File {
        path: path.display().to_string(),
        why,
    };
    let entries = std::fs::read_dir(dir).map_err(|e| file_err(dir, e.to_string()))?;
    let mut out = Vec::new();
    for e in entries {
        let path = e.map_err(|e| file_err(dir, e.to_string()))?.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| file_err(&path, e.to_string()))?;
        let de = &mut serde_json::Deserializer::from_str(&text);
        let point: HistoryPoint = serde_path_to_error::deserialize(de).map_err(|e| {
            file_err(
                &path,
                format!(
                    "not a `prefixd capacity --json` report: {}: {}",
                    e.path(),
                    e.inner()
                ),
            )
        })?;
        let t = parse_time(&point.generated_at).ok_or_else(|| {
            file_err(
                &path,
                format!(
                    "generated_at {:?} is not an RFC 3339 time",
                    point.generated_at
                ),
            )
        })?;
        out.push((t, point));
    }
    out.sort_by_key(|(t, _)| *t);
    Ok(out)
}

/// The trend of each subnet of `now_point` over `history` and `now_point` itself: for every
/// subnet with at least two points, spread over a positive time.
pub fn trends(
    history: &[(SystemTime, HistoryPoint)],
    now: SystemTime,
    now_point: &[HistorySubnet],
) -> BTreeMap<String, Trend> {
    let mut series: BTreeMap<&str, Vec<(SystemTime, u32)>> = BTreeMap::new();
    for (t, p) in history {
        for s in &p.subnets {
            series.entry(&s.id).or_default().push((*t, s.free_slots));
        }
    }
    let mut out = BTreeMap::new();
    for s in now_point {
        let mut pts = series.remove(s.id.as_str()).unwrap_or_default();
        pts.push((now, s.free_slots));
        if let Some(t) = fit_line(&pts, now, s.free_slots) {
            out.insert(s.id.clone(), t);
        }
    }
    out
}

const DAY: f64 = 86_400.0;

fn fit_line(pts: &[(SystemTime, u32)], now: SystemTime, free_now: u32) -> Option<Trend> {
    if pts.len() < 2 {
        return None;
    }
    let t0 = pts.iter().map(|(t, _)| *t).min()?;
    let xs: Vec<f64> = pts
        .iter()
        .map(|(t, _)| t.duration_since(t0).unwrap_or_default().as_secs_f64() / DAY)
        .collect();
    let ys: Vec<f64> = pts.iter().map(|(_, y)| f64::from(*y)).collect();
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let slope = sxy / sxx;
    let span = xs.iter().cloned().fold(f64::MIN, f64::max);
    let consumed = -slope;
    let (runs_out, days_left) = if consumed > 0.0 {
        let days = f64::from(free_now) / consumed;
        let at = now + Duration::from_secs_f64((days * DAY).min(1e11));
        let date = humantime::format_rfc3339_seconds(at).to_string();
        (Some(date[..10].to_owned()), Some(days))
    } else {
        (None, None)
    };
    Some(Trend {
        points: pts.len(),
        span_days: span,
        slots_per_day: consumed,
        runs_out,
        days_left,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        parse_time(s).unwrap()
    }

    fn point(s: &str, free: u32) -> (SystemTime, HistoryPoint) {
        (
            at(s),
            HistoryPoint {
                generated_at: s.into(),
                subnets: vec![HistorySubnet {
                    id: "subnet-1".into(),
                    free_slots: free,
                }],
            },
        )
    }

    #[test]
    fn a_steady_consumption_gives_its_rate_and_date() {
        let h = vec![
            point("2026-11-28T00:00:00Z", 120),
            point("2026-12-03T00:00:00Z", 110),
        ];
        let now = at("2026-12-08T00:00:00Z");
        let t = &trends(
            &h,
            now,
            &[HistorySubnet {
                id: "subnet-1".into(),
                free_slots: 100,
            }],
        )["subnet-1"];
        assert_eq!(t.points, 3);
        assert!((t.slots_per_day - 2.0).abs() < 1e-9, "{t:?}");
        assert_eq!(t.runs_out.as_deref(), Some("2027-01-27"));
        assert!((t.days_left.unwrap() - 50.0).abs() < 1e-9);
    }

    #[test]
    fn a_subnet_freeing_up_never_runs_out_and_one_point_is_no_trend() {
        let h = vec![point("2026-12-01T00:00:00Z", 50)];
        let now = at("2026-12-08T00:00:00Z");
        let cur = [HistorySubnet {
            id: "subnet-1".into(),
            free_slots: 60,
        }];
        let t = &trends(&h, now, &cur)["subnet-1"];
        assert!(t.slots_per_day < 0.0);
        assert_eq!(t.runs_out, None);
        assert!(trends(&[], now, &cur).is_empty());
    }

    #[test]
    fn a_file_that_is_not_a_report_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.json"),
            r#"{"generated_at":"2026-12-01T00:00:00Z","subnets":[]}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        assert_eq!(read_history(dir.path()).unwrap().len(), 1);
        std::fs::write(dir.path().join("b.json"), r#"{"subnets":[{"id":"x"}]}"#).unwrap();
        let e = read_history(dir.path()).unwrap_err().to_string();
        assert!(e.contains("b.json") && e.contains("capacity --json"), "{e}");
    }
}
