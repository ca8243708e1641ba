// Heartbeats are answered: with a 1 s interval phoenix.js closes the socket if a heartbeat goes
// unanswered for 1 s, so a connection that stays up 3.5 s with 3+ replies shows the server answers.
"use strict"
const {check, connect, eq, join, reply, run, waitFor} = require("./common")

run(25000, async () => {
  const socket = connect("hal", {heartbeatIntervalMs: 1000})
  const replies = []
  socket.onMessage(msg => {
    if(msg.topic === "phoenix" && msg.event === "phx_reply"){ replies.push({at: Date.now(), msg}) }
  })
  const channel = socket.channel("room:h", {user: "hal"})
  await join(channel, "the join of room:h")
  const since = Date.now()

  await waitFor("3.5 s to pass with at least 3 heartbeat replies", () => {
    // A heartbeat unanswered for 1 s makes phoenix.js close the socket: fail right away.
    check(socket.stats.closes === 0 && socket.stats.errors === 0,
      `the socket closed or errored after ${Date.now() - since} ms with ${replies.length} heartbeat replies`)
    return Date.now() - since >= 3500 && replies.length >= 3
  }, 50)
  for(const {msg} of replies){
    eq([msg.join_ref, msg.payload], [null, {status: "ok", response: {}}], "a heartbeat reply's join_ref and payload")
    check(typeof msg.ref === "string", `a heartbeat reply's ref is a string: ${JSON.stringify(msg.ref)}`)
  }
  const refs = replies.map(r => r.msg.ref)
  check(new Set(refs).size === refs.length, `every heartbeat reply answers a different heartbeat: ${refs}`)
  eq(socket.stats, {opens: 1, closes: 0, errors: 0}, "socket opens, closes and errors")
  eq(socket.isConnected(), true, "the socket is connected")
  eq(channel.state, "joined", "the channel state")

  // socket.ping() sends a heartbeat of its own and reports the round trip.
  let rtt = null
  check(socket.ping(ms => { rtt = ms }), "socket.ping() pushed")
  await waitFor("the reply to socket.ping()", () => rtt !== null)

  const pong = await reply(channel.push("ping", {n: 6}), "the reply to ping at the end")
  eq(pong.response, {pong: {n: 6}}, "the reply to ping at the end")
})
