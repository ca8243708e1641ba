// A crashed channel: the server sends phx_error, phoenix.js rejoins by itself (its rejoin timer,
// 1 s the first time) over the same socket, and the channel works again.
"use strict"
const {Presence, check, connect, eq, join, keys, metas, reply, run, sleep, waitFor} = require("./common")

const TOPIC = "room:c"

run(15000, async () => {
  const socket = connect("carol")
  const frames = []
  socket.onMessage(msg => { if(msg.topic === TOPIC){ frames.push(msg) } })
  const channel = socket.channel(TOPIC, {user: "carol"})
  const presence = new Presence(channel)

  const joins = [] // {at, joinRef} of every successful join
  const errors = [] // {at, payload, state} of every channel error
  channel.onError(payload => errors.push({at: Date.now(), payload, state: channel.state}))
  const joinPush = channel.join()
  joinPush.receive("ok", () => joins.push({at: Date.now(), joinRef: channel.joinRef()}))
  await reply(joinPush, "the first join of room:c")
  await waitFor("carol in her own presence list",
    () => JSON.stringify(keys(presence)) === "[\"carol\"]" && presence.joinRef === channel.joinRef())
  const firstJoinRef = channel.joinRef()

  channel.push("crash", {})
  await waitFor("the channel error after the crash", () => errors.length >= 1)
  eq(errors[0].payload, {reason: "channel_crash"}, "the phx_error payload")
  eq(errors[0].state, "errored", "the channel state on the error")
  const errorFrame = frames.find(f => f.event === "phx_error")
  eq([errorFrame.join_ref, errorFrame.ref], [firstJoinRef, firstJoinRef], "[join_ref, ref] of the phx_error")

  await waitFor("phoenix.js to rejoin after the crash", () => joins.length >= 2 && channel.state === "joined")
  const rejoin = joins[1]
  check(rejoin.joinRef !== firstJoinRef, `the rejoin uses a new join_ref (both are ${firstJoinRef})`)
  check(rejoin.at - errors[0].at >= 900,
    `the rejoin came from the rejoin timer (1 s), not a reconnect: after ${rejoin.at - errors[0].at} ms`)
  eq(socket.stats.closes + socket.stats.errors, 0, "socket closes and errors: the crash only ends the channel")
  eq(socket.stats.opens, 1, "socket opens")

  const pong = await reply(channel.push("ping", {n: 2}), "the reply to ping after the rejoin")
  eq(pong.response, {pong: {n: 2}}, "the reply to ping after the rejoin")

  // A presence_state follows the rejoin (Presence only applies diffs after one), and carol is
  // listed once: her meta of the crashed join is gone.
  await waitFor("the presence_state of the rejoin and carol listed once",
    () => presence.joinRef === channel.joinRef() &&
      JSON.stringify(keys(presence)) === "[\"carol\"]" && metas(presence, "carol").length === 1)
  await sleep(300)
  eq(keys(presence), ["carol"], "the presence keys a moment after the rejoin")
  const after = metas(presence, "carol")
  eq(after.length, 1, "carol's metas after the rejoin")
  check(typeof after[0].phx_ref === "string", `carol's meta has a phx_ref: ${JSON.stringify(after[0])}`)
  eq(joins.length, 2, "successful joins")
  eq(errors.length, 1, "channel errors")
})
