//! `qc eval --report DIR`'s page: one self-contained `report.html` (CSS inline, every plot's SVG
//! inline) with the accuracy table, what the numbers mean, the per-layer table worst first and
//! the plots with captions.

use std::fmt::Write;

use super::accuracy::Score;
use super::layers::LayerStat;
use super::plots::Written;
use super::table;

/// What the page shows.
pub struct Page<'a> {
    pub model: &'a str,
    pub recipe: &'a str,
    pub data: &'a str,
    pub scores: &'a [Score],
    pub rows: &'a [LayerStat],
    pub bits: u8,
    pub notes: &'a [String],
    pub verdict: Option<&'a str>,
    pub plots: &'a [Written],
}

const STYLE: &str = "body{font-family:'DejaVu Sans',Verdana,sans-serif;margin:2em auto;max-width:1100px;color:#222;line-height:1.45}\
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd}\
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}th,td{padding:.3em .7em;border-bottom:1px solid #e4e4e4;text-align:right}\
th{background:#f4f4f4}td.l,th.l{text-align:left}tr.bad td{background:#fff1f0}code{background:#f4f4f4;padding:0 .25em}\
figure{margin:1.5em 0}figcaption{font-size:.92em;color:#444;margin-top:.3em}.note{color:#555;font-size:.92em}\
.verdict{background:#eef6ff;border-left:4px solid #1f77b4;padding:.6em 1em}svg{max-width:100%;height:auto}";

/// `<`, `>`, `&`, `"` escaped.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page's HTML.
pub fn render(p: &Page) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>qc eval: {m}</title><style>{STYLE}</style></head><body>\n<h1>Where accuracy goes: {m}</h1>\n<p class=\"note\">Recipe <code>{r}</code>, scored on {d}. Written by <code>qc eval</code> (qc {v}).</p>\n",
        m = escape(p.model),
        r = escape(p.recipe),
        d = escape(p.data),
        v = env!("CARGO_PKG_VERSION"),
    );
    h.push_str("<h2>Accuracy</h2>\n<table><tr><th class=\"l\">model</th><th>top-1</th>");
    let top5 = p.scores.iter().any(|s| s.top5.is_some());
    if top5 {
        h.push_str("<th>top-5</th>");
    }
    h.push_str("<th>vs FP32 (points)</th><th>latency per image</th><th>size</th><th class=\"l\">runs on</th></tr>\n");
    for s in p.scores {
        let _ = write!(
            h,
            "<tr><td class=\"l\">{}</td><td>{}</td>",
            escape(&s.name),
            table::percent(s.top1)
        );
        if top5 {
            let _ = write!(
                h,
                "<td>{}</td>",
                s.top5.map(table::percent).unwrap_or_else(|| "—".into())
            );
        }
        let _ = writeln!(
            h,
            "<td>{}</td><td>{}</td><td>{}</td><td class=\"l\">{}</td></tr>",
            table::gap(s, &p.scores[0]),
            table::latency(s),
            table::size(s),
            escape(&s.backend)
        );
    }
    h.push_str("</table>\n<p class=\"note\">Latency: median of 30 runs of one image (batch 1). Size: the model as a <code>.qmodel</code> file.</p>\n");
    if let Some(v) = p.verdict {
        let _ = writeln!(h, "<p class=\"verdict\">{}</p>", escape(v));
    }
    if !p.notes.is_empty() {
        h.push_str("<ul class=\"note\">");
        for n in p.notes {
            let _ = write!(h, "<li>{}</li>", escape(n));
        }
        h.push_str("</ul>\n");
    }
    let _ = write!(
        h,
        "<h2>Per layer, worst first</h2>\n<p>SQNR is <code>10·log10(Σx² / Σ(x − x̂)²)</code> between each value of the float model \
         (<code>x</code>, batch norms folded) and the same value in the {bits}-bit model (<code>x̂</code>, dequantized), over the \
         evaluation images; each 6 dB is about one bit of precision. <em>Clipped</em> is the share of float values outside the range \
         quantization chose (they saturate). Rows with an SQNR under 20 dB or more than 1% clipped are shaded.</p>\n\
         <table><tr><th class=\"l\">node</th><th class=\"l\">tensor</th><th>SQNR</th><th>range</th><th>clipped</th>\
         <th class=\"l\">quantization</th><th class=\"l\">decided by</th></tr>\n",
        bits = p.bits
    );
    for r in p.rows {
        let bad = r.sqnr_db < 20.0 || r.clipped > 0.01;
        let _ = writeln!(
            h,
            "<tr{}><td class=\"l\"><code>{}</code></td><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{:.3}%</td><td class=\"l\">{}</td><td class=\"l\">{}</td></tr>",
            if bad { " class=\"bad\"" } else { "" },
            escape(&r.node),
            table::kind(r.kind),
            table::db(r.sqnr_db),
            table::range(r.range),
            r.clipped * 100.0,
            escape(&r.scheme),
            escape(&r.decided_by)
        );
    }
    h.push_str("</table>\n<h2>Plots</h2>\n");
    for w in p.plots {
        let _ = writeln!(
            h,
            "<figure id=\"{id}\">{svg}<figcaption>{c} (<a href=\"{id}.svg\">SVG</a>, <a href=\"{id}.png\">PNG</a>)</figcaption></figure>",
            id = escape(&w.stem),
            svg = strip_xml_declaration(&w.svg),
            c = escape(&w.caption)
        );
    }
    h.push_str("</body></html>\n");
    h
}

/// An SVG document as an element to inline (no `<?xml ...?>` line).
fn strip_xml_declaration(svg: &str) -> &str {
    match svg.find("<svg") {
        Some(i) => &svg[i..],
        None => svg,
    }
}
