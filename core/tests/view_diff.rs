//! For random pairs of trees, applying `diff(a, b)` to `a` gives `b` (quickcheck). The applier
//! here works on the rendered JSON form and the wire form of the patch, as the browser client
//! does, following the rules in `spool_core::view::Patch`'s module docs.

use quickcheck::{Arbitrary, Gen, QuickCheck};
use serde_json::{Map, Value};
use spool_core::view::{self, Element, component, el, text};

/// A generated tree.
#[derive(Clone, Debug)]
struct Tree(Element);

const TAGS: &[&str] = &["div", "p", "span", "li"];
const KEYS: &[&str] = &["a", "b", "c", "d", "e", "f"];
const WORDS: &[&str] = &["", "x", "y", "<&>", "hello"];

fn pick<'a>(g: &mut Gen, from: &[&'a str]) -> &'a str {
    g.choose(from).copied().unwrap_or("")
}

fn node(g: &mut Gen, depth: usize) -> Element {
    let choice = u8::arbitrary(g) % 10;
    if depth == 0 || choice < 3 {
        return text(pick(g, WORDS));
    }
    let width = usize::arbitrary(g) % 6;
    // Keyed lists, unkeyed lists and mixtures, with duplicate keys now and then.
    let keying = u8::arbitrary(g) % 3;
    let children: Vec<Element> = (0..width)
        .map(|_| {
            let c = node(g, depth - 1);
            let keyed = match keying {
                0 => false,
                1 => true,
                _ => bool::arbitrary(g),
            };
            if keyed && !matches!(c, Element::Text(_)) {
                c.key(pick(g, KEYS))
            } else {
                c
            }
        })
        .collect();
    if choice == 9 {
        component(pick(g, &["c1", "c2"]), children)
    } else {
        let mut e = el(pick(g, TAGS));
        if bool::arbitrary(g) {
            e = e.class(pick(g, WORDS));
        }
        if u8::arbitrary(g) % 4 == 0 {
            e = e.on_click(pick(g, KEYS));
        }
        if u8::arbitrary(g) % 8 == 0 {
            e = e.hook("H", pick(g, KEYS));
        }
        e.children(children)
    }
}

/// `t` changed a little: children shuffled, dropped, added, texts and attributes changed.
fn mutate(g: &mut Gen, t: &Element, depth: usize) -> Element {
    match t {
        Element::Text(s) => {
            if u8::arbitrary(g) % 4 == 0 {
                text(pick(g, WORDS))
            } else {
                text(s.clone())
            }
        }
        Element::Tag { .. } | Element::Component { .. } => {
            if u8::arbitrary(g) % 12 == 0 {
                return node(g, depth);
            }
            let mut children: Vec<Element> = t
                .child_nodes()
                .iter()
                .map(|c| mutate(g, c, depth.saturating_sub(1)))
                .collect();
            match u8::arbitrary(g) % 5 {
                0 if children.len() > 1 => {
                    let i = usize::arbitrary(g) % children.len();
                    let j = usize::arbitrary(g) % children.len();
                    children.swap(i, j);
                }
                1 if !children.is_empty() => {
                    children.remove(usize::arbitrary(g) % children.len());
                }
                2 => {
                    let at = usize::arbitrary(g) % (children.len() + 1);
                    let c = node(g, depth.saturating_sub(1));
                    let c = if bool::arbitrary(g) {
                        c.key(pick(g, KEYS))
                    } else {
                        c
                    };
                    children.insert(at, c);
                }
                3 => children.reverse(),
                _ => {}
            }
            let mut out = t.clone();
            match &mut out {
                Element::Tag {
                    attrs,
                    children: cs,
                    ..
                } => {
                    if u8::arbitrary(g) % 4 == 0 {
                        attrs.clear();
                        attrs.push(view::Attr::Value {
                            name: "class".into(),
                            value: pick(g, WORDS).into(),
                        });
                    }
                    *cs = children;
                }
                Element::Component { children: cs, .. } => *cs = children,
                Element::Text(_) => {}
            }
            out
        }
    }
}

#[derive(Clone, Debug)]
struct Pair(Tree, Tree);

impl Arbitrary for Pair {
    fn arbitrary(g: &mut Gen) -> Pair {
        let a = node(g, 4);
        let b = if u8::arbitrary(g) % 4 == 0 {
            node(g, 4)
        } else {
            mutate(g, &a, 4)
        };
        Pair(Tree(a), Tree(b))
    }
}

fn code(op: &Value) -> &str {
    match op.as_str().unwrap_or("?") {
        "NoOp" => "0",
        "Update" => "1",
        "Replace" => "2",
        "Insert" => "3",
        "Remove" => "4",
        "Change" => "5",
        "Move" => "6",
        other => other,
    }
}

fn kids(j: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(c) = j.get(out.len().to_string()) {
        out.push(c.clone());
    }
    out
}

/// Applies a wire patch to a rendered node.
fn apply(j: &Value, p: &Value) -> Value {
    match code(&p[0]) {
        "0" => j.clone(),
        "2" | "3" => p[1].clone(),
        "5" => p[1].clone(),
        "1" => {
            let mut next = Map::new();
            next.insert("type".into(), j["type"].clone());
            if let Some(a) = j.get("attrs") {
                next.insert("attrs".into(), a.clone());
            }
            if p[1].is_object() {
                next.insert("attrs".into(), p[1].clone());
            }
            let mut children = kids(j);
            if let Value::Object(ops) = &p[2] {
                let removed = ops
                    .iter()
                    .filter(|(_, p)| code(&p[0]) == "4")
                    .map(|(k, _)| k.parse::<usize>().unwrap())
                    .min();
                let last = ops
                    .iter()
                    .filter(|(_, p)| code(&p[0]) != "4")
                    .map(|(k, _)| k.parse::<usize>().unwrap() + 1)
                    .max()
                    .unwrap_or(0);
                let len = removed.unwrap_or(children.len().max(last));
                let mut used = vec![false; children.len()];
                let mut prev: Option<usize> = None;
                let take = |i: usize, used: &mut Vec<bool>| {
                    assert!(!used[i], "old child {i} used twice");
                    used[i] = true;
                    i
                };
                let mut new = Vec::with_capacity(len);
                for j in 0..len {
                    let next = prev.map_or(0, |p| p + 1);
                    let child = match ops.get(&j.to_string()) {
                        None => {
                            let i = take(next, &mut used);
                            prev = Some(i);
                            children[i].clone()
                        }
                        Some(p) if code(&p[0]) == "6" => {
                            let i = take(p[1].as_u64().unwrap() as usize, &mut used);
                            prev = Some(i);
                            apply(&children[i], &p[2])
                        }
                        Some(p) if code(&p[0]) == "3" => p[1].clone(),
                        Some(p) => {
                            let i = take(next, &mut used);
                            prev = Some(i);
                            apply(&children[i], p)
                        }
                    };
                    new.push(child);
                }
                children = new;
            }
            for (i, c) in children.into_iter().enumerate() {
                next.insert(i.to_string(), c);
            }
            Value::Object(next)
        }
        other => panic!("op {other} cannot apply to a node: {p}"),
    }
}

fn diff_applies(pair: Pair) -> bool {
    let (a, b) = (&(pair.0).0, &(pair.1).0);
    let patch = view::diff(a, b);
    for debug in [false, true] {
        let got = apply(&a.to_json(), &patch.to_json(debug));
        if got != b.to_json() {
            eprintln!(
                "a = {}\nb = {}\npatch = {}\ngot = {got}",
                a.to_json(),
                b.to_json(),
                patch.to_json(debug)
            );
            return false;
        }
    }
    // Equal trees give no patch at all.
    view::diff(b, b).is_noop()
}

#[test]
fn applying_the_diff_of_two_trees_to_the_first_gives_the_second() {
    QuickCheck::new()
        .tests(3000)
        .quickcheck(diff_applies as fn(Pair) -> bool);
}
