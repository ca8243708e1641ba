//! The live views of `spool serve`: a counter and a todo list (`/live-demo`) and a dashboard of
//! the server itself (`/dashboard`). Plain [`View`]s, also used by the tests and benchmarks.

use serde_json::Value;

use super::{Element, View, component, el};

/// A counter: `-`, the count, `+`.
#[derive(Debug, Default)]
pub struct Counter {
    count: i64,
}

impl Counter {
    fn render(&self) -> Element {
        el("section")
            .class("counter")
            .child(el("h2").text("Counter"))
            .child(
                el("button")
                    .attr("id", "dec")
                    .on_click("counter:dec")
                    .text("-"),
            )
            .child(el("span").attr("id", "count").text(self.count.to_string()))
            .child(
                el("button")
                    .attr("id", "inc")
                    .on_click("counter:inc")
                    .text("+"),
            )
    }

    fn handle_event(&mut self, handler: &str) {
        match handler {
            "counter:inc" => self.count = self.count.saturating_add(1),
            "counter:dec" => self.count = self.count.saturating_sub(1),
            _ => {}
        }
    }
}

/// Most todos a list holds; past it `add` does nothing.
pub const MAX_TODOS: usize = 200;
/// Longest todo title kept, in characters.
pub const MAX_TITLE_CHARS: usize = 200;

/// One todo.
#[derive(Debug, Clone)]
struct Todo {
    id: u64,
    title: String,
    done: bool,
}

/// A todo list: type a title, add it, tick it off, remove it.
#[derive(Debug, Default)]
pub struct Todos {
    items: Vec<Todo>,
    draft: String,
    next_id: u64,
}

impl Todos {
    fn render(&self) -> Element {
        let left = self.items.iter().filter(|t| !t.done).count();
        el("section")
            .class("todos")
            .child(el("h2").text("Todos"))
            .child(
                el("form")
                    .attr("id", "todo-form")
                    .on_submit("todo:add")
                    .child(
                        el("input")
                            .attr("id", "todo-input")
                            .attr("placeholder", "What needs doing?")
                            .attr("autocomplete", "off")
                            .attr("value", self.draft.clone())
                            .on_input("todo:draft"),
                    )
                    .child(el("button").attr("type", "submit").text("Add")),
            )
            .child(
                el("ul")
                    .attr("id", "todo-list")
                    .children(self.items.iter().map(|t| {
                        el("li")
                            .key(t.id.to_string())
                            .class(if t.done { "done" } else { "open" })
                            .child(
                                el("input")
                                    .attr("type", "checkbox")
                                    .flag("checked", t.done)
                                    .on_change(format!("todo:toggle:{}", t.id)),
                            )
                            .child(el("span").class("title").text(t.title.clone()))
                            .child(
                                el("button")
                                    .class("remove")
                                    .on_click(format!("todo:remove:{}", t.id))
                                    .text("×"),
                            )
                    })),
            )
            .child(
                el("p")
                    .attr("id", "todo-left")
                    .text(format!("{left} of {} left", self.items.len())),
            )
    }

    fn handle_event(&mut self, handler: &str, value: Option<&str>) {
        if handler == "todo:draft" {
            self.draft = value
                .unwrap_or_default()
                .chars()
                .take(MAX_TITLE_CHARS)
                .collect();
        } else if handler == "todo:add" {
            let title: String = value
                .unwrap_or(&self.draft)
                .trim()
                .chars()
                .take(MAX_TITLE_CHARS)
                .collect();
            if !title.is_empty() && self.items.len() < MAX_TODOS {
                self.items.push(Todo {
                    id: self.next_id,
                    title,
                    done: false,
                });
                self.next_id += 1;
            }
            self.draft.clear();
        } else if let Some(id) = handler.strip_prefix("todo:toggle:") {
            if let Some(t) = self.items.iter_mut().find(|t| t.id.to_string() == id) {
                t.done = !t.done;
            }
        } else if let Some(id) = handler.strip_prefix("todo:remove:") {
            self.items.retain(|t| t.id.to_string() != id);
        }
    }
}

/// `/live-demo`: a counter and a todo list on one page.
#[derive(Debug, Default)]
pub struct Demo {
    counter: Counter,
    todos: Todos,
}

const DEMO_STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;\
padding:0 1rem}section{border:1px solid #ccc;border-radius:6px;padding:1rem;margin:1rem 0}\
#count{display:inline-block;min-width:3rem;text-align:center;font-size:1.5rem}\
li.done .title{text-decoration:line-through;color:#888}ul{padding-left:0;list-style:none}\
li{display:flex;gap:.5rem;align-items:center;padding:.2rem 0}li .remove{margin-left:auto}";

impl View for Demo {
    fn render(&self) -> Element {
        el("main")
            .child(el("h1").text("spool live views"))
            .child(component("counter", [self.counter.render()]))
            .child(component("todos", [self.todos.render()]))
    }

    fn handle_event(&mut self, handler: &str, value: Option<&str>) {
        if handler.starts_with("counter:") {
            self.counter.handle_event(handler);
        } else {
            self.todos.handle_event(handler, value);
        }
    }

    fn title(&self) -> String {
        "spool live demo".into()
    }

    fn style(&self) -> &'static str {
        DEMO_STYLE
    }
}

/// `/dashboard`: the server as its shell reports it each second through `handle_info`:
/// `{"uptime_s", "connections", "live_sessions", "preflights", "presences", "in_per_s",
/// "out_per_s", "channels": [{"topic", "subscribers", "presences"}], "history": [[in, out]]}`.
#[derive(Debug, Default)]
pub struct Dashboard {
    stats: Value,
}

const DASHBOARD_STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:50rem;\
margin:2rem auto;padding:0 1rem}dl{display:grid;grid-template-columns:max-content auto;\
gap:.3rem 1rem}dt{color:#555}table{border-collapse:collapse}td,th{border:1px solid #ccc;\
padding:.2rem .6rem;text-align:left}.chart{display:flex;align-items:flex-end;height:80px;\
gap:1px;border-bottom:1px solid #999;margin:.5rem 0}.bar{display:flex;flex-direction:column;\
justify-content:flex-end;width:8px;height:100%}.in{background:#4a8}.out{background:#48c}";

impl Dashboard {
    fn number(&self, name: &str) -> u64 {
        self.stats.get(name).and_then(Value::as_u64).unwrap_or(0)
    }

    fn chart(&self) -> Element {
        let history: Vec<(u64, u64)> = self
            .stats
            .get("history")
            .and_then(Value::as_array)
            .map(|h| {
                h.iter()
                    .map(|p| (p[0].as_u64().unwrap_or(0), p[1].as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        let max = history.iter().map(|(i, o)| i + o).max().unwrap_or(0).max(1);
        el("div")
            .class("chart")
            .attr("id", "chart")
            .children(history.iter().map(|(i, o)| {
                let pct = |n: u64| format!("height:{}%", n * 100 / max);
                el("div")
                    .class("bar")
                    .attr("title", format!("in {i}/s, out {o}/s"))
                    .child(el("div").class("out").attr("style", pct(*o)))
                    .child(el("div").class("in").attr("style", pct(*i)))
            }))
    }
}

impl View for Dashboard {
    fn render(&self) -> Element {
        let up = self.number("uptime_s");
        let uptime = format!("{}h {:02}m {:02}s", up / 3600, up / 60 % 60, up % 60);
        let row = |name: &str, id: &str, value: String| {
            [
                el("dt").text(name.to_string()),
                el("dd").attr("id", id.to_string()).text(value),
            ]
        };
        let channels = self
            .stats
            .get("channels")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        el("main")
            .child(el("h1").text("spool dashboard"))
            .child(
                el("dl")
                    .children(row("uptime", "uptime", uptime))
                    .children(row(
                        "connections",
                        "connections",
                        self.number("connections").to_string(),
                    ))
                    .children(row(
                        "live sessions",
                        "live-sessions",
                        self.number("live_sessions").to_string(),
                    ))
                    .children(row(
                        "preflights",
                        "preflights",
                        self.number("preflights").to_string(),
                    ))
                    .children(row(
                        "presences",
                        "presences",
                        self.number("presences").to_string(),
                    ))
                    .children(row(
                        "messages in/s",
                        "in-per-s",
                        self.number("in_per_s").to_string(),
                    ))
                    .children(row(
                        "messages out/s",
                        "out-per-s",
                        self.number("out_per_s").to_string(),
                    )),
            )
            .child(el("h2").text("Messages, last minute"))
            .child(self.chart())
            .child(el("h2").text("Channels"))
            .child(
                el("table").attr("id", "channels").child(
                    el("tbody")
                        .child(
                            el("tr")
                                .child(el("th").text("topic"))
                                .child(el("th").text("subscribers"))
                                .child(el("th").text("presences")),
                        )
                        .children(channels.iter().map(|c| {
                            let topic = c["topic"].as_str().unwrap_or_default().to_string();
                            let n = |k: &str| c[k].as_u64().unwrap_or(0).to_string();
                            el("tr")
                                .key(topic.clone())
                                .child(el("td").text(topic))
                                .child(el("td").text(n("subscribers")))
                                .child(el("td").text(n("presences")))
                        })),
                ),
            )
    }

    fn handle_info(&mut self, message: &Value) {
        self.stats = message.clone();
    }

    fn title(&self) -> String {
        "spool dashboard".into()
    }

    fn style(&self) -> &'static str {
        DASHBOARD_STYLE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::diff;

    #[test]
    fn todos_add_toggle_remove() {
        let mut d = Demo::default();
        d.handle_event("todo:draft", Some("milk"));
        d.handle_event("todo:add", Some("milk"));
        d.handle_event("todo:add", Some("  eggs "));
        d.handle_event("todo:toggle:0", Some("true"));
        let html = crate::view::html::render(&d.render());
        assert!(
            html.contains("<li class=\"done\" spkt-key=\"0\">"),
            "{html}"
        );
        assert!(html.contains("1 of 2 left"));
        d.handle_event("todo:remove:0", None);
        assert!(crate::view::html::render(&d.render()).contains("1 of 1 left"));
    }

    #[test]
    fn dashboard_changes_with_uptime() {
        let mut d = Dashboard::default();
        d.handle_info(&serde_json::json!({"uptime_s": 1}));
        let a = d.render();
        d.handle_info(&serde_json::json!({"uptime_s": 2}));
        assert!(!diff(&a, &d.render()).is_noop());
    }
}
