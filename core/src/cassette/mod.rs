//! The cassette: preflights from the HTTP render of a live page, and the live sprockets they
//! become once the page's socket joins (the sprocket seed's `cassette`, `000_*`; the wire format
//! is PROTOCOLS.md §2).
//!
//! One [`Cassette`] holds every preflight and every sprocket of a server and is driven by
//! [`Cassette::handle`]: a page was asked for ([`Event::PushPreflight`], answered with the
//! page's HTML), a socket sent a message ([`Event::Receive`]), a socket ended
//! ([`Event::Disconnect`]), time passed ([`Event::Tick`]), the application told views
//! something ([`Event::Info`]). What it returns says what to send to which socket.
//!
//! What it does not copy from sprocket 0.1.3: the CSRF token is compared in constant time
//! before the preflight is consumed (a wrong token leaves it for a correct retry); the
//! preflight store is bounded (oldest evicted); a sprocket is found by connection in O(1); a
//! render that changes nothing sends nothing; every map is bounded ([`Config`]); a view that
//! panics ends its own session only. Preflight ids and tokens are drawn by the shell from the
//! OS and arrive in events: the core has no randomness.
//!
//! ```
//! use spool_core::cassette::{Cassette, Config, ConnId, Event, Outbound, Views};
//! use spool_core::view::{el, Element, View};
//!
//! struct Hello;
//! impl View for Hello {
//!     fn render(&self) -> Element { el("p").text("hi") }
//! }
//! let mut views = Views::new();
//! views.register("hello", || Box::new(Hello));
//! let mut cassette = Cassette::new(views, Config::default());
//! let id = "a".repeat(32);
//! let csrf = "b".repeat(32);
//! let page = cassette.handle(Event::PushPreflight {
//!     now_ms: 0, id: id.clone(), csrf_token: csrf.clone(), view: "hello".into(),
//! });
//! assert!(matches!(&page[0], Outbound::Page { html, .. } if html.contains("<p>hi</p>")));
//! let join = format!(r#"["join",{{"id":"{id}","csrf":"{csrf}"}}]"#);
//! let out = cassette.handle(Event::Receive { now_ms: 1, conn: ConnId(7), text: join });
//! assert_eq!(out, [Outbound::Transmit {
//!     conn: ConnId(7),
//!     text: r#"["ok",{"0":"hi","attrs":{},"type":"p"}]"#.into(),
//! }]);
//! ```

mod config;
mod event;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz;
mod machine;
pub mod protocol;
#[cfg(test)]
mod tests;

/// The client script (no build step): it joins with the page's preflight, applies patches to
/// the DOM and sends events. Shells serve it at [`Config::script_path`].
pub const CLIENT_JS: &str = include_str!("client.js");

pub use config::Config;
pub use event::{ConnId, Event, Outbound};
pub use machine::{Cassette, PreflightInfo, SprocketInfo, State, Views, constant_time_eq};
