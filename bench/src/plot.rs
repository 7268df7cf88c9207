//! The latency-distribution plot: latency (log scale) against percentile on
//! a "nines" axis (x = -log10(1 - q): 90 % at 1, 99 % at 2, 99.9 % at 3), one
//! panel per load mode, one line per scenario and path (proxy solid, direct
//! dashed, same colour). SVG only: text is emitted as SVG `<text>` and laid
//! out by the viewer, so no font library is needed.

use std::io;
use std::path::Path;

use plotters::prelude::*;

use crate::report::{Measurement, Via};

/// Where the x axis stops: 99.99 %.
const MAX_NINES: f64 = 4.0;

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

/// `(nines, latency µs)` points along a histogram of nanoseconds, up to the
/// last percentile its sample count can resolve.
pub fn curve(m: &Measurement) -> Vec<(f64, f64)> {
    let h = &m.histogram;
    if h.is_empty() {
        return Vec::new();
    }
    let top = (h.len() as f64).log10().min(MAX_NINES);
    let steps = 80;
    (0..=steps)
        .map(|i| {
            let x = top * i as f64 / steps as f64;
            // The last point is the maximum, as in the table (float
            // rounding of 1 - 10^-top could otherwise pick the sample below).
            let ns = if i == steps {
                h.max()
            } else {
                h.value_at_quantile(1.0 - 10f64.powf(-x))
            };
            let us = ns as f64 / 1000.0;
            (x, us.max(0.001))
        })
        .collect()
}

fn nines_label(x: &f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    let digits = (x.round() as i64 - 2).clamp(0, 4) as usize;
    format!("{p:.digits$}%")
}

/// Writes the SVG. `measurements` may mix modes and paths; scenarios keep
/// their colour across panels.
pub fn write_svg(path: &Path, measurements: &[Measurement]) -> io::Result<()> {
    draw(path, measurements).map_err(|e| io::Error::other(format!("plotting failed: {e}")))
}

fn draw(path: &Path, measurements: &[Measurement]) -> Result<(), Box<dyn std::error::Error>> {
    let mut scenarios: Vec<&str> = Vec::new();
    for m in measurements {
        if !scenarios.contains(&m.scenario.as_str()) {
            scenarios.push(&m.scenario);
        }
    }
    let modes = [
        ("fixed_rate", "fixed request rate (open loop)"),
        ("max_throughput", "maximum throughput (closed loop)"),
    ];
    let root = SVGBackend::new(path, (1400, 620)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        "ringmesh e2e latency distribution: proxy (solid) vs direct (dashed)",
        ("sans-serif", 20),
    )?;
    let panels = root.split_evenly((1, modes.len()));
    for (panel, (mode, title)) in panels.iter().zip(modes) {
        let series: Vec<(&Measurement, Vec<(f64, f64)>)> = measurements
            .iter()
            .filter(|m| m.mode == mode)
            .map(|m| (m, curve(m)))
            .filter(|(_, c)| !c.is_empty())
            .collect();
        if series.is_empty() {
            continue;
        }
        // The x axis goes as far as the best-resolved series (1000 samples
        // resolve 99.9 %, three nines).
        let nines = series
            .iter()
            .filter_map(|(_, c)| c.last().map(|&(x, _)| x))
            .fold(2f64, f64::max)
            .ceil();
        let (lo, hi) = series
            .iter()
            .flat_map(|(_, c)| c.iter().map(|&(_, y)| y))
            .fold((f64::MAX, f64::MIN), |(lo, hi), y| (lo.min(y), hi.max(y)));
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            // Room for the last x label ("99.99%"), centred on the edge.
            .margin_right(30)
            .x_label_area_size(40)
            .y_label_area_size(70)
            // Headroom above the lines for the legend.
            .build_cartesian_2d(0f64..nines, ((lo * 0.8)..(hi * 8.0)).log_scale())?;
        chart
            .configure_mesh()
            .x_labels(nines as usize + 1)
            .x_label_formatter(&nines_label)
            .y_label_formatter(&|y| format!("{y:.0}"))
            .x_desc("percentile")
            .y_desc("latency (µs, log)")
            .draw()?;
        for (m, points) in series {
            let i = scenarios.iter().position(|s| *s == m.scenario).unwrap_or(0);
            let color = PALETTE[i % PALETTE.len()];
            match m.via {
                Via::Proxy => {
                    chart
                        .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                        .label(format!("{} proxy", m.scenario))
                        .legend(move |(x, y)| {
                            PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
                        });
                }
                Via::Direct => {
                    chart
                        .draw_series(DashedLineSeries::new(points, 6, 4, color.stroke_width(1)))?
                        .label(format!("{} direct", m.scenario))
                        .legend(move |(x, y)| {
                            PathElement::new([(x, y), (x + 8, y)], color.stroke_width(1))
                        });
                }
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 12))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_labels() {
        assert_eq!(nines_label(&0.0), "0%");
        assert_eq!(nines_label(&1.0), "90%");
        assert_eq!(nines_label(&2.0), "99%");
        assert_eq!(nines_label(&3.0), "99.9%");
        assert_eq!(nines_label(&4.0), "99.99%");
    }
}
