//! Dependency-free SVG charts of one benchmark run.
//!
//! One SVG holds two panels: (a) throughput over time (seconds since the start against MB/s)
//! and (b) the latency percentile curve, whose x axis is the "nines" scale
//! `-log10(1 - q)` (0, 90, 99, 99.9, 99.99, 99.999 % are evenly spaced), so the tail is as wide
//! as the body. Points with NaN or infinite coordinates are dropped; a panel without points
//! says "no data".

use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;

const WIDTH: f64 = 800.0;
const TITLE_HEIGHT: f64 = 36.0;
const PANEL_HEIGHT: f64 = 300.0;
const MARGIN_LEFT: f64 = 80.0;
const MARGIN_RIGHT: f64 = 24.0;
const MARGIN_TOP: f64 = 30.0;
const MARGIN_BOTTOM: f64 = 48.0;
/// The nines axis always reaches at least 99.999 %.
const NINES_SHOWN: f64 = 5.0;
/// Points per nine sampled by [`percentile_curve`].
const CURVE_STEPS_PER_NINE: u32 = 20;
/// Coordinates are clamped to this magnitude so that ranges and ticks stay finite.
const MAGNITUDE_MAX: f64 = 1e300;
/// Latencies are shown in milliseconds once the largest reaches this many microseconds.
const MS_FROM_US: f64 = 10_000.0;

/// Writes a two-panel SVG chart to `path`.
///
/// `throughput` holds `(seconds since the start, MB/s)` points, `latency_percentiles` holds
/// `(percentile in percent, latency in µs)` points such as [`percentile_curve`] returns;
/// percentiles outside `0 <= p < 100` cannot be placed on the nines axis and are dropped, as
/// are points with NaN or infinite coordinates. Either slice may be empty: its panel then says
/// "no data". Only the file write can fail.
pub fn write_svg(
    path: &Path,
    title: &str,
    throughput: &[(f64, f64)],
    latency_percentiles: &[(f64, f64)],
) -> std::io::Result<()> {
    std::fs::write(path, render_svg(title, throughput, latency_percentiles))
}

/// Renders the chart [`write_svg`] writes, as a string.
pub fn render_svg(
    title: &str,
    throughput: &[(f64, f64)],
    latency_percentiles: &[(f64, f64)],
) -> String {
    let height = TITLE_HEIGHT + 2.0 * PANEL_HEIGHT;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"#,
        WIDTH / 2.0,
        escape_xml(title)
    );

    let throughput = finite_points(throughput.iter().copied());
    Panel {
        top: TITLE_HEIGHT,
        title: "Throughput over time",
        x_label: "seconds since start",
        y_label: "MB/s",
        x_axis: XAxis::Linear,
    }
    .render(&mut svg, &throughput);

    let latency = finite_points(
        latency_percentiles
            .iter()
            .filter_map(|&(p, v)| Some((nines(p)?, v))),
    );
    let in_ms = latency.iter().any(|&(_, v)| v >= MS_FROM_US);
    let (latency, y_label) = if in_ms {
        let scaled = latency.iter().map(|&(x, v)| (x, v / 1000.0)).collect();
        (scaled, "latency (ms)")
    } else {
        (latency, "latency (µs)")
    };
    Panel {
        top: TITLE_HEIGHT + PANEL_HEIGHT,
        title: "Latency by percentile",
        x_label: "percentile (%)",
        y_label,
        x_axis: XAxis::Nines,
    }
    .render(&mut svg, &latency);

    svg.push_str("</svg>\n");
    svg
}

/// The position of a percentile (in percent) on the nines axis: `-log10(1 - p / 100)`, so 0 for
/// 0 %, 1 for 90 %, 2 for 99 %, 3 for 99.9 %. `None` for NaN and anything outside `0 <= p < 100`.
pub fn nines(percentile: f64) -> Option<f64> {
    if !(0.0..100.0).contains(&percentile) {
        return None;
    }
    let x = -(1.0 - percentile / 100.0).log10();
    // -log10(1) is -0.0; normalise it so the axis starts at 0.
    x.is_finite().then_some(x.max(0.0))
}

/// Samples a latency histogram's percentile curve, evenly on the nines scale, from the
/// minimum (0 %) to 99.999 %: 20 points per nine, 101 in all.
///
/// Returns `(percentile in percent, value)` pairs in the histogram's unit (µs in this crate),
/// ordered by percentile and with non-decreasing values; empty for an empty histogram. Feed it
/// to [`write_svg`] as `latency_percentiles`.
pub fn percentile_curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let steps = NINES_SHOWN as u32 * CURVE_STEPS_PER_NINE;
    (0..=steps)
        .map(|i| {
            let quantile = 1.0 - 10f64.powf(-f64::from(i) / f64::from(CURVE_STEPS_PER_NINE));
            (quantile * 100.0, h.value_at_quantile(quantile) as f64)
        })
        .collect()
}

/// The throughput panel's points for a series of rates `interval_s` apart: each rate is placed
/// at the end of its interval, `(seconds since the start, rate)`.
pub fn series_points(series: &[f64], interval_s: f64) -> Vec<(f64, f64)> {
    series
        .iter()
        .enumerate()
        .map(|(i, &rate)| ((i + 1) as f64 * interval_s, rate))
        .collect()
}

/// Escapes the five XML special characters.
pub fn escape_xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters other than tab and newlines are not allowed in XML 1.0.
            c if c.is_control() && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

/// Keeps the points whose coordinates are both finite, clamped to [`MAGNITUDE_MAX`].
fn finite_points(points: impl Iterator<Item = (f64, f64)>) -> Vec<(f64, f64)> {
    points
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .map(|(x, y)| {
            (
                x.clamp(-MAGNITUDE_MAX, MAGNITUDE_MAX),
                y.clamp(-MAGNITUDE_MAX, MAGNITUDE_MAX),
            )
        })
        .collect()
}

#[derive(Debug, Clone, Copy)]
enum XAxis {
    Linear,
    Nines,
}

#[derive(Debug)]
struct Panel<'a> {
    top: f64,
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    x_axis: XAxis,
}

/// Tick positions over a range, and the range they cover.
#[derive(Debug)]
struct Ticks {
    lo: f64,
    hi: f64,
    values: Vec<f64>,
    decimals: usize,
}

impl Panel<'_> {
    fn render(&self, svg: &mut String, points: &[(f64, f64)]) {
        let (left, right) = (MARGIN_LEFT, WIDTH - MARGIN_RIGHT);
        let (top, bottom) = (
            self.top + MARGIN_TOP,
            self.top + PANEL_HEIGHT - MARGIN_BOTTOM,
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{:.1}" text-anchor="middle" font-size="14">{}</text>"#,
            WIDTH / 2.0,
            self.top + 20.0,
            escape_xml(self.title)
        );
        let _ = writeln!(
            svg,
            r##"<rect x="{left}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#444"/>"##,
            right - left,
            bottom - top
        );
        if points.is_empty() {
            let _ = writeln!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="16" fill="#888">no data</text>"##,
                (left + right) / 2.0,
                (top + bottom) / 2.0
            );
            return;
        }

        let (x_min, x_max) = bounds(points.iter().map(|p| p.0));
        let (y_min, y_max) = bounds(points.iter().map(|p| p.1));
        let x_ticks = match self.x_axis {
            XAxis::Linear => linear_ticks(x_min.min(0.0), x_max),
            XAxis::Nines => nines_ticks(x_max),
        };
        let y_ticks = linear_ticks(y_min.min(0.0), y_max);
        let px = |x: f64| left + (x - x_ticks.lo) / (x_ticks.hi - x_ticks.lo) * (right - left);
        let py = |y: f64| bottom - (y - y_ticks.lo) / (y_ticks.hi - y_ticks.lo) * (bottom - top);

        for &y in &y_ticks.values {
            let at = py(y);
            let _ = writeln!(
                svg,
                r##"<line x1="{left}" y1="{at:.1}" x2="{right}" y2="{at:.1}" stroke="#ddd"/>"##
            );
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                left - 6.0,
                at + 4.0,
                format_number(y, y_ticks.decimals)
            );
        }
        for &x in &x_ticks.values {
            let at = px(x);
            let label = match self.x_axis {
                XAxis::Linear => format_number(x, x_ticks.decimals),
                XAxis::Nines => nines_label(x),
            };
            let _ = writeln!(
                svg,
                r##"<line x1="{at:.1}" y1="{bottom:.1}" x2="{at:.1}" y2="{:.1}" stroke="#444"/>"##,
                bottom + 5.0
            );
            let _ = writeln!(
                svg,
                r#"<text x="{at:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                bottom + 18.0,
                escape_xml(&label)
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            (left + right) / 2.0,
            bottom + 38.0,
            escape_xml(self.x_label)
        );
        let (label_x, label_y) = (18.0, (top + bottom) / 2.0);
        let _ = writeln!(
            svg,
            r#"<text x="{label_x}" y="{label_y:.1}" text-anchor="middle" transform="rotate(-90 {label_x} {label_y:.1})">{}</text>"#,
            escape_xml(self.y_label)
        );

        let coordinates: Vec<String> = points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            svg,
            r##"<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{}"/>"##,
            coordinates.join(" ")
        );
        if let [(x, y)] = points {
            // A polyline of one point draws nothing: mark it.
            let _ = writeln!(
                svg,
                r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="#1f77b4"/>"##,
                px(*x),
                py(*y)
            );
        }
    }
}

/// The smallest and largest of some finite values (`(0, 0)` for none).
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values
        .fold(None, |acc: Option<(f64, f64)>, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
        .unwrap_or((0.0, 0.0))
}

/// About five "nice" ticks (1, 2 or 5 times a power of ten apart) covering `lo..=hi`.
fn linear_ticks(lo: f64, hi: f64) -> Ticks {
    let hi = if hi > lo { hi } else { lo + 1.0 };
    let raw_step = (hi - lo) / 5.0;
    let magnitude = 10f64.powf(raw_step.log10().floor());
    let normalised = raw_step / magnitude;
    let step = magnitude
        * if normalised <= 1.0 {
            1.0
        } else if normalised <= 2.0 {
            2.0
        } else if normalised <= 5.0 {
            5.0
        } else {
            10.0
        };
    let (nice_lo, nice_hi) = ((lo / step).floor() * step, (hi / step).ceil() * step);
    if !(step.is_finite() && step > 0.0 && nice_lo.is_finite() && nice_hi.is_finite()) {
        return Ticks {
            lo,
            hi,
            values: vec![lo, hi],
            decimals: 0,
        };
    }
    let count = ((nice_hi - nice_lo) / step).round().clamp(1.0, 100.0) as u32;
    Ticks {
        lo: nice_lo,
        hi: nice_hi,
        values: (0..=count).map(|i| nice_lo + f64::from(i) * step).collect(),
        decimals: if step >= 1.0 {
            0
        } else {
            (-step.log10()).ceil().clamp(0.0, 9.0) as usize
        },
    }
}

/// Whole nines from 0 to at least [`NINES_SHOWN`], further if the data goes further.
fn nines_ticks(x_max: f64) -> Ticks {
    // Tolerate rounding: 99.999 % sits at 5.000000000001 nines.
    let hi = (x_max - 1e-6).ceil().clamp(NINES_SHOWN, 30.0);
    let step = (hi / 10.0).ceil().max(1.0);
    let count = (hi / step).ceil() as u32;
    Ticks {
        lo: 0.0,
        hi: f64::from(count) * step,
        values: (0..=count).map(|i| f64::from(i) * step).collect(),
        decimals: 0,
    }
}

/// The percentile at a whole number of nines: "0", "90", "99", "99.9", ...
fn nines_label(nines: f64) -> String {
    match nines.round() as u32 {
        0 => "0".into(),
        1 => "90".into(),
        2 => "99".into(),
        n => format!("99.{}", "9".repeat(n as usize - 2)),
    }
}

fn format_number(value: f64, decimals: usize) -> String {
    if value != 0.0 && !(1e-4..1e7).contains(&value.abs()) {
        format!("{value:.1e}")
    } else {
        // Avoid "-0".
        let value = if value == 0.0 { 0.0 } else { value };
        format!("{value:.decimals$}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The number of points in each polyline of an SVG.
    fn polyline_points(svg: &str) -> Vec<usize> {
        svg.split("<polyline")
            .skip(1)
            .map(|rest| {
                let start = rest.find("points=\"").expect("points attribute") + 8;
                let end = rest[start..].find('"').expect("closing quote") + start;
                rest[start..end].split_whitespace().count()
            })
            .collect()
    }

    fn assert_well_formed(svg: &str) {
        assert!(svg.starts_with("<svg "), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
        assert_eq!(svg.matches("<svg").count(), 1);
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        // Every element opened with `<x ...` is self-closed or closed.
        for tag in ["text", "svg"] {
            assert_eq!(
                svg.matches(&format!("<{tag} ")).count(),
                svg.matches(&format!("</{tag}>")).count(),
                "{tag}"
            );
        }
    }

    #[test]
    fn draws_both_panels_with_every_point() {
        let throughput: Vec<(f64, f64)> = (1..=8)
            .map(|s| (f64::from(s), 480.0 + 3.0 * f64::from(s)))
            .collect();
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for v in 1..=10_000u64 {
            h.record(v).unwrap();
        }
        let curve = percentile_curve(&h);
        let svg = render_svg("produce <throughput> & \"tail\"", &throughput, &curve);
        assert_well_formed(&svg);
        assert_eq!(polyline_points(&svg), vec![8, curve.len()]);
        assert!(svg.contains("produce &lt;throughput&gt; &amp; &quot;tail&quot;"));
        for label in [
            ">90<",
            ">99<",
            ">99.9<",
            ">99.99<",
            ">99.999<",
            "MB/s",
            "latency (ms)",
        ] {
            assert!(svg.contains(label), "missing {label}");
        }
        assert!(!svg.contains("no data"));
    }

    #[test]
    fn empty_input_says_no_data() {
        let svg = render_svg("", &[], &[]);
        assert_well_formed(&svg);
        assert!(polyline_points(&svg).is_empty());
        assert_eq!(svg.matches("no data").count(), 2);
    }

    #[test]
    fn a_single_point_is_drawn_and_marked() {
        let svg = render_svg("one", &[(1.0, 5.0)], &[(50.0, 0.0)]);
        assert_well_formed(&svg);
        assert_eq!(polyline_points(&svg), vec![1, 1]);
        assert_eq!(svg.matches("<circle").count(), 2);
        assert!(svg.contains("latency (µs)"));
    }

    #[test]
    fn nan_and_infinite_points_are_dropped() {
        let throughput = [
            (0.0, f64::NAN),
            (1.0, 2.0),
            (f64::INFINITY, 3.0),
            (2.0, f64::NEG_INFINITY),
            (3.0, f64::MAX),
        ];
        let latency = [
            (f64::NAN, 1.0),
            (100.0, 5.0),
            (-1.0, 5.0),
            (99.0, f64::INFINITY),
            (50.0, 100.0),
            (99.9, 20_000.0),
        ];
        let svg = render_svg("odd", &throughput, &latency);
        assert_well_formed(&svg);
        assert_eq!(polyline_points(&svg), vec![2, 2]);
        assert!(svg.contains("latency (ms)"));
        let all_bad = render_svg("bad", &[(f64::NAN, f64::NAN)], &[(100.0, 1.0)]);
        assert_well_formed(&all_bad);
        assert_eq!(all_bad.matches("no data").count(), 2);
    }

    #[test]
    fn write_svg_writes_the_rendered_chart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.svg");
        write_svg(&path, "run", &[(1.0, 1.0), (2.0, 2.0)], &[]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, render_svg("run", &[(1.0, 1.0), (2.0, 2.0)], &[]));
    }

    #[test]
    fn nines_places_percentiles() {
        assert_eq!(nines(0.0), Some(0.0));
        for (p, n) in [(90.0, 1.0), (99.0, 2.0), (99.9, 3.0), (99.999, 5.0)] {
            let x = nines(p).unwrap();
            assert!((x - n).abs() < 1e-6, "{p} -> {x}");
        }
        assert_eq!(nines(100.0), None);
        assert_eq!(nines(-0.1), None);
        assert_eq!(nines(f64::NAN), None);
        assert_eq!(nines_label(0.0), "0");
        assert_eq!(nines_label(1.0), "90");
        assert_eq!(nines_label(2.0), "99");
        assert_eq!(nines_label(3.0), "99.9");
        assert_eq!(nines_label(4.0), "99.99");
    }

    #[test]
    fn percentile_curve_of_a_uniform_histogram() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for v in 1..=10_000u64 {
            h.record(v).unwrap();
        }
        let curve = percentile_curve(&h);
        assert_eq!(curve.len(), 101);
        // Uniform over 1..=10000: the value at p % is about 100 p.
        for &(p, v) in &curve {
            let expected = (p * 100.0).max(1.0);
            assert!((v - expected).abs() <= expected * 0.01 + 1.0, "p{p} = {v}");
        }
        let near = |p: f64| {
            curve
                .iter()
                .min_by(|a, b| (a.0 - p).abs().total_cmp(&(b.0 - p).abs()))
                .map(|&(_, v)| v)
        };
        let p50 = near(50.0).unwrap();
        assert!((p50 - 5000.0).abs() <= 100.0, "p50 = {p50}");
        let p99 = near(99.0).unwrap();
        assert!((p99 - 9900.0).abs() <= 99.0, "p99 = {p99}");
        assert_eq!(curve[0], (0.0, 1.0));
        assert!((curve[curve.len() - 1].0 - 99.999).abs() < 1e-9);
        assert!(curve
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        assert!(percentile_curve(&Histogram::<u64>::new(3).unwrap()).is_empty());
    }

    #[test]
    fn series_points_end_each_interval() {
        assert_eq!(
            series_points(&[10.0, 12.0, 11.0], 0.5),
            vec![(0.5, 10.0), (1.0, 12.0), (1.5, 11.0)]
        );
        assert!(series_points(&[], 1.0).is_empty());
    }

    #[test]
    fn ticks_stay_finite_and_cover_the_range() {
        for (lo, hi) in [
            (0.0, 0.0),
            (0.0, 1e-9),
            (0.0, 1237.0),
            (-5.0, 5.0),
            (0.0, 1e300),
            (-1e300, 1e300),
        ] {
            let t = linear_ticks(lo, hi);
            assert!(t.lo <= lo && t.hi >= hi.max(lo), "{lo}..{hi}: {t:?}");
            assert!(t.values.iter().all(|v| v.is_finite()));
            assert!(t.values.len() >= 2 && t.values.len() <= 101);
        }
        let t = nines_ticks(5.0000001);
        assert_eq!(t.values, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    }
}
