//! `qc eval --report`'s plots, drawn with plotters, each as SVG and PNG: SQNR per layer,
//! activation histograms with the quantization range marked, and the per-channel weight ranges of
//! the worst layers. PNG text uses DejaVu Sans, compiled in (`assets/fonts/`): no system fonts.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::layers::{Kind, LayerStat};
use super::table;

/// DejaVu Sans (Bitstream Vera licence: `assets/fonts/LICENSE-DejaVu.txt`).
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// Registers the font under the family plotters asks for; once per process.
fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TrueType font: the test of this module draws with them.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

const ACTIVATION: RGBColor = RGBColor(31, 119, 180);
const WEIGHT: RGBColor = RGBColor(255, 127, 14);
const CLIP: RGBColor = RGBColor(214, 39, 40);

/// One plot to draw.
pub enum Plot<'a> {
    /// SQNR of every row (worst first, as given).
    Sqnr { rows: &'a [LayerStat], bits: u8 },
    /// One activation's histogram with its range.
    Histogram(&'a LayerStat),
    /// One weight's per-channel float range against what its scales represent.
    Channels(&'a LayerStat),
}

/// A written plot: its file stem, caption and SVG text (the HTML inlines it).
pub struct Written {
    pub stem: String,
    pub caption: String,
    pub svg: String,
}

impl Plot<'_> {
    fn size(&self) -> (u32, u32) {
        match self {
            Plot::Sqnr { rows, .. } => (960, 110 + 26 * rows.len().max(1) as u32),
            Plot::Histogram(_) => (760, 380),
            Plot::Channels(_) => (960, 400),
        }
    }

    /// Draws on any backend.
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        match self {
            Plot::Sqnr { rows, bits } => sqnr(root, rows, *bits),
            Plot::Histogram(r) => histogram(root, r),
            Plot::Channels(r) => channels(root, r),
        }?;
        root.present().map_err(|e| e.to_string())
    }

    /// Writes `DIR/STEM.svg` and `DIR/STEM.png` (atomically).
    pub fn write(&self, dir: &Path, stem: &str, caption: String) -> Result<Written, String> {
        register_font();
        let (w, h) = self.size();
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
            self.draw(&root)?;
        }
        let mut rgb = vec![0u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
            self.draw(&root)?;
        }
        let png = encode_png(&rgb, w, h)?;
        for (ext, bytes) in [("svg", svg.as_bytes()), ("png", png.as_slice())] {
            let path = dir.join(format!("{stem}.{ext}"));
            qc_runtime::fsutil::write_atomic(&path, bytes)
                .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
        }
        Ok(Written {
            stem: stem.into(),
            caption,
            svg,
        })
    }
}

/// An RGB buffer as PNG bytes.
fn encode_png(rgb: &[u8], w: u32, h: u32) -> Result<Vec<u8>, String> {
    let mut out = vec![];
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(rgb).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

/// A file stem from a node name: `hist-layer1_0_conv1`.
pub fn stem(prefix: &str, node: &str) -> String {
    let clean: String = node
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{prefix}-{clean}")
}

fn sqnr<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, rows: &[LayerStat], bits: u8) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let finite_max = rows
        .iter()
        .map(|r| r.sqnr_db)
        .filter(|x| x.is_finite())
        .fold(10.0f64, f64::max);
    let xmax = (finite_max * 1.1 / 10.0).ceil() * 10.0;
    let xmin = rows
        .iter()
        .map(|r| r.sqnr_db)
        .filter(|x| x.is_finite())
        .fold(0.0f64, f64::min);
    let names: Vec<String> = rows
        .iter()
        .map(|r| format!("{} ({})", r.node, table::kind(r.kind)))
        .collect();
    let label_width = names.iter().map(|n| n.len()).max().unwrap_or(10) as u32 * 8 + 10;
    let n = rows.len().max(1);
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!("SQNR per layer, float vs {bits}-bit (worst at the top)"),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(46)
        .y_label_area_size(label_width.min(420))
        .build_cartesian_2d(xmin..xmax, (0..n).into_segmented())
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("SQNR in dB (10·log10 of signal over quantization noise; higher is better)")
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) if *i < names.len() => names[names.len() - 1 - *i].clone(),
            _ => String::new(),
        })
        .disable_y_mesh()
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(e)?;
    for (kind, color, label) in [
        (Kind::Activation, ACTIVATION, "activation"),
        (Kind::Weight, WEIGHT, "weight"),
    ] {
        chart
            .draw_series(rows.iter().enumerate().filter(|(_, r)| r.kind == kind).map(|(k, r)| {
                // The worst row at the top: plotters counts segments from the bottom.
                let i = n - 1 - k;
                let v = if r.sqnr_db.is_finite() { r.sqnr_db } else { xmax };
                let mut bar = Rectangle::new(
                    [(0.0, SegmentValue::Exact(i)), (v, SegmentValue::Exact(i + 1))],
                    color.filled(),
                );
                bar.set_margin(3, 3, 0, 0);
                bar
            }))
            .map_err(e)?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    Ok(())
}

fn histogram<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, r: &LayerStat) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let Some(h) = &r.histogram else { return Ok(()) };
    let width = (h.hi - h.lo) / h.counts.len() as f32;
    let ymax = h.counts.iter().copied().max().unwrap_or(1).max(1) as f64 * 2.0;
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!(
                "{}: float activation values, SQNR {}, {:.3}% clipped",
                r.node,
                table::db(r.sqnr_db),
                r.clipped * 100.0
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(46)
        .y_label_area_size(70)
        .build_cartesian_2d(h.lo..h.hi, (0.5f64..ymax).log_scale())
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc(format!("value of `{}` (float model, real units)", r.node))
        .y_desc("values per bin (log scale)")
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(e)?;
    let (lo, hi) = r.range;
    chart
        .draw_series(
            [(h.lo, lo.max(h.lo)), (hi.min(h.hi), h.hi)]
                .into_iter()
                .filter(|(a, b)| b > a)
                .map(|(a, b)| Rectangle::new([(a, 0.5), (b, ymax)], CLIP.mix(0.08).filled())),
        )
        .map_err(e)?;
    chart
        .draw_series(h.counts.iter().enumerate().filter(|(_, &c)| c > 0).map(|(i, &c)| {
            let x0 = h.lo + width * i as f32;
            Rectangle::new([(x0, 0.5), (x0 + width, c as f64)], ACTIVATION.filled())
        }))
        .map_err(e)?
        .label("float values")
        .legend(|(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], ACTIVATION.filled()));
    chart
        .draw_series(
            [lo, hi]
                .into_iter()
                .map(|x| PathElement::new(vec![(x, 0.5), (x, ymax)], CLIP.stroke_width(2))),
        )
        .map_err(e)?
        .label(format!("quantization range {} ({})", table::range(r.range), r.scheme))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], CLIP.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    Ok(())
}

fn channels<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, r: &LayerStat) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let (Some(ch), Some(q)) = (&r.channels, &r.channel_ranges) else {
        return Ok(());
    };
    let n = ch.len();
    let lo = ch
        .iter()
        .map(|c| c.0)
        .chain(q.iter().map(|c| c.0))
        .fold(0.0f32, f32::min);
    let hi = ch
        .iter()
        .map(|c| c.1)
        .chain(q.iter().map(|c| c.1))
        .fold(0.0f32, f32::max);
    let pad = (hi - lo).max(1e-6) * 0.05;
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!(
                "{}: weight range per output channel, SQNR {}",
                r.node,
                table::db(r.sqnr_db)
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(46)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f32..n as f32 - 0.5, lo - pad..hi + pad)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("output channel")
        .y_desc("weight value (batch norm folded)")
        .x_label_formatter(&|x| format!("{}", x.round() as i64))
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(e)?;
    chart
        .draw_series(ch.iter().enumerate().map(|(i, &(a, b))| {
            let x = i as f32;
            Rectangle::new([(x - 0.3, a), (x + 0.3, b)], WEIGHT.filled())
        }))
        .map_err(e)?
        .label("float weights: min to max")
        .legend(|(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], WEIGHT.filled()));
    chart
        .draw_series(q.iter().enumerate().flat_map(|(i, &(a, b))| {
            let x = i as f32;
            [a, b].map(|y| PathElement::new(vec![(x - 0.45, y), (x + 0.45, y)], CLIP.stroke_width(2)))
        }))
        .map_err(e)?
        .label(format!("range the channel's scale represents ({})", r.scheme))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], CLIP.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    Ok(())
}
