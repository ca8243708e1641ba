//! The cassette's state machine: the preflight store, the sprockets, the live protocol.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};

use hashbrown::{HashMap, HashSet};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::config::Config;
use super::event::{ConnId, Event, Outbound};
use super::protocol::{self, ClientMessage, ErrorCode};
use crate::view::{Element, View, diff, html};

/// Makes a view's initial state; registered by name in [`Views`].
type Factory = Box<dyn Fn() -> Box<dyn View> + Send>;

/// The views a cassette can serve, by name. Pages and preflights name a view; a join
/// instantiates it.
#[derive(Default)]
pub struct Views {
    factories: HashMap<String, Factory>,
}

impl std::fmt::Debug for Views {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.factories.keys().collect();
        names.sort();
        f.debug_struct("Views").field("names", &names).finish()
    }
}

impl Views {
    /// No views.
    pub fn new() -> Views {
        Views::default()
    }

    /// Serves `make()`'s view under `name`.
    pub fn register(
        &mut self,
        name: impl Into<String>,
        make: impl Fn() -> Box<dyn View> + Send + 'static,
    ) {
        self.factories.insert(name.into(), Box::new(make));
    }

    fn make(&self, name: &str) -> Option<Box<dyn View>> {
        self.factories.get(name).map(|f| f())
    }
}

struct Preflight {
    view: String,
    csrf_token: String,
    created_at: u64,
}

/// A live session: the view, its last render, and the handler and hook ids that render shows.
struct Sprocket {
    view_name: String,
    view: Box<dyn View>,
    rendered: Element,
    /// `"<kind> <id>"` of every event handler in `rendered`.
    handlers: HashSet<String>,
    /// Every hook id in `rendered`.
    hooks: HashSet<String>,
    joined_at: u64,
}

impl Sprocket {
    fn index(rendered: &Element) -> (HashSet<String>, HashSet<String>) {
        let (mut handlers, mut hooks) = (HashSet::new(), HashSet::new());
        rendered.visit_handlers(
            &mut |kind, id| {
                handlers.insert(format!("{kind} {id}"));
            },
            &mut |id| {
                hooks.insert(id.to_string());
            },
        );
        (handlers, hooks)
    }
}

/// A preflight as [`Cassette::state`] shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreflightInfo {
    /// Its id.
    pub id: String,
    /// Its view's name.
    pub view: String,
    /// When it was stored.
    pub created_at: u64,
}

/// A sprocket as [`Cassette::state`] shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SprocketInfo {
    /// Its socket.
    pub conn: ConnId,
    /// Its view's name.
    pub view: String,
    /// When it joined.
    pub joined_at: u64,
}

/// The cassette's state, for tests and debugging (the seed's `GetState`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Preflights, oldest first.
    pub preflights: Vec<PreflightInfo>,
    /// Sprockets, by connection.
    pub sprockets: Vec<SprocketInfo>,
    /// The debug option.
    pub debug: bool,
}

/// Preflights and sprockets; see the [module docs](crate::cassette).
pub struct Cassette {
    config: Config,
    views: Views,
    preflights: HashMap<String, Preflight>,
    /// `(created_at, id)` in the order preflights were stored: expiry and eviction order.
    /// Entries of preflights already used are skipped when met, and compacted away when the
    /// queue grows past twice `max_preflights`.
    order: VecDeque<(u64, String)>,
    sprockets: HashMap<ConnId, Sprocket>,
    now_ms: u64,
}

impl std::fmt::Debug for Cassette {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cassette")
            .field("preflights", &self.preflights.len())
            .field("sprockets", &self.sprockets.len())
            .finish()
    }
}

impl Cassette {
    /// A cassette serving `views`.
    pub fn new(views: Views, config: Config) -> Cassette {
        Cassette {
            config,
            views,
            preflights: HashMap::new(),
            order: VecDeque::new(),
            sprockets: HashMap::new(),
            now_ms: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Preflights held.
    pub fn preflight_count(&self) -> usize {
        self.preflights.len()
    }

    /// Sprockets held.
    pub fn sprocket_count(&self) -> usize {
        self.sprockets.len()
    }

    /// Whether a view is registered under `name`.
    pub fn has_view(&self, name: &str) -> bool {
        self.views.factories.contains_key(name)
    }

    /// Everything held, sorted, for tests and debugging.
    pub fn state(&self) -> State {
        let preflights = self
            .order
            .iter()
            .filter(|(at, id)| self.preflights.get(id).is_some_and(|p| p.created_at == *at))
            .map(|(at, id)| PreflightInfo {
                id: id.clone(),
                view: self.preflights[id].view.clone(),
                created_at: *at,
            })
            .collect();
        let mut sprockets: Vec<_> = self
            .sprockets
            .iter()
            .map(|(conn, s)| SprocketInfo {
                conn: *conn,
                view: s.view_name.clone(),
                joined_at: s.joined_at,
            })
            .collect();
        sprockets.sort_by_key(|s| s.conn);
        State {
            preflights,
            sprockets,
            debug: self.config.debug,
        }
    }

    /// When the oldest preflight expires, if any is held.
    pub fn next_deadline(&self) -> Option<u64> {
        self.order
            .front()
            .map(|(at, _)| at.saturating_add(self.config.preflight_ttl_ms))
    }

    /// Takes one event; returns what to do.
    pub fn handle(&mut self, event: Event) -> Vec<Outbound> {
        let mut out = Vec::new();
        self.handle_into(event, &mut out);
        out
    }

    /// [`Cassette::handle`] into a caller's vector.
    pub fn handle_into(&mut self, event: Event, out: &mut Vec<Outbound>) {
        match event {
            Event::PushPreflight {
                now_ms,
                id,
                csrf_token,
                view,
            } => {
                self.advance(now_ms);
                self.on_push_preflight(id, csrf_token, view, out);
            }
            Event::PopPreflight { now_ms, id } => {
                self.advance(now_ms);
                let found = self.preflights.remove(&id).is_some();
                out.push(Outbound::Popped { id, found });
            }
            Event::Receive { now_ms, conn, text } => {
                self.advance(now_ms);
                self.on_receive(conn, &text, out);
            }
            Event::Disconnect { now_ms, conn } => {
                self.advance(now_ms);
                self.sprockets.remove(&conn);
            }
            Event::Tick { now_ms } => self.advance(now_ms),
            Event::Info {
                now_ms,
                view,
                message,
            } => {
                self.advance(now_ms);
                self.on_info(&view, &message, out);
            }
        }
    }

    /// Moves the clock (never back) and sweeps the preflights that expired.
    fn advance(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        while let Some((at, _)) = self.order.front() {
            if at.saturating_add(self.config.preflight_ttl_ms) > self.now_ms {
                break;
            }
            if let Some((at, id)) = self.order.pop_front() {
                self.remove_if_current(&id, at);
            }
        }
    }

    /// Removes preflight `id` if it is the one stored at `at` (not a later one of the same id).
    fn remove_if_current(&mut self, id: &str, at: u64) {
        if self.preflights.get(id).is_some_and(|p| p.created_at == at) {
            self.preflights.remove(id);
        }
    }

    fn on_push_preflight(
        &mut self,
        id: String,
        csrf_token: String,
        view_name: String,
        out: &mut Vec<Outbound>,
    ) {
        let Some(view) = self.views.make(&view_name) else {
            out.push(Outbound::Page {
                status: 404,
                html: "<!DOCTYPE html><title>not found</title><p>no such view</p>".into(),
            });
            return;
        };
        let rendered = guarded(|| view.render());
        let Some(rendered) = rendered else {
            out.push(Outbound::Page {
                status: 500,
                html: "<!DOCTYPE html><title>error</title><p>the view failed</p>".into(),
            });
            return;
        };
        let page = html::page(
            &rendered,
            &html::PageParts {
                title: &view.title(),
                style: view.style(),
                preflight_id: &id,
                csrf_token: &csrf_token,
                script_src: &self.config.script_path,
            },
        );
        // Bound the store: evict the oldest live preflight(s).
        while self.preflights.len() >= self.config.max_preflights.max(1) {
            let Some((at, old)) = self.order.pop_front() else {
                break;
            };
            self.remove_if_current(&old, at);
        }
        let created_at = self.now_ms;
        self.preflights.insert(
            id.clone(),
            Preflight {
                view: view_name,
                csrf_token,
                created_at,
            },
        );
        self.order.push_back((created_at, id));
        if self.order.len() > 2 * self.config.max_preflights.max(1) {
            let preflights = &self.preflights;
            self.order
                .retain(|(at, id)| preflights.get(id).is_some_and(|p| p.created_at == *at));
        }
        out.push(Outbound::Page {
            status: 200,
            html: page,
        });
    }

    fn on_receive(&mut self, conn: ConnId, text: &str, out: &mut Vec<Outbound>) {
        let message = match protocol::decode(text, self.config.max_message_len) {
            Ok(m) => m,
            Err(e) => {
                let text = protocol::error(ErrorCode::ConnectError, &e.to_string());
                out.push(Outbound::Transmit { conn, text });
                return;
            }
        };
        match message {
            ClientMessage::Join { id, csrf } => self.on_join(conn, &id, &csrf, out),
            ClientMessage::Event { kind, id, value } => {
                let Some(s) = self.sprockets.get_mut(&conn) else {
                    return not_joined(conn, out);
                };
                // A stale id (not in the current render) never reaches the view.
                if !s.handlers.contains(&format!("{kind} {id}")) {
                    return;
                }
                let view = &mut s.view;
                if guarded(|| view.handle_event(&id, value.as_deref())).is_none() {
                    return self.fail(conn, out);
                }
                self.rerender(conn, out);
            }
            ClientMessage::HookEvent { id, name, payload } => {
                let Some(s) = self.sprockets.get_mut(&conn) else {
                    return not_joined(conn, out);
                };
                if !s.hooks.contains(&id) {
                    return;
                }
                let view = &mut s.view;
                let Some(replies) = guarded(|| view.handle_hook(&id, &name, &payload)) else {
                    return self.fail(conn, out);
                };
                for r in replies {
                    let text = protocol::hook_event(&r.id, &r.kind, &r.value);
                    out.push(Outbound::Transmit { conn, text });
                }
                self.rerender(conn, out);
            }
        }
    }

    fn on_join(&mut self, conn: ConnId, id: &str, csrf: &str, out: &mut Vec<Outbound>) {
        let error = |code, msg: &str| Outbound::Transmit {
            conn,
            text: protocol::error(code, msg),
        };
        if self.sprockets.contains_key(&conn) {
            return out.push(error(ErrorCode::ConnectError, "already joined"));
        }
        // Expired ones were swept by `advance`, so a stored preflight is a live one.
        let Some(preflight) = self.preflights.get(id) else {
            return out.push(error(ErrorCode::PreflightNotFound, "No preflight found"));
        };
        // Checked before the preflight is consumed: a wrong token leaves it for a retry.
        if !constant_time_eq(csrf.as_bytes(), preflight.csrf_token.as_bytes()) {
            return out.push(error(ErrorCode::InvalidCsrfToken, "Invalid CSRF token"));
        }
        if self.sprockets.len() >= self.config.max_sprockets {
            return out.push(error(ErrorCode::ConnectError, "too many live sessions"));
        }
        let Some(view) = self.views.make(&preflight.view) else {
            return out.push(error(
                ErrorCode::ConnectError,
                "Unable to connect to session",
            ));
        };
        let Some(preflight) = self.preflights.remove(id) else {
            return;
        };
        let Some(rendered) = guarded(|| view.render()) else {
            return out.push(Outbound::Close {
                conn,
                code: 1011,
                reason: "the view failed".into(),
            });
        };
        let (handlers, hooks) = Sprocket::index(&rendered);
        let text = protocol::ok(rendered.to_json());
        self.sprockets.insert(
            conn,
            Sprocket {
                view_name: preflight.view,
                view,
                rendered,
                handlers,
                hooks,
                joined_at: self.now_ms,
            },
        );
        out.push(Outbound::Transmit { conn, text });
    }

    fn on_info(&mut self, view: &str, message: &Value, out: &mut Vec<Outbound>) {
        let mut conns: Vec<ConnId> = self
            .sprockets
            .iter()
            .filter(|(_, s)| s.view_name == view)
            .map(|(c, _)| *c)
            .collect();
        conns.sort();
        for conn in conns {
            let Some(s) = self.sprockets.get_mut(&conn) else {
                continue;
            };
            let v = &mut s.view;
            if guarded(|| v.handle_info(message)).is_none() {
                self.fail(conn, out);
                continue;
            }
            self.rerender(conn, out);
        }
    }

    /// Renders `conn`'s view again and sends the difference, if there is one.
    fn rerender(&mut self, conn: ConnId, out: &mut Vec<Outbound>) {
        let Some(s) = self.sprockets.get_mut(&conn) else {
            return;
        };
        let view = &s.view;
        let Some(rendered) = guarded(|| view.render()) else {
            return self.fail(conn, out);
        };
        let patch = diff(&s.rendered, &rendered);
        if patch.is_noop() {
            return;
        }
        (s.handlers, s.hooks) = Sprocket::index(&rendered);
        s.rendered = rendered;
        let text = protocol::update(patch.to_json(self.config.debug), self.config.debug);
        out.push(Outbound::Transmit { conn, text });
    }

    /// A view panicked: its session ends, the socket is closed with 1011.
    fn fail(&mut self, conn: ConnId, out: &mut Vec<Outbound>) {
        self.sprockets.remove(&conn);
        out.push(Outbound::Close {
            conn,
            code: 1011,
            reason: "the view failed".into(),
        });
    }
}

fn not_joined(conn: ConnId, out: &mut Vec<Outbound>) {
    out.push(Outbound::Transmit {
        conn,
        text: protocol::error(ErrorCode::ConnectError, "not joined"),
    });
}

/// Runs user view code; a panic becomes `None` (the caller ends that session only).
fn guarded<R>(f: impl FnOnce() -> R) -> Option<R> {
    catch_unwind(AssertUnwindSafe(f)).ok()
}

/// Compares two byte strings in time that depends only on their lengths (tokens are of a
/// fixed length, so the length is no secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keep the compiler from ending the fold early on a non-zero accumulator.
    std::hint::black_box(diff) == 0
}
