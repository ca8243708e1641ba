//! The difference between two renders, as the patch ops of PROTOCOLS.md §2.
//!
//! How a patch applies (the client script and the tests' applier both follow this):
//! - `NoOp`: the node stays. `Change(text)`: a text node's text becomes `text`.
//! - `Replace(node)`, `Insert(node)`: the node at this place is `node`, freshly built.
//! - `Update { attrs, children }`: `attrs`, when present, is the node's whole new attribute set.
//!   `children` maps positions in the *new* child list to ops; the new list is built position
//!   by position, with a cursor on the old list that starts before its first child:
//!   - no op: the old child after the cursor, unchanged; the cursor moves onto it;
//!   - `NoOp`, `Update`, `Change`, `Replace`: that child, patched (replaced); the cursor moves
//!     onto it;
//!   - `Move { from, patch }`: the old child at `from`, patched; the cursor moves onto it;
//!   - `Insert(node)`: a new child; the cursor stays.
//!
//!   So a row moved in a long list costs one `Move` where it went and one where the rows after
//!   its old place resume, not one per shifted row. `Remove` ops sit at the positions
//!   `new_len..old_len` and only give the new length: the new list has as many children as the
//!   smallest removed position, or (with none removed) the largest of the old length and every
//!   position given plus one (the last position of a grown list always has an op). Old
//!   children no position took are dropped.
//!
//! Keyed children are matched by key wherever they moved; unkeyed ones by position.

use hashbrown::HashMap;
use serde_json::{Map, Value};

use super::element::{Element, attrs_json};

/// What turns one render into the next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Patch {
    /// Nothing changed.
    NoOp,
    /// Same element (tag and key) or component (name and key): new attributes and/or child ops.
    Update {
        /// The whole new rendered attribute set, when any attribute changed.
        attrs: Option<Map<String, Value>>,
        /// Ops by position in the new child list, ascending; `None` when no child changed.
        children: Option<Vec<(usize, Patch)>>,
    },
    /// A different node in the same place.
    Replace(Element),
    /// A new child.
    Insert(Element),
    /// A child that is gone.
    Remove,
    /// A text node's new text.
    Change(String),
    /// A keyed child that was at `from` in the old list, patched with `patch`.
    Move {
        /// Its position in the old child list.
        from: usize,
        /// What changed in it.
        patch: Box<Patch>,
    },
}

/// The patch that turns `old` into `new`.
pub fn diff(old: &Element, new: &Element) -> Patch {
    match (old, new) {
        (Element::Text(a), Element::Text(b)) => {
            if a == b {
                Patch::NoOp
            } else {
                Patch::Change(b.clone())
            }
        }
        (
            Element::Tag {
                tag: ta,
                attrs: aa,
                key: ka,
                children: ca,
            },
            Element::Tag {
                tag: tb,
                attrs: ab,
                key: kb,
                children: cb,
            },
        ) if ta == tb && ka == kb => {
            let attrs = (aa != ab).then(|| attrs_json(ab, kb));
            update(attrs, diff_children(ca, cb))
        }
        (
            Element::Component {
                name: na,
                key: ka,
                children: ca,
            },
            Element::Component {
                name: nb,
                key: kb,
                children: cb,
            },
        ) if na == nb && ka == kb => update(None, diff_children(ca, cb)),
        _ => Patch::Replace(new.clone()),
    }
}

fn update(attrs: Option<Map<String, Value>>, children: Option<Vec<(usize, Patch)>>) -> Patch {
    if attrs.is_none() && children.is_none() {
        Patch::NoOp
    } else {
        Patch::Update { attrs, children }
    }
}

fn diff_children(old: &[Element], new: &[Element]) -> Option<Vec<(usize, Patch)>> {
    let mut ops = Vec::new();
    if old.iter().chain(new).all(|c| c.key_of().is_none()) {
        // No keys: child j is old child j, which is where the cursor always is.
        for (j, n) in new.iter().enumerate() {
            match old.get(j).map(|o| diff(o, n)) {
                Some(Patch::NoOp) => {}
                Some(p) => ops.push((j, p)),
                None => ops.push((j, Patch::Insert(n.clone()))),
            }
        }
        for j in new.len()..old.len() {
            ops.push((j, Patch::Remove));
        }
        return (!ops.is_empty()).then_some(ops);
    }
    // Old keyed children by key (the first of duplicate keys), built the first time a key is
    // not found where the cursor is: a render that moved nothing never hashes a key.
    let mut by_key: Option<HashMap<&str, usize>> = None;
    let mut taken = vec![false; old.len()];
    // The old child the previous position took: a position with no op takes the next one.
    let mut prev: Option<usize> = None;
    let grows = new.len() > old.len();
    for (j, n) in new.iter().enumerate() {
        let next = prev.map_or(0, |p| p + 1);
        let free = |i: usize, taken: &[bool]| i < old.len() && !taken[i];
        let source = match n.key_of() {
            // The next old child when it has the key (so duplicate keys that did not move
            // match in place), else the first old child with the key.
            Some(k) => {
                if free(next, &taken) && old[next].key_of() == Some(k) {
                    Some(next)
                } else {
                    let by_key = by_key.get_or_insert_with(|| {
                        let mut m = HashMap::with_capacity(old.len());
                        for (i, c) in old.iter().enumerate() {
                            if let Some(k) = c.key_of() {
                                m.entry(k).or_insert(i);
                            }
                        }
                        m
                    });
                    by_key.get(k).copied().filter(|&i| free(i, &taken))
                }
            }
            // Unkeyed children match unkeyed ones: the next, else the one in the same place.
            None => [next, j]
                .into_iter()
                .find(|&i| free(i, &taken) && old[i].key_of().is_none()),
        };
        let Some(i) = source else {
            ops.push((j, Patch::Insert(n.clone())));
            continue;
        };
        taken[i] = true;
        let p = diff(&old[i], n);
        // The last position of a list that grew always has an op: it gives the new length.
        if i == next && !(grows && j + 1 == new.len()) {
            if p != Patch::NoOp {
                ops.push((j, p));
            }
        } else {
            ops.push((
                j,
                Patch::Move {
                    from: i,
                    patch: Box::new(p),
                },
            ));
        }
        prev = Some(i);
    }
    for j in new.len()..old.len() {
        ops.push((j, Patch::Remove));
    }
    (!ops.is_empty()).then_some(ops)
}

impl Patch {
    /// Whether nothing changed.
    pub fn is_noop(&self) -> bool {
        *self == Patch::NoOp
    }

    /// The wire form: `["0"]`, `["1", attrs|null, {"<pos>": patch}|null]`, `["2", rendered]`,
    /// `["3", rendered]`, `["4"]`, `["5", text]`, `["6", from, patch]`; with `debug` the op is
    /// its name (`"NoOp"`, `"Update"`, ...).
    pub fn to_json(&self, debug: bool) -> Value {
        let op = |code: &str, name: &str| Value::String(if debug { name } else { code }.into());
        match self {
            Patch::NoOp => Value::Array(vec![op("0", "NoOp")]),
            Patch::Update { attrs, children } => Value::Array(vec![
                op("1", "Update"),
                attrs.clone().map_or(Value::Null, Value::Object),
                children.as_ref().map_or(Value::Null, |cs| {
                    Value::Object(
                        cs.iter()
                            .map(|(i, p)| (i.to_string(), p.to_json(debug)))
                            .collect(),
                    )
                }),
            ]),
            Patch::Replace(e) => Value::Array(vec![op("2", "Replace"), e.to_json()]),
            Patch::Insert(e) => Value::Array(vec![op("3", "Insert"), e.to_json()]),
            Patch::Remove => Value::Array(vec![op("4", "Remove")]),
            Patch::Change(t) => Value::Array(vec![op("5", "Change"), Value::String(t.clone())]),
            Patch::Move { from, patch } => Value::Array(vec![
                op("6", "Move"),
                Value::from(*from),
                patch.to_json(debug),
            ]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{component, el, text};

    fn list(keys: &[&str]) -> Element {
        el("ul").children(keys.iter().map(|k| el("li").key(*k).text(*k)))
    }

    fn wire(a: &Element, b: &Element) -> String {
        diff(a, b).to_json(false).to_string()
    }

    #[test]
    fn equal_trees_give_noop() {
        assert_eq!(diff(&list(&["a", "b"]), &list(&["a", "b"])), Patch::NoOp);
    }

    #[test]
    fn text_change_and_attrs() {
        let a = el("p").class("x").text("1");
        let b = el("p").class("y").text("2");
        assert_eq!(wire(&a, &b), r#"["1",{"class":"y"},{"0":["5","2"]}]"#);
    }

    #[test]
    fn keyed_reversal_moves_each_row() {
        assert_eq!(
            wire(&list(&["a", "b", "c"]), &list(&["c", "b", "a"])),
            r#"["1",null,{"0":["6",2,["0"]],"1":["6",1,["0"]],"2":["6",0,["0"]]}]"#
        );
    }

    #[test]
    fn one_row_moved_in_a_long_list_costs_two_ops() {
        let keys: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        let before: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut after = before.clone();
        let moved = after.remove(10);
        after.push(moved);
        assert_eq!(
            wire(&list(&before), &list(&after)),
            r#"["1",null,{"10":["6",11,["0"]],"99":["6",10,["0"]]}]"#
        );
    }

    #[test]
    fn keyed_insert_and_remove() {
        assert_eq!(
            wire(&list(&["a", "b", "c"]), &list(&["a", "c"])),
            r#"["1",null,{"1":["6",2,["0"]],"2":["4"]}]"#
        );
        assert_eq!(
            wire(&list(&["a"]), &list(&["z", "a"])),
            r#"["1",null,{"0":["3",{"0":"z","attrs":{"spkt-key":"z"},"type":"li"}],"1":["6",0,["0"]]}]"#
        );
    }

    #[test]
    fn different_tag_or_kind_replaces() {
        assert_eq!(
            wire(&el("p"), &el("div")),
            r#"["2",{"attrs":{},"type":"div"}]"#
        );
        assert_eq!(
            wire(&text("a"), &el("b")),
            r#"["2",{"attrs":{},"type":"b"}]"#
        );
        assert_eq!(
            wire(&component("x", [text("a")]), &component("x", [text("b")])),
            r#"["1",null,{"0":["5","b"]}]"#
        );
    }

    #[test]
    fn debug_names_the_ops() {
        let p = diff(&list(&["a", "b"]), &list(&["b"]));
        assert_eq!(
            p.to_json(true).to_string(),
            r#"["Update",null,{"0":["Move",1,["NoOp"]],"1":["Remove"]}]"#
        );
    }
}
