//! HTML rendering: every text and attribute value escaped, names cleaned of anything that
//! could end a tag, and the page a preflight is served in.

use super::element::{Element, clean_name, for_each_attr};

/// Elements that have no end tag (HTML's void elements): their children are not rendered.
const VOID: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
    "wbr",
];

/// The tree as HTML.
pub fn render(element: &Element) -> String {
    let mut out = String::new();
    render_into(element, &mut out);
    out
}

/// Appends the tree's HTML to `out`.
pub fn render_into(element: &Element, out: &mut String) {
    match element {
        Element::Text(s) => escape_into(s, out),
        Element::Component { children, .. } => {
            for c in children {
                render_into(c, out);
            }
        }
        Element::Tag {
            tag,
            attrs,
            key,
            children,
        } => {
            let tag = clean_name(tag, "div");
            out.push('<');
            out.push_str(&tag);
            for_each_attr(attrs, key, |name, value| {
                out.push(' ');
                out.push_str(&name);
                out.push_str("=\"");
                escape_into(value, out);
                out.push('"');
            });
            out.push('>');
            if VOID.contains(&tag.to_ascii_lowercase().as_str()) {
                return;
            }
            for c in children {
                render_into(c, out);
            }
            out.push_str("</");
            out.push_str(&tag);
            out.push('>');
        }
    }
}

/// Appends `s` with `& < > " '` escaped: safe as text and inside a quoted attribute value.
pub fn escape_into(s: &str, out: &mut String) {
    let mut last = 0;
    for (i, b) in s.bytes().enumerate() {
        let rep = match b {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' => "&quot;",
            b'\'' => "&#39;",
            _ => continue,
        };
        out.push_str(&s[last..i]);
        out.push_str(rep);
        last = i + 1;
    }
    out.push_str(&s[last..]);
}

/// `s` escaped (see [`escape_into`]).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_into(s, &mut out);
    out
}

/// The id of the element a page's view is rendered in; the client script patches inside it.
pub const ROOT_ID: &str = "spool-root";

/// What a page carries besides its view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageParts<'a> {
    /// The `<title>`.
    pub title: &'a str,
    /// A static style sheet (not escaped).
    pub style: &'a str,
    /// The preflight id (`<meta name="spkt-preflight-id">`).
    pub preflight_id: &'a str,
    /// The CSRF token (`<meta name="spkt-csrf-token">`).
    pub csrf_token: &'a str,
    /// Where the client script is served.
    pub script_src: &'a str,
}

/// A whole page: the preflight tags in the head, the view inside `<div id="spool-root">`, and
/// the client script at the end of the body (PROTOCOLS.md §2).
pub fn page(view: &Element, parts: &PageParts<'_>) -> String {
    let mut out = String::with_capacity(1024);
    out.push_str("<!DOCTYPE html><html><head><meta charset=\"utf-8\">");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    out.push_str("<title>");
    escape_into(parts.title, &mut out);
    out.push_str("</title><meta name=\"spkt-preflight-id\" content=\"");
    escape_into(parts.preflight_id, &mut out);
    out.push_str("\"><meta name=\"spkt-csrf-token\" content=\"");
    escape_into(parts.csrf_token, &mut out);
    out.push_str("\">");
    if !parts.style.is_empty() {
        out.push_str("<style>");
        // A static sheet from the view's code, not data: only a closing tag could break out.
        out.push_str(&parts.style.replace("</", "<\\/"));
        out.push_str("</style>");
    }
    out.push_str("</head><body><div id=\"");
    out.push_str(ROOT_ID);
    out.push_str("\">");
    render_into(view, &mut out);
    out.push_str("</div><script src=\"");
    escape_into(parts.script_src, &mut out);
    out.push_str("\"></script></body></html>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{el, text};

    #[test]
    fn text_and_attribute_values_are_escaped() {
        let e = el("a")
            .attr("href", "\"><script>alert('x')</script>")
            .attr("on\"click", "x")
            .text("<b>&'\"</b>");
        assert_eq!(
            render(&e),
            "<a href=\"&quot;&gt;&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;\" \
             onclick=\"x\">&lt;b&gt;&amp;&#39;&quot;&lt;/b&gt;</a>"
        );
    }

    #[test]
    fn tag_names_cannot_break_out() {
        assert_eq!(
            render(&el("div><script").text("x")),
            "<divscript>x</divscript>"
        );
        assert_eq!(render(&el("<>")), "<div></div>");
    }

    #[test]
    fn handlers_hooks_and_keys_render_as_attributes() {
        let e = el("input")
            .attr("value", "v")
            .on_input("draft")
            .hook("Focus", "h1")
            .key("k")
            .child(text("ignored: void"));
        assert_eq!(
            render(&e),
            "<input value=\"v\" spkt-event-input=\"draft\" spkt-hook=\"Focus\" \
             spkt-hook-id=\"h1\" spkt-key=\"k\">"
        );
    }

    #[test]
    fn page_carries_the_preflight_tags() {
        let p = page(
            &el("p").text("hi"),
            &PageParts {
                title: "T<",
                style: "",
                preflight_id: "id\"",
                csrf_token: "tok",
                script_src: "/spool.js",
            },
        );
        assert!(p.contains("<title>T&lt;</title>"));
        assert!(p.contains("<meta name=\"spkt-preflight-id\" content=\"id&quot;\">"));
        assert!(p.contains("<meta name=\"spkt-csrf-token\" content=\"tok\">"));
        assert!(p.contains("<div id=\"spool-root\"><p>hi</p></div><script src=\"/spool.js\">"));
    }
}
