// spool's live-view client (PROTOCOLS.md §2). No build step: served as is by the shells.
// It joins with the page's preflight, keeps the rendered JSON of the view, applies each
// patch to that JSON and to the DOM in place (so a focused input keeps its focus and caret),
// and sends the events the view asked for (spkt-event-<kind> attributes).
(function () {
  "use strict";
  var root = document.getElementById("spool-root");
  var meta = function (name) {
    var m = document.querySelector('meta[name="' + name + '"]');
    return m && m.getAttribute("content");
  };
  var preflight = meta("spkt-preflight-id");
  var csrf = meta("spkt-csrf-token");
  if (!root || !preflight) return;
  var CODES = { NoOp: "0", Update: "1", Replace: "2", Insert: "3", Remove: "4", Change: "5", Move: "6" };
  var KINDS = ["click", "dblclick", "input", "change", "submit"];
  var hooks = window.spoolHooks || {};
  var tree = null; // the rendered JSON of the view, as the server last sent it
  // From a submit until the user types again, the server may reset a focused input. Not
  // cleared by the next update: updates for keystrokes sent before the submit may still be on
  // the way, and the reset comes after them.
  var forceValues = false;
  var spool = (window.spool = { state: "connecting", updates: 0, errors: [] });
  var url = (location.protocol === "https:" ? "wss:" : "ws:") + "//" + location.host + "/live";
  var ws = new WebSocket(url);
  spool.socket = ws;
  var setState = function (s) {
    spool.state = s;
    document.documentElement.setAttribute("data-spool", s);
  };
  var send = function (m) {
    if (ws.readyState === 1) ws.send(JSON.stringify(m));
  };
  var code = function (op) {
    return CODES[op] || op;
  };
  var kids = function (j) {
    var out = [];
    if (j && typeof j === "object") for (var i = 0; String(i) in j; i++) out.push(j[i]);
    return out;
  };
  // DOM nodes a rendered node stands for: a component stands for its children's.
  var count = function (j) {
    if (j && typeof j === "object" && j.type === "component")
      return kids(j).reduce(function (a, c) { return a + count(c); }, 0);
    return 1;
  };
  var group = function (children, nodes) {
    var out = [], at = 0;
    children.forEach(function (c) {
      var n = count(c);
      out.push(nodes.slice(at, at + n));
      at += n;
    });
    return out;
  };
  var flat = function (groups) {
    return [].concat.apply([], groups);
  };
  var setAttrs = function (el, old, next) {
    Object.keys(old).forEach(function (k) {
      if (!(k in next)) {
        el.removeAttribute(k);
        if (k === "checked") el.checked = false;
        if (k === "value" && (forceValues || document.activeElement !== el)) el.value = "";
      }
    });
    Object.keys(next).forEach(function (k) {
      var v = next[k];
      if (el.getAttribute(k) !== v) el.setAttribute(k, v);
      if (k === "checked") el.checked = true;
      // The browser owns a focused input's value, unless the user just submitted its form.
      if (k === "value" && el.value !== v && (forceValues || document.activeElement !== el)) el.value = v;
    });
  };
  var build = function (j) {
    if (typeof j === "string") return [document.createTextNode(j)];
    if (j.type === "component") return flat(kids(j).map(build));
    var el = document.createElement(j.type);
    setAttrs(el, {}, j.attrs || {});
    kids(j).forEach(function (c) {
      build(c).forEach(function (n) { el.appendChild(n); });
    });
    return [el];
  };
  // Puts exactly `nodes`, in order, under `parent`, moving only what moved.
  var reconcile = function (parent, nodes) {
    for (var i = 0; i < nodes.length; i++) {
      var cur = parent.childNodes[i];
      if (cur !== nodes[i]) parent.insertBefore(nodes[i], cur || null);
    }
    while (parent.childNodes.length > nodes.length) parent.removeChild(parent.lastChild);
  };
  // Applies patch `p` to rendered node `j` whose DOM nodes are `nodes`; returns both anew.
  var apply = function (j, nodes, p) {
    switch (code(p[0])) {
      case "0":
        return [j, nodes];
      case "2":
      case "3":
        return [p[1], build(p[1])];
      case "5":
        nodes[0].nodeValue = p[1];
        return [p[1], nodes];
      case "1": {
        var comp = j.type === "component";
        var el = nodes[0];
        var next = { type: j.type };
        if (!comp) next.attrs = j.attrs || {};
        if (p[1] && !comp) {
          setAttrs(el, j.attrs || {}, p[1]);
          next.attrs = p[1];
        }
        var children = kids(j);
        var groups = group(children, comp ? nodes : Array.prototype.slice.call(el.childNodes));
        if (p[2]) {
          var r = applyChildren(children, groups, p[2]);
          children = r[0];
          groups = r[1];
        }
        children.forEach(function (c, i) { next[i] = c; });
        if (comp) return [next, flat(groups)];
        reconcile(el, flat(groups));
        return [next, nodes];
      }
      default:
        throw new Error("spool: unexpected patch " + JSON.stringify(p));
    }
  };
  // Child ops are by position in the new list, with a cursor on the old one; see
  // spool_core::view::Patch.
  var applyChildren = function (children, groups, ops) {
    var removed = Infinity, last = -1;
    Object.keys(ops).forEach(function (k) {
      var i = Number(k);
      if (code(ops[k][0]) === "4") removed = Math.min(removed, i);
      else last = Math.max(last, i);
    });
    var len = removed !== Infinity ? removed : Math.max(children.length, last + 1);
    var nj = [], ng = [], prev = -1;
    for (var i = 0; i < len; i++) {
      var p = ops[i], r, c = p ? code(p[0]) : null;
      if (c === "3") {
        r = [p[1], build(p[1])]; // an insert leaves the cursor where it is
      } else {
        var from = c === "6" ? p[1] : prev + 1;
        if (!p) r = [children[from], groups[from]];
        else if (c === "6") r = apply(children[from], groups[from], p[2]);
        else r = apply(children[from], groups[from], p);
        prev = from;
      }
      nj.push(r[0]);
      ng.push(r[1]);
    }
    return [nj, ng];
  };
  var mountHooks = function () {
    Array.prototype.forEach.call(root.querySelectorAll("[spkt-hook]"), function (el) {
      if (el.__spoolHook) return;
      var def = hooks[el.getAttribute("spkt-hook")];
      if (!def) return;
      var id = el.getAttribute("spkt-hook-id");
      var hook = Object.create(def);
      hook.el = el;
      hook.pushEvent = function (name, payload) {
        send(["hook:event", { id: id, name: name, payload: payload === undefined ? null : payload }]);
      };
      el.__spoolHook = hook;
      if (hook.mounted) hook.mounted({ el: el, pushEvent: hook.pushEvent });
    });
  };
  ws.onopen = function () {
    send(["join", { id: preflight, csrf: csrf }]);
  };
  ws.onclose = function () {
    setState("closed");
  };
  ws.onmessage = function (e) {
    var m = JSON.parse(e.data);
    if (m[0] === "ok") {
      tree = m[1];
      reconcile(root, build(tree));
      setState("live");
    } else if (m[0] === "update" && tree !== null) {
      var r = apply(tree, Array.prototype.slice.call(root.childNodes), m[1]);
      tree = r[0];
      reconcile(root, r[1]);
      spool.updates++;
    } else if (m[0] === "event") {
      var el = root.querySelector('[spkt-hook-id="' + String(m[1].id).replace(/["\\]/g, "\\$&") + '"]');
      var hook = el && el.__spoolHook;
      if (hook && hook.handleEvent) hook.handleEvent(m[1].kind, m[1].value);
    } else if (m[0] === "error") {
      spool.errors.push(m[1].code);
      document.documentElement.setAttribute("data-spool-error", m[1].code);
      if (m[1].code === "preflight_not_found") setTimeout(function () { location.reload(); }, 1000);
    }
    mountHooks();
  };
  KINDS.forEach(function (kind) {
    var attr = "spkt-event-" + kind;
    document.addEventListener(kind, function (e) {
      if (kind === "input") forceValues = false;
      var el = e.target;
      while (el && el.nodeType === 1 && !el.hasAttribute(attr)) el = el.parentElement;
      if (!el || el.nodeType !== 1 || !root.contains(el)) return;
      var value;
      if (kind === "submit") {
        e.preventDefault();
        var input = el.querySelector("input, textarea, select");
        value = input ? input.value : undefined;
        forceValues = true;
      } else if (el.type === "checkbox" || el.type === "radio") {
        value = String(el.checked);
      } else if (/^(INPUT|TEXTAREA|SELECT)$/.test(el.tagName)) {
        value = String(el.value);
      }
      send(["event", { kind: kind, id: el.getAttribute(attr), value: value }]);
    });
  });
})();
