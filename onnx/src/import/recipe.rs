//! The recipe text: a header saying where it came from, the `weights` line, the blocks, one
//! statement per layer (or per block instance), and a `quantize` section with the scheme's
//! defaults.

use std::fmt::Write;

use super::blocks::Blocks;
use super::graph::{Attr, Graph, Src};

/// What the header says besides the graph itself.
pub struct Header<'a> {
    pub model: &'a str,
    pub source: &'a str,
    /// The `weights` line's file, or why there is none.
    pub weights: Result<&'a str, String>,
    pub folded_bn: bool,
    pub batch_norms: usize,
    pub keys: usize,
}

/// Text as `// ` comment lines of at most 100 characters.
pub fn comment(text: &str) -> String {
    let mut out = String::new();
    let mut line = String::from("//");
    for word in text.split_whitespace() {
        if line.len() + 1 + word.len() > 100 && line.len() > 2 {
            out.push_str(&line);
            out.push('\n');
            line = String::from("//");
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
    out
}

/// `op(args..., key: value, ...)`, attributes equal to their default left out.
pub fn call(op: &str, args: &[String], attrs: &[(&str, String)]) -> String {
    let mut parts: Vec<String> = args.to_vec();
    parts.extend(attrs.iter().map(|(k, v)| format!("{k}: {v}")));
    format!("{op}({})", parts.join(", "))
}

/// The attributes of layer `i` that differ from their defaults, as text.
pub fn attrs_text(attrs: &[(&'static str, Attr, Option<Attr>)]) -> Vec<(&'static str, String)> {
    attrs
        .iter()
        .filter(|(_, v, d)| d.as_ref() != Some(v))
        .map(|(k, v, _)| (*k, v.to_string()))
        .collect()
}

/// A valid recipe identifier for the model input.
pub fn input_name(graph: &Graph, i: usize) -> String {
    let n = &graph.inputs[i].name;
    let plain = n.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && ![
            "model", "block", "input", "output", "if", "else", "and", "or", "not", "true", "false",
        ]
        .contains(&n.as_str());
    if plain {
        n.clone()
    } else if graph.inputs.len() == 1 {
        "x".into()
    } else {
        format!("x{i}")
    }
}

/// How a value is referred to at model level.
pub fn reference(graph: &Graph, blocks: &Blocks, src: Src) -> String {
    match src {
        Src::Input(i) => input_name(graph, i),
        Src::Layer(l) => blocks
            .instance_output(l)
            .unwrap_or_else(|| graph.layers[l].name.clone()),
    }
}

/// The whole recipe.
pub fn write(graph: &Graph, blocks: &Blocks, h: &Header) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "// {}: imported by `qc import` from {}", h.model, h.source);
    let _ = writeln!(
        s,
        "// ({}, opset {}, {} nodes → {} layers).",
        if graph.producer.is_empty() {
            "unknown producer"
        } else {
            &graph.producer
        },
        graph.opset,
        graph.nodes,
        graph.layers.len()
    );
    s.push_str("//\n");
    s.push_str("// Names are the PyTorch module paths, read from the initializer names (the state_dict keys)\n");
    s.push_str("// and the nodes' name scopes; parameter keys follow the graph's order.\n");
    if h.folded_bn {
        s.push_str("// Batch norm was folded into the convolutions by the exporter (eval mode): the convolutions\n");
        s.push_str("// carry the folded weights and a bias under their own module names, and there are no\n");
        s.push_str("// batch_norm layers. Export with `training=torch.onnx.TrainingMode.PRESERVE,\n");
        s.push_str("// do_constant_folding=False` (dynamo=False) to keep them.\n");
    } else if h.batch_norms > 0 {
        let _ = writeln!(
            s,
            "// Batch norm kept: {} batch_norm layers with their running statistics ({} keys in all,",
            h.batch_norms, h.keys
        );
        s.push_str("// num_batches_tracked included: ONNX has none, the weights file holds 0).\n");
    }
    match &h.weights {
        Ok(file) => {
            let _ = writeln!(s, "//\n// The initializers under their PyTorch keys: {file}.");
            s.push_str("//\n// Run:\n");
            let _ = writeln!(s, "//   qc check   {}.qrecipe", h.model);
            let _ = writeln!(
                s,
                "//   qc run     {}.qrecipe --stage float --input x.npy --output y.npy",
                h.model
            );
            s.push('\n');
            let _ = writeln!(s, "weights \"{file}\"");
        }
        Err(why) => {
            s.push_str("//\n");
            s.push_str(&comment(&format!("No `weights` line: {why}.")));
            s.push_str("// Until one binds a checkpoint, `qc` initialises the parameters deterministically.\n");
        }
    }
    for b in &blocks.list {
        s.push('\n');
        s.push_str(&blocks.render(b));
    }
    let _ = writeln!(s, "\nmodel {} {{", h.model);
    for (i, input) in graph.inputs.iter().enumerate() {
        let dims: Vec<String> = input
            .dims
            .iter()
            .enumerate()
            .map(|(d, v)| match v {
                _ if d == 0 => "N".to_string(),
                Some(v) => v.to_string(),
                None => format!("D{d}"),
            })
            .collect();
        let _ = writeln!(s, "  input {}: f32[{}]", input_name(graph, i), dims.join(", "));
    }
    s.push('\n');
    let width = graph
        .layers
        .iter()
        .enumerate()
        .filter(|(i, _)| !blocks.member(*i))
        .map(|(_, l)| l.name.len())
        .chain(blocks.list.iter().flat_map(|b| b.prefixes()).map(str::len))
        .max()
        .unwrap_or(0)
        .min(24);
    for (i, layer) in graph.layers.iter().enumerate() {
        if let Some(stmt) = blocks.instance_call(graph, i, width) {
            s.push_str(&stmt);
            continue;
        }
        if blocks.member(i) {
            continue;
        }
        let args: Vec<String> = layer.inputs.iter().map(|&src| reference(graph, blocks, src)).collect();
        let _ = writeln!(
            s,
            "  {:<width$} = {}",
            layer.name,
            call(layer.op, &args, &attrs_text(&layer.attrs))
        );
    }
    let outs: Vec<String> = graph.outputs.iter().map(|&o| reference(graph, blocks, o)).collect();
    let _ = writeln!(s, "\n  output {}", outs.join(", "));
    s.push_str("}\n\n");
    s.push_str("// Post-training quantization with the scheme's defaults, ready to edit. Random inputs fix\n");
    s.push_str("// scales for timing only: calibrate on real samples (e.g. `calibrate \"data/calib.npz\"\n");
    s.push_str("// batches: 32`) before looking at accuracy. See docs/recipe-language.md.\n");
    s.push_str("quantize {\n  scheme    x86\n  calibrate random(batches: 2) batch_size: 1\n}\n");
    s
}
