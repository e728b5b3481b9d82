//! `qc plan` explains every node of every example: one row per node of the fused module, each
//! int8 conv/linear with its weight quantization, each observed value with its activation
//! quantization and observer, every row naming the recipe line or scheme default that decided
//! it; and the plan is what the compiler then does (observers where it says, int8 ops where it
//! says). The fashion_cnn and conv1d_net tables are snapshots.

use std::collections::BTreeSet;
use std::path::Path;

use qc_compiler::ir::Stage;
use qc_compiler::plan::Decision;
use qc_compiler::RunOptions;

const EXAMPLES: &[&str] = &[
    "fashion_cnn",
    "resnet18",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "inception_block",
    "conv1d_net",
];

#[test]
fn every_node_of_every_example_is_explained() {
    for example in EXAMPLES {
        let loaded = qc_dsl::load(&Path::new("examples").join(format!("{example}.qrecipe"))).unwrap();
        let (module, plan) = qc_compiler::plan(&loaded, &RunOptions::default()).unwrap();
        let nodes: BTreeSet<String> = module
            .graph
            .topo_order()
            .into_iter()
            .map(|id| module.graph.node(id).name.clone())
            .collect();
        let planned: BTreeSet<String> = plan.nodes.iter().map(|n| n.node.clone()).collect();
        assert_eq!(planned, nodes, "{example}: one plan row per node");
        for n in &plan.nodes {
            if n.decision == Decision::Int8 && matches!(n.op, "conv1d" | "conv2d" | "linear") {
                assert!(n.weights.is_some(), "{example}: `{}` has no weight plan", n.node);
            }
            if n.decision == Decision::Int8 {
                assert!(
                    n.activations.is_some() && n.observer.is_some(),
                    "{example}: `{}` is int8 without an output observer",
                    n.node
                );
            }
        }
        for row in plan.rows(&loaded.sources) {
            assert!(!row.plan.is_empty(), "{example}: `{}` has no decision", row.node);
            assert!(
                !row.decided_by.is_empty(),
                "{example}: `{}` says nothing of why",
                row.node
            );
        }
        let table = plan.table(&loaded.sources);
        for name in &nodes {
            assert!(
                table.contains(name.as_str()),
                "{example}: `{name}` missing from the table"
            );
        }
    }
}

/// The observers inserted at `observed` are exactly the plan's, and the nodes it calls int8
/// become integer ops at `quantized`.
#[test]
fn the_compiler_does_what_the_plan_says() {
    for example in ["fashion_cnn", "conv1d_net"] {
        let loaded = qc_dsl::load(&Path::new("examples").join(format!("{example}.qrecipe"))).unwrap();
        let (_, plan) = qc_compiler::plan(&loaded, &RunOptions::default()).unwrap();
        let opts = RunOptions {
            stop_after: Some(Stage::Quantized),
            ..Default::default()
        };
        let mut observed = BTreeSet::new();
        let quantized = qc_compiler::compile(
            &loaded,
            &opts,
            &mut |m| {
                if m.stage == Stage::Observed {
                    for id in m.graph.topo_order() {
                        let n = m.graph.node(id);
                        if n.op.name() == "observe" {
                            observed.insert(n.name.clone());
                        }
                    }
                }
            },
            &mut |_, _| {},
        )
        .unwrap();
        let planned: BTreeSet<String> = plan.nodes.iter().filter_map(|n| n.observer.clone()).collect();
        assert_eq!(observed, planned, "{example}");
        for n in plan.nodes.iter().filter(|n| n.decision == Decision::Int8) {
            let id = quantized.graph.find(&n.node).unwrap();
            let op = quantized.graph.node(id).op.name();
            assert!(op.starts_with('q'), "{example}: `{}` planned int8 is `{op}`", n.node);
        }
    }
}

#[test]
fn plan_tables() {
    for example in ["fashion_cnn", "conv1d_net"] {
        let loaded = qc_dsl::load(&Path::new("examples").join(format!("{example}.qrecipe"))).unwrap();
        let (_, plan) = qc_compiler::plan(&loaded, &RunOptions::default()).unwrap();
        insta::assert_snapshot!(format!("plan_{example}"), plan.table(&loaded.sources));
    }
}
