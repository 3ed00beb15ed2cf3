//! The plot in docs/BENCHMARKS.md: latency orchestratord adds to the first token, p50 and
//! p99, against concurrent streams (log scale).

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::suite::OverheadRow;

/// Draws added first-token latency (ms) vs streams into an SVG file.
pub fn overhead(rows: &[OverheadRow], path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let ms = |us: i64| us as f64 / 1000.0;
    let points = |f: fn(&OverheadRow) -> i64| -> Vec<(f64, f64)> {
        rows.iter()
            .map(|r| (r.concurrency as f64, ms(f(r))))
            .collect()
    };
    let p50 = points(|r| r.added_first_token_p50_us);
    let p99 = points(|r| r.added_first_token_p99_us);
    let max_x = rows
        .iter()
        .map(|r| r.concurrency)
        .max()
        .unwrap_or(1)
        .max(10) as f64
        * 2.0;
    let top = p50.iter().chain(&p99).map(|p| p.1).fold(1.0_f64, f64::max) * 1.2;
    let bottom = p50.iter().chain(&p99).map(|p| p.1).fold(0.0_f64, f64::min) * 1.2;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Added first-token latency through orchestratord",
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d((0.5_f64..max_x).log_scale(), bottom..top)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("concurrent streams")
        .y_desc("added latency (ms)")
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (series, label, color) in [(&p50, "p50", BLUE), (&p99, "p99", RED)] {
        chart
            .draw_series(LineSeries::new(
                series.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| anyhow!("{e}"))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        chart
            .draw_series(series.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
