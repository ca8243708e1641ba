// Join, push with a reply, and the join of a topic that has no route.
"use strict"
const {check, connect, eq, join, reply, run} = require("./common")

run(15000, async () => {
  const socket = connect("alice")
  const frames = []
  socket.onMessage(msg => frames.push(msg))

  const lobby = socket.channel("room:lobby", {user: "alice"})
  const joined = await join(lobby, "the join of room:lobby to be answered ok")
  check(joined && typeof joined === "object" && !Array.isArray(joined),
    `the join reply's response is an object, got ${JSON.stringify(joined)}`)
  eq(lobby.state, "joined", "room:lobby's state after the join")

  const pong = await reply(lobby.push("ping", {n: 1}), "the reply to ping {n: 1}")
  eq(pong.response, {pong: {n: 1}}, "the reply to ping {n: 1}")

  // Any JSON payload comes back as it was sent.
  const payload = {s: "héllo \u2603 \"quoted\"", list: [1, 2.5, null, true], nested: {a: {b: []}}}
  const pong2 = await reply(lobby.push("ping", payload), "the reply to ping with a nested payload")
  eq(pong2.response, {pong: payload}, "the reply to ping with a nested payload")

  const nope = socket.channel("nope:1", {user: "alice"})
  const refused = await reply(nope.join(), "the join of nope:1 to be refused", ["error"])
  eq(refused.response, {reason: "unmatched topic"}, "the reply to the join of a topic with no route")
  const frame = frames.find(m => m.topic === "nope:1" && m.event === "phx_reply")
  eq([frame.join_ref, frame.ref], [null, nope.joinRef()],
    "[join_ref, ref] of the unmatched-topic reply (join_ref is null, ref is the join's)")
  eq(nope.state, "errored", "nope:1's state after the refused join")
  // phoenix.js would retry the join every few seconds; stop that.
  nope.leave()

  // The socket and room:lobby are unaffected by the refused join.
  const pong3 = await reply(lobby.push("ping", {n: 3}), "the reply to ping {n: 3} after the refused join")
  eq(pong3.response, {pong: {n: 3}}, "the reply to ping {n: 3}")
  eq(socket.stats.closes, 0, "socket closes during the scenario")
})
