//! Plots, as SVG: HDR percentile curves of the latency runs (one plot per
//! load point, one line per system) and the slow-consumer time series.
//!
//! plotters runs without fonts here (no `ttf` or `ab_glyph` feature): the
//! SVG backend writes labels as `<text>` elements that the viewer renders,
//! and plotters only estimates their size for the layout.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::report::{Point, Row};

/// Line colours, by system (Confab first).
fn colour(system: &str, i: usize) -> RGBColor {
    match system {
        "confab" => RGBColor(0x1f, 0x5f, 0xbf),
        "nats" => RGBColor(0x2c, 0xa0, 0x2c),
        "redis" => RGBColor(0xd6, 0x27, 0x28),
        _ => {
            let (r, g, b) = Palette99::pick(i).to_rgba().rgb();
            RGBColor(r, g, b)
        }
    }
}

/// "Nines" of a percentile: 90 % -> 1, 99 % -> 2, 99.9 % -> 3.
fn nines(pct: f64) -> f64 {
    -(1.0 - pct / 100.0).max(1e-9).log10()
}

fn nines_label(x: f64) -> String {
    let pct = 100.0 * (1.0 - 10f64.powf(-x));
    let decimals = (x.ceil() as usize).saturating_sub(2);
    format!("{pct:.decimals$}%")
}

fn ms_label(ms: f64) -> String {
    if ms >= 1.0 {
        format!("{ms:.0}")
    } else if ms >= 0.1 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("plotting: {e}")
}

/// Writes one percentile plot per [`crate::report::PlotKey`] of `rows`
/// into `dir`, plus `slow.svg` for a slow-consumer series. Returns the
/// files written.
pub fn write_all(dir: &Path, rows: &[Row]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<(String, String)> = Vec::new();
    for r in rows {
        if let Some(k) = &r.plot {
            if !files.iter().any(|(f, _)| f == &k.file) {
                files.push((k.file.clone(), k.title.clone()));
            }
        }
    }
    let slow: Vec<&Row> = rows.iter().filter(|r| !r.series.is_empty()).collect();
    if files.is_empty() && slow.is_empty() {
        return Ok(Vec::new());
    }
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for (file, title) in files {
        let lines: Vec<(&str, &[[f64; 2]])> = rows
            .iter()
            .filter(|r| r.plot.as_ref().is_some_and(|k| k.file == file))
            .filter_map(|r| {
                let l = r.latency.as_ref()?;
                (!l.curve.is_empty()).then_some((r.system.as_str(), l.curve.as_slice()))
            })
            .collect();
        if lines.is_empty() {
            continue;
        }
        let path = dir.join(format!("{file}.svg"));
        percentiles(&path, &title, &lines)?;
        written.push(path);
    }
    if !slow.is_empty() {
        let runs: Vec<(String, &[Point])> = slow
            .iter()
            .map(|r| {
                let label = if r.params.contains("baseline") {
                    "all read"
                } else {
                    "1 never reads"
                };
                (format!("{} {label}", r.system), r.series.as_slice())
            })
            .collect();
        let path = dir.join("slow.svg");
        let title = format!("slow consumer: {}", slow[0].params);
        series(&path, &title, &runs)?;
        written.push(path);
    }
    Ok(written)
}

/// An HDR percentile plot: latency (log scale) against percentile on a
/// "nines" axis, one line per `(system, [percentile, us] points)`.
pub fn percentiles(path: &Path, title: &str, lines: &[(&str, &[[f64; 2]])]) -> anyhow::Result<()> {
    // The maximum is at 100 %: drawn one half-nine past the last percentile.
    let curve = |pts: &[[f64; 2]]| -> Vec<(f64, f64)> {
        let mut out: Vec<(f64, f64)> = pts
            .iter()
            .filter(|p| p[0] < 100.0)
            .map(|p| (nines(p[0]), (p[1] / 1000.0).max(1e-3)))
            .collect();
        if let (Some(&(x, _)), Some(max)) = (out.last(), pts.iter().find(|p| p[0] >= 100.0)) {
            out.push((x + 0.5, (max[1] / 1000.0).max(1e-3)));
        }
        out
    };
    let curves: Vec<(&str, Vec<(f64, f64)>)> = lines.iter().map(|(s, p)| (*s, curve(p))).collect();
    let all = curves.iter().flat_map(|(_, c)| c.iter());
    let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::MAX, 0.0f64);
    for &(x, y) in all {
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    let x_max = x_max.ceil();
    let y_min = 10f64.powf(y_min.max(1e-3).log10().floor());
    let y_max = 10f64.powf(y_max.max(y_min * 10.0).log10().ceil());
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .margin_right(48)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, (y_min..y_max).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("percentile (log scale of nines; the last point of each line is the maximum)")
        .y_desc("publish-to-deliver latency (ms, log scale)")
        .x_labels(x_max as usize + 1)
        .x_label_formatter(&|x| nines_label(*x))
        .y_label_formatter(&|y| ms_label(*y))
        .axis_desc_style(("sans-serif", 15))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    for (i, (system, pts)) in curves.into_iter().enumerate() {
        let c = colour(system, i);
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(err)?
            .label(system)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(2)));
    }
    // Lower right: the curves rise towards the upper right.
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Reads one figure of a point.
type Getter = fn(&Point) -> Option<f64>;

/// The slow-consumer series of one or more runs: the reading subscribers'
/// p50 and p99 per window (top) and the broker's RSS (bottom), against time.
pub fn series(path: &Path, title: &str, runs: &[(String, &[Point])]) -> anyhow::Result<()> {
    let points = || runs.iter().flat_map(|(_, p)| p.iter());
    let t_max = points().map(|p| p.t_s).fold(1.0, f64::max);
    let ms = |v: Option<f64>| v.map(|us| (us / 1000.0).max(1e-3));
    let lat_max = points().filter_map(|p| ms(p.p99_us)).fold(1.0f64, f64::max);
    let lat_min = points()
        .filter_map(|p| ms(p.p50_us))
        .fold(f64::MAX, f64::min)
        .min(lat_max / 10.0);
    let (y_min, y_max) = (
        10f64.powf(lat_min.max(1e-3).log10().floor()),
        10f64.powf(lat_max.log10().ceil()),
    );
    let rss_max = points().map(|p| p.rss_mib).fold(1.0f64, f64::max) * 1.15;
    let root = SVGBackend::new(path, (960, 760)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 18)).map_err(err)?;
    let (top, bottom) = root.split_vertically(470);
    let mut lat = ChartBuilder::on(&top)
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, (y_min..y_max).log_scale())
        .map_err(err)?;
    lat.configure_mesh()
        .x_desc("seconds (messages by intended send time)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc("readers' latency (ms, log scale)")
        .y_label_formatter(&|y| ms_label(*y))
        .axis_desc_style(("sans-serif", 15))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    let colours = [RGBColor(0xd6, 0x27, 0x28), RGBColor(0x1f, 0x5f, 0xbf)];
    for (i, (label, pts)) in runs.iter().enumerate() {
        let c = colours[i % colours.len()];
        let lines: [(&str, u32, Getter); 2] = [("p99", 2, |p| p.p99_us), ("p50", 1, |p| p.p50_us)];
        for (what, width, get) in lines {
            let xy: Vec<(f64, f64)> = pts
                .iter()
                .filter_map(|p| Some((p.t_s, ms(get(p))?)))
                .collect();
            lat.draw_series(LineSeries::new(xy, c.stroke_width(width)))
                .map_err(err)?
                .label(format!("{label}: {what}"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(width))
                });
        }
    }
    lat.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    let mut mem = ChartBuilder::on(&bottom)
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..rss_max)
        .map_err(err)?;
    mem.configure_mesh()
        .x_desc("seconds")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc("broker RSS (MiB)")
        .axis_desc_style(("sans-serif", 15))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    for (i, (label, pts)) in runs.iter().enumerate() {
        let c = colours[i % colours.len()];
        mem.draw_series(LineSeries::new(
            pts.iter().map(|p| (p.t_s, p.rss_mib)),
            c.stroke_width(2),
        ))
        .map_err(err)?
        .label(format!("{label}: broker RSS"))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(2)));
    }
    mem.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
