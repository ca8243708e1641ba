//! The element tree and its builders, and its rendered JSON form.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The attribute a keyed child's key is rendered as.
pub const KEY_ATTR: &str = "spkt-key";
/// The prefix of an event handler's attribute: `spkt-event-click="<handler id>"`.
pub const EVENT_ATTR_PREFIX: &str = "spkt-event-";
/// A client hook's name attribute.
pub const HOOK_ATTR: &str = "spkt-hook";
/// A client hook's id attribute.
pub const HOOK_ID_ATTR: &str = "spkt-hook-id";

/// A node of a view's tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Element {
    /// An HTML element.
    Tag {
        /// Tag name (`div`); characters outside `[A-Za-z0-9_:-]` are dropped when rendered.
        tag: String,
        /// Attributes, event handlers and hooks, in the order given.
        attrs: Vec<Attr>,
        /// The key that identifies this child among its keyed siblings across renders.
        key: Option<String>,
        /// Children.
        children: Vec<Element>,
    },
    /// Text.
    Text(String),
    /// A named, transparent group of children: the page shows its children in its place.
    Component {
        /// Name; two renders' components are diffed child by child only when names match.
        name: String,
        /// The key among keyed siblings.
        key: Option<String>,
        /// Children.
        children: Vec<Element>,
    },
}

/// One attribute of an element.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Attr {
    /// `name="value"`.
    Value {
        /// Name.
        name: String,
        /// Value (escaped when rendered).
        value: String,
    },
    /// An event handler: `spkt-event-<kind>="<id>"`; the client sends `kind` events on this
    /// element to handler `id`.
    Event {
        /// `click`, `dblclick`, `input`, `change`, `submit`, ...
        kind: String,
        /// The handler's id, given to [`crate::view::View::handle_event`].
        id: String,
    },
    /// A client hook: `spkt-hook="<name>" spkt-hook-id="<id>"`.
    Hook {
        /// The hook's name in the client's hook table.
        name: String,
        /// Its id, the address of `hook:event` messages both ways.
        id: String,
    },
}

/// An element with tag `tag`, no attributes and no children.
pub fn el(tag: impl Into<String>) -> Element {
    Element::Tag {
        tag: tag.into(),
        attrs: Vec::new(),
        key: None,
        children: Vec::new(),
    }
}

/// A text node.
pub fn text(s: impl Into<String>) -> Element {
    Element::Text(s.into())
}

/// A component named `name` around `children`.
pub fn component(name: impl Into<String>, children: impl IntoIterator<Item = Element>) -> Element {
    Element::Component {
        name: name.into(),
        key: None,
        children: children.into_iter().collect(),
    }
}

impl From<&str> for Element {
    fn from(s: &str) -> Element {
        text(s)
    }
}

impl From<String> for Element {
    fn from(s: String) -> Element {
        Element::Text(s)
    }
}

impl Element {
    /// Adds attribute `name="value"` (to an element; other nodes are returned unchanged).
    #[must_use]
    pub fn attr(mut self, name: impl Into<String>, value: impl Into<String>) -> Element {
        if let Element::Tag { attrs, .. } = &mut self {
            attrs.push(Attr::Value {
                name: name.into(),
                value: value.into(),
            });
        }
        self
    }

    /// Adds `name` when `on` (a boolean attribute such as `checked`).
    #[must_use]
    pub fn flag(self, name: impl Into<String>, on: bool) -> Element {
        if on { self.attr(name, "") } else { self }
    }

    /// Adds `class="value"`.
    #[must_use]
    pub fn class(self, value: impl Into<String>) -> Element {
        self.attr("class", value)
    }

    /// Sends `kind` events on this element to handler `id`.
    #[must_use]
    pub fn on(mut self, kind: impl Into<String>, id: impl Into<String>) -> Element {
        if let Element::Tag { attrs, .. } = &mut self {
            attrs.push(Attr::Event {
                kind: kind.into(),
                id: id.into(),
            });
        }
        self
    }

    /// Sends clicks to handler `id`.
    #[must_use]
    pub fn on_click(self, id: impl Into<String>) -> Element {
        self.on("click", id)
    }

    /// Sends input events (each keystroke, with the value) to handler `id`.
    #[must_use]
    pub fn on_input(self, id: impl Into<String>) -> Element {
        self.on("input", id)
    }

    /// Sends change events to handler `id`.
    #[must_use]
    pub fn on_change(self, id: impl Into<String>) -> Element {
        self.on("change", id)
    }

    /// Sends a form's submit (with its first input's value) to handler `id`.
    #[must_use]
    pub fn on_submit(self, id: impl Into<String>) -> Element {
        self.on("submit", id)
    }

    /// Attaches client hook `name` with id `id`.
    #[must_use]
    pub fn hook(mut self, name: impl Into<String>, id: impl Into<String>) -> Element {
        if let Element::Tag { attrs, .. } = &mut self {
            attrs.push(Attr::Hook {
                name: name.into(),
                id: id.into(),
            });
        }
        self
    }

    /// Sets the key that identifies this node among keyed siblings.
    #[must_use]
    pub fn key(mut self, k: impl Into<String>) -> Element {
        match &mut self {
            Element::Tag { key, .. } | Element::Component { key, .. } => *key = Some(k.into()),
            Element::Text(_) => {}
        }
        self
    }

    /// Appends a child.
    #[must_use]
    pub fn child(mut self, c: impl Into<Element>) -> Element {
        if let Element::Tag { children, .. } | Element::Component { children, .. } = &mut self {
            children.push(c.into());
        }
        self
    }

    /// Appends children.
    #[must_use]
    pub fn children(mut self, cs: impl IntoIterator<Item = Element>) -> Element {
        if let Element::Tag { children, .. } | Element::Component { children, .. } = &mut self {
            children.extend(cs);
        }
        self
    }

    /// Appends a text child.
    #[must_use]
    pub fn text(self, s: impl Into<String>) -> Element {
        self.child(Element::Text(s.into()))
    }

    /// The node's key, if it has one.
    pub fn key_of(&self) -> Option<&str> {
        match self {
            Element::Tag { key, .. } | Element::Component { key, .. } => key.as_deref(),
            Element::Text(_) => None,
        }
    }

    /// The node's children (none for text).
    pub fn child_nodes(&self) -> &[Element] {
        match self {
            Element::Tag { children, .. } | Element::Component { children, .. } => children,
            Element::Text(_) => &[],
        }
    }

    /// The rendered JSON form (PROTOCOLS.md §2): `{"type": tag, "attrs": {..}, "0": child, ..}`,
    /// text as a JSON string (raw: the client makes text nodes, never markup), a component as
    /// `{"type": "component", "0": ..}`.
    pub fn to_json(&self) -> Value {
        match self {
            Element::Text(s) => Value::String(s.clone()),
            Element::Tag {
                tag,
                attrs,
                key,
                children,
            } => {
                let mut m = Map::new();
                m.insert("type".into(), Value::String(clean_name(tag, "div")));
                m.insert("attrs".into(), Value::Object(attrs_json(attrs, key)));
                for (i, c) in children.iter().enumerate() {
                    m.insert(i.to_string(), c.to_json());
                }
                Value::Object(m)
            }
            Element::Component { children, .. } => {
                let mut m = Map::new();
                m.insert("type".into(), Value::String("component".into()));
                for (i, c) in children.iter().enumerate() {
                    m.insert(i.to_string(), c.to_json());
                }
                Value::Object(m)
            }
        }
    }

    /// Calls `f(kind, id)` for every event handler and `g(id)` for every hook in the tree.
    pub fn visit_handlers(&self, f: &mut impl FnMut(&str, &str), g: &mut impl FnMut(&str)) {
        if let Element::Tag { attrs, .. } = self {
            for a in attrs {
                match a {
                    Attr::Event { kind, id } => f(kind, id),
                    Attr::Hook { id, .. } => g(id),
                    Attr::Value { .. } => {}
                }
            }
        }
        for c in self.child_nodes() {
            c.visit_handlers(f, g);
        }
    }
}

/// An element's attributes as rendered: values, then `spkt-event-*`, `spkt-hook`,
/// `spkt-hook-id` in the order given, then `spkt-key`. A name with no valid character is
/// dropped; on a repeated name the last wins.
pub fn attrs_json(attrs: &[Attr], key: &Option<String>) -> Map<String, Value> {
    let mut m = Map::new();
    for_each_attr(attrs, key, |name, value| {
        m.insert(name, Value::String(value.to_string()));
    });
    m
}

/// Calls `f(name, value)` for each rendered attribute, names cleaned, in render order.
pub(crate) fn for_each_attr(attrs: &[Attr], key: &Option<String>, mut f: impl FnMut(String, &str)) {
    for a in attrs {
        match a {
            Attr::Value { name, value } => {
                let name = clean_name(name, "");
                if !name.is_empty() {
                    f(name, value);
                }
            }
            Attr::Event { kind, id } => {
                let kind = clean_name(kind, "");
                if !kind.is_empty() {
                    f(format!("{EVENT_ATTR_PREFIX}{kind}"), id);
                }
            }
            Attr::Hook { name, id } => {
                f(HOOK_ATTR.to_string(), name);
                f(HOOK_ID_ATTR.to_string(), id);
            }
        }
    }
    if let Some(k) = key {
        f(KEY_ATTR.to_string(), k);
    }
}

/// `name` with every character outside `[A-Za-z0-9_:-]` dropped (so a name can never close a
/// tag or open an attribute), or `default` when nothing is left.
pub(crate) fn clean_name(name: &str, default: &str) -> String {
    if name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':'))
        && !name.is_empty()
    {
        return name.to_string();
    }
    let s: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':'))
        .collect();
    if s.is_empty() { default.to_string() } else { s }
}
