//! Live views: the element tree a view renders, its HTML and JSON forms, and the diff between
//! two renders as the patch ops of the cassette protocol (`../shared/design/PROTOCOLS.md` §2).
//!
//! - [`Element`]: elements with attributes, text, components (named, transparent groups),
//!   keyed children, event handlers by id (`spkt-event-<kind>="<id>"`) and client hooks
//!   (`spkt-hook`, `spkt-hook-id`). Build trees with [`el`], [`text`] and [`component`].
//! - [`html`]: a tree as HTML, every text and attribute value escaped, and the whole page a
//!   preflight is served in.
//! - [`Element::to_json`]: the rendered JSON form the client keeps.
//! - [`diff`]: two trees into a [`Patch`], keyed moves included; [`Patch::to_json`] is its
//!   wire form.
//! - [`View`]: what a user writes: `render` and `handle_event`, a counter in a few lines.
//!
//! ```
//! use spool_core::view::{self, el, Element, View};
//!
//! #[derive(Default)]
//! struct Counter(i64);
//!
//! impl View for Counter {
//!     fn render(&self) -> Element {
//!         el("div")
//!             .child(el("button").on_click("dec").text("-"))
//!             .child(el("span").text(self.0.to_string()))
//!             .child(el("button").on_click("inc").text("+"))
//!     }
//!     fn handle_event(&mut self, handler: &str, _value: Option<&str>) {
//!         match handler {
//!             "inc" => self.0 += 1,
//!             "dec" => self.0 -= 1,
//!             _ => {}
//!         }
//!     }
//! }
//!
//! let mut c = Counter::default();
//! let before = c.render();
//! c.handle_event("inc", None);
//! let patch = view::diff(&before, &c.render());
//! assert_eq!(patch.to_json(false).to_string(), r#"["1",null,{"1":["1",null,{"0":["5","1"]}]}]"#);
//! ```

pub mod demo;
mod diff;
mod element;
pub mod html;

pub use diff::{Patch, diff};
pub use element::{Attr, Element, component, el, text};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An event the server sends to a client hook: `["event", {"id", "kind", "value"}]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HookEvent {
    /// The hook's id (its `spkt-hook-id`).
    pub id: String,
    /// The event's name.
    pub kind: String,
    /// What it carries.
    pub value: Value,
}

/// A live view: state that renders to an [`Element`] and changes on the user's events.
///
/// The cassette renders it after every call that may have changed it and sends the client the
/// difference, or nothing when nothing changed. Handler and hook ids are the view's own
/// strings: an event whose id the current render does not show is stale and is dropped before
/// it reaches the view, so a view only ever hears about handlers it offered.
pub trait View: Send + 'static {
    /// The tree as the state is now.
    fn render(&self) -> Element;

    /// The user fired handler `handler` (an id given to [`Element::on`]); `value` is the target
    /// element's value, when it has one (inputs; for a form's submit, its first input's).
    fn handle_event(&mut self, handler: &str, value: Option<&str>) {
        let _ = (handler, value);
    }

    /// A client hook (`spkt-hook-id="<hook>"`) pushed an event; returns events to send to
    /// client hooks.
    fn handle_hook(&mut self, hook: &str, name: &str, payload: &Value) -> Vec<HookEvent> {
        let _ = (hook, name, payload);
        Vec::new()
    }

    /// A message from the server application (a dashboard's tick, say).
    fn handle_info(&mut self, message: &Value) {
        let _ = message;
    }

    /// The page title of the HTTP render.
    fn title(&self) -> String {
        "spool".to_string()
    }

    /// A static style sheet put in the page's head. It is not escaped: keep it a constant.
    fn style(&self) -> &'static str {
        ""
    }
}
