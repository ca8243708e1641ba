// Leaving a channel: the leave is acknowledged, the channel ends closed, and nothing the left
// client pushes on that topic reaches the room any more.
"use strict"
const {Presence, connect, eq, join, keys, reply, run, sleep, waitFor} = require("./common")

const TOPIC = "room:l"

run(15000, async () => {
  const watcher = connect("walt")
  const watch = watcher.channel(TOPIC, {user: "walt"})
  const heard = []
  watch.on("shout", payload => heard.push(payload.body))
  const presence = new Presence(watch)
  await join(watch, "walt's join")

  const leaver = connect("lena")
  const frames = []
  leaver.onMessage(msg => { if(msg.topic === TOPIC){ frames.push(msg) } })
  const chan = leaver.channel(TOPIC, {user: "lena"})
  await join(chan, "lena's join")
  await waitFor("walt to see lena in the presence list",
    () => JSON.stringify(keys(presence)) === JSON.stringify(["lena", "walt"]))

  // Before leaving, lena's shouts reach walt.
  const before = chan.push("shout", {body: "before"})
  await waitFor("walt to hear lena's shout before the leave", () => heard.includes("before"))

  const joinRef = chan.joinRef()
  const leavePush = chan.leave()
  const leaveRef = leavePush.ref
  const left = await reply(leavePush, "the reply to lena's leave")
  eq(left.response, {}, "the leave reply's response")
  eq(chan.state, "closed", "lena's channel state after the leave")
  eq(leaver.channels.includes(chan), false, "lena's socket still holds the left channel")

  // The server acknowledges the leave, then closes the channel (phoenix.js has already removed
  // the channel, so only the socket sees the phx_close).
  await waitFor("the phx_close that follows the leave reply",
    () => frames.some(f => f.event === "phx_close"))
  const control = frames.filter(f => f.event === "phx_close" ||
    (f.event === "phx_reply" && f.ref !== joinRef && f.ref !== before.ref))
  eq(control.map(f => [f.join_ref, f.ref, f.event, f.payload]),
    [[joinRef, leaveRef, "phx_reply", {status: "ok", response: {}}], [joinRef, joinRef, "phx_close", {}]],
    "lena's replies and closes after the join: [join_ref, ref, event, payload]")

  // lena is gone from the presence list.
  await waitFor("walt to see lena leave the presence list",
    () => JSON.stringify(keys(presence)) === JSON.stringify(["walt"]))

  // A push on the left channel is never sent: phoenix.js buffers it until it times out.
  await reply(chan.push("shout", {body: "after"}, 500), "the push after the leave to time out", ["timeout"])
  // A frame sent by hand with the old join_ref is not processed either.
  leaver.conn.send(JSON.stringify([joinRef, "999", TOPIC, "shout", {body: "stale"}]))
  // Walt's own shout arrives after anything lena's socket sent before it would have.
  await sleep(300)
  watch.push("shout", {body: "walt"})
  await waitFor("walt to hear his own shout", () => heard.includes("walt"))
  await sleep(300)
  eq(heard, ["before", "walt"], "the shouts walt heard")
  eq(leaver.stats.closes, 0, "lena's socket closes")
})
