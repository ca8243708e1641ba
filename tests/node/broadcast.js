// A shout is broadcast to every member of the topic, the sender included.
"use strict"
const {connect, eq, join, run, sleep, waitFor} = require("./common")

run(15000, async () => {
  const members = ["one", "two"].map(user => {
    const socket = connect(user)
    const channel = socket.channel("room:b", {user})
    const shouts = []
    const frames = []
    channel.on("shout", payload => shouts.push(payload))
    socket.onMessage(msg => { if(msg.event === "shout"){ frames.push(msg) } })
    return {user, socket, channel, shouts, frames}
  })
  for(const m of members){ await join(m.channel, `the join of room:b by ${m.user}`) }

  members[0].channel.push("shout", {body: "hi"})
  await waitFor("both members to receive the shout",
    () => members.every(m => m.shouts.length >= 1))
  // Nothing more than one copy arrives.
  await sleep(300)
  for(const m of members){
    eq(m.shouts, [{body: "hi"}], `the shouts ${m.user} received`)
    eq(m.frames.map(f => [f.join_ref, f.ref, f.topic, f.event]), [[null, null, "room:b", "shout"]],
      `the [join_ref, ref, topic, event] of the broadcast ${m.user} received`)
  }

  // The other direction, and several in a row arrive in order.
  for(const body of ["a", "b", "c"]){ members[1].channel.push("shout", {body}) }
  await waitFor("both members to receive the shouts a, b, c",
    () => members.every(m => m.shouts.length >= 4))
  await sleep(300)
  for(const m of members){
    eq(m.shouts, [{body: "hi"}, {body: "a"}, {body: "b"}, {body: "c"}], `the shouts ${m.user} received`)
  }
})
