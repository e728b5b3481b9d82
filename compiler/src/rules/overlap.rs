//! The load-time refusal of ambiguous rule sets: two active rules of the same size whose
//! patterns could claim the same nodes (`can_overlap`, compared chain by chain for rules with op
//! classes), and the `qc::rule-overlap` diagnostic naming what to turn off.

use qc_dsl::Diagnostic;

use super::{member_name, PArg, Rule, RuleOrigin};

/// Refuses pairs of active rules of the same size that could match the same nodes.
pub(super) fn overlaps(rules: &[Rule], diags: &mut Vec<Diagnostic>) {
    for (i, a) in rules.iter().enumerate() {
        for b in &rules[i + 1..] {
            if a.size() == b.size() && active_overlap(a, b) {
                // Point at the recipe's rule (a prelude rule has no place in the recipe).
                let (here, other) = if b.origin == RuleOrigin::Recipe { (b, a) } else { (a, b) };
                let off_name = |r: &Rule, with: &Rule| -> String {
                    let names = overlapping_members(r, with);
                    if names.len() == r.concrete().len() {
                        r.name.clone()
                    } else {
                        names.join("`, `fuse off ")
                    }
                };
                let whose = |r: &Rule| match r.origin {
                    RuleOrigin::Prelude => format!("the prelude's rule `{}`", r.name),
                    RuleOrigin::Recipe => format!("rule `{}`", r.name),
                };
                let mut d = Diagnostic::new(
                    "qc::rule-overlap",
                    here.span,
                    format!(
                        "{} and {} can match the same nodes, and both fuse {} ops",
                        whose(here),
                        whose(other),
                        a.size()
                    ),
                )
                .label("ambiguous with another rule")
                .help(format!(
                    "which one applies would be arbitrary: turn one off (`fuse off {}` or `fuse off {}` in \
                     `quantize {{ }}`), or make one pattern bigger or narrower",
                    off_name(other, here),
                    off_name(here, other)
                ));
                if other.origin == RuleOrigin::Recipe {
                    d = d.note(other.span, format!("`{}` is here", other.name));
                }
                diags.push(d);
            }
        }
    }
}

pub(super) fn first_overlap(rules: &[Rule]) -> Option<(&Rule, &Rule)> {
    rules.iter().enumerate().find_map(|(i, a)| {
        rules[i + 1..]
            .iter()
            .find(|b| a.size() == b.size() && active_overlap(a, b))
            .map(|b| (a, b))
    })
}

/// Whether the chains of `a` and `b` that are not turned off could match the same nodes.
pub(super) fn active_overlap(a: &Rule, b: &Rule) -> bool {
    !overlapping_members(a, b).is_empty()
}

/// The member names of `a`'s chains (not turned off) that could match nodes that `b`'s could.
pub(super) fn overlapping_members(a: &Rule, b: &Rule) -> Vec<String> {
    let theirs = b.concrete();
    a.concrete()
        .iter()
        .filter(|x| theirs.iter().any(|y| can_overlap(x, y)))
        .filter_map(|x| x.chains().first().map(|c| member_name(c)))
        .collect()
}

/// Whether some graph has a node that both rules' patterns match: some node of `a` and some node
/// of `b` unify (a kind in common; their inputs unify where both are ops; their users unify where both
/// have one, which `single_use` makes the same node). Attribute tests are ignored, so this can
/// refuse rules that never meet in practice, never the other way round.
pub fn can_overlap(a: &Rule, b: &Rule) -> bool {
    (0..a.nodes.len()).any(|i| (0..b.nodes.len()).any(|j| unify(a, i, b, j, None)))
}

fn unify(a: &Rule, i: usize, b: &Rule, j: usize, from: Option<(usize, usize)>) -> bool {
    let (na, nb) = (&a.nodes[i], &b.nodes[j]);
    if !na.kinds.iter().any(|k| nb.kinds.contains(k)) || na.args.len() != nb.args.len() {
        return false;
    }
    let down = na.args.iter().zip(&nb.args).all(|(x, y)| match (x, y) {
        (PArg::Node(ci), PArg::Node(cj)) if from == Some((*ci, *cj)) => true,
        (PArg::Node(ci), PArg::Node(cj)) => unify_down(a, *ci, b, *cj),
        _ => true,
    });
    down && match (na.parent, nb.parent) {
        (Some((pi, port_i)), Some((pj, port_j))) => port_i == port_j && unify(a, pi, b, pj, Some((i, j))),
        _ => true,
    }
}

fn unify_down(a: &Rule, i: usize, b: &Rule, j: usize) -> bool {
    let (na, nb) = (&a.nodes[i], &b.nodes[j]);
    na.kinds.iter().any(|k| nb.kinds.contains(k))
        && na.args.len() == nb.args.len()
        && na.args.iter().zip(&nb.args).all(|(x, y)| match (x, y) {
            (PArg::Node(ci), PArg::Node(cj)) => unify_down(a, *ci, b, *cj),
            _ => true,
        })
}
