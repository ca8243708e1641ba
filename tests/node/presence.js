// phoenix.js's own Presence converges on every client: joins, several metas under one key,
// a socket closing, a channel leaving.
"use strict"
const {Presence, check, connect, eq, join, keys, metas, reply, run, sleep, waitFor} = require("./common")

const TOPIC = "room:p"

function member(label, params){
  const socket = connect(label)
  const channel = socket.channel(TOPIC, params)
  const presence = new Presence(channel)
  let syncs = 0
  presence.onSync(() => { syncs++ })
  return {label, socket, channel, presence, syncs: () => syncs}
}

// The presence list as plain, comparable data: [[key, [meta, ...]], ...] sorted by key, metas
// sorted by phx_ref (their order depends on whether they came in a state or a diff).
function snapshot(presence){
  const byRef = (a, b) => a.phx_ref < b.phx_ref ? -1 : a.phx_ref > b.phx_ref ? 1 : 0
  const list = presence.list((key, p) => [key, p.metas.slice().sort(byRef)])
  return JSON.parse(JSON.stringify(list.sort((a, b) => a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)))
}

// Waits until every member's Presence lists `want` (a key => count of metas map) and all
// of them agree exactly, phx_refs included.
async function converge(members, want, what){
  const wantKeys = Object.keys(want).sort()
  await waitFor(`${members.map(m => m.label).join(", ")} to converge to ${JSON.stringify(want)} (${what})`,
    () => members.every(m =>
      JSON.stringify(keys(m.presence)) === JSON.stringify(wantKeys) &&
      wantKeys.every(k => metas(m.presence, k).length === want[k])))
  const first = snapshot(members[0].presence)
  for(const m of members.slice(1)){
    eq(snapshot(m.presence), first, `${m.label}'s presence list compared with ${members[0].label}'s (${what})`)
  }
  for(const [key, ms] of first){
    for(const meta of ms){
      check(typeof meta.phx_ref === "string" && meta.phx_ref.length > 0,
        `every meta has a phx_ref string, got ${JSON.stringify(meta)} under ${key}`)
    }
    const refs = ms.map(meta => meta.phx_ref)
    check(new Set(refs).size === refs.length, `the phx_refs under ${key} are distinct: ${JSON.stringify(refs)}`)
  }
  return first
}

run(15000, async () => {
  const alice = member("alice", {user: "alice", name: "Alice"})
  const bob = member("bob", {user: "bob"})
  await join(alice.channel, "alice's join")
  await join(bob.channel, "bob's join")

  await converge([alice, bob], {alice: 1, bob: 1}, "after both joins")
  const aliceMeta = metas(alice.presence, "alice")[0]
  eq(aliceMeta.name, "Alice", "alice's meta name")
  const bobMeta = metas(alice.presence, "bob")[0]
  check(!("name" in bobMeta), `bob joined without a name, so his meta has none: ${JSON.stringify(bobMeta)}`)
  check(alice.syncs() >= 1 && bob.syncs() >= 1, "onSync fired on both")

  // A second socket tracked under the key "alice": two metas for one key.
  const phone = member("alice-phone", {user: "alice", name: "Alice (phone)"})
  await join(phone.channel, "the second join as alice")
  const two = await converge([alice, bob, phone], {alice: 2, bob: 1}, "after the second join as alice")
  const names = two.find(([k]) => k === "alice")[1].map(m => m.name).sort()
  eq(names, ["Alice", "Alice (phone)"], "the names in alice's two metas")

  // That socket closes: its meta goes, the first one stays (with its phx_ref).
  phone.socket.disconnect(null, 1000, "bye")
  await converge([alice, bob], {alice: 1, bob: 1}, "after the second alice socket closed")
  eq(metas(alice.presence, "alice"), [aliceMeta], "alice's remaining meta")

  // bob leaves the channel: alice sees only herself.
  const left = await reply(bob.channel.leave(), "the reply to bob's leave")
  eq(left.response, {}, "the leave reply's response")
  eq(bob.channel.state, "closed", "bob's channel state after the leave")
  await converge([alice], {alice: 1}, "after bob left")

  // alice's socket closes; a newcomer does not see her.
  alice.socket.disconnect(null, 1000, "bye")
  const zed = member("zed", {user: "zed"})
  await join(zed.channel, "zed's join")
  await converge([zed], {zed: 1}, "after alice's socket closed")
  await sleep(200)
  eq(keys(zed.presence), ["zed"], "zed's presence keys a moment later")
})
