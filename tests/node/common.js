// Shared harness of the phoenix.js scenarios (tests/tests/phoenix_js.rs runs one script per
// scenario as `node <scenario>.js ws://127.0.0.1:PORT/socket`).
//
// A scenario prints `ok <scenario>` and exits 0, or prints why it failed (an assertion, or on
// its hard timeout what it was waiting for) followed by the last wire events, and exits 1.
"use strict"

const path = require("node:path")
const assert = require("node:assert/strict")
const {Socket, Presence} = require("phoenix")
const WebSocket = require("ws")

const scenario = path.basename(process.argv[1], ".js")
const endpoint = process.argv[2]

// What the scenario is doing or waiting for right now, for the timeout message.
let waitingFor = "the scenario to start"
// The last wire events (phoenix.js logger output, socket opens/closes), printed on failure.
const trace = []
const TRACE_MAX = 300
const sockets = []
const startedAt = Date.now()
let finished = false

function note(line){
  trace.push(`${String(Date.now() - startedAt).padStart(6)} ms ${line}`)
  if(trace.length > TRACE_MAX){ trace.shift() }
}

function fail(message){
  if(finished){ return }
  finished = true
  console.log(`FAIL ${scenario}: ${message}`)
  console.log(`last step: ${waitingFor}`)
  console.log(`--- last ${trace.length} events ---`)
  for(const line of trace){ console.log(line) }
  process.exit(1)
}

function describe(value){
  try { return JSON.stringify(value) } catch(_e){ return String(value) }
}

// Records what the scenario waits for; the hard timeout reports the last one.
function step(description){
  waitingFor = description
  note(`step: ${description}`)
}

// Plain JSON copy: phoenix's Presence uses null-prototype objects, which deepStrictEqual
// would not consider equal to object literals.
function plain(value){ return value === undefined ? undefined : JSON.parse(JSON.stringify(value)) }

// A failed expectation (reported by its message alone; anything else also gets its stack).
class Mismatch extends Error {}

function eq(actual, expected, what){
  try {
    assert.deepStrictEqual(plain(actual), plain(expected))
  } catch(_e){
    throw new Mismatch(`${what}: expected ${describe(expected)}, got ${describe(actual)}`)
  }
}

function check(condition, what){
  if(!condition){ throw new Mismatch(what) }
}

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

// Polls `predicate` until it holds; the scenario's hard timeout bounds the wait.
async function waitFor(description, predicate, everyMs = 20){
  step(description)
  for(;;){
    if(predicate()){ return }
    await sleep(everyMs)
  }
}

// A connected phoenix.js Socket over the `ws` package (Node 20 has no global WebSocket, and
// without a transport phoenix.js would silently fall back to long-polling). `stats` counts the
// socket's opens, closes and errors.
function connect(name, opts = {}){
  if(!endpoint || !/^wss?:\/\//.test(endpoint)){
    console.log(`usage: node ${scenario}.js ws://HOST:PORT/socket`)
    process.exit(2)
  }
  const socket = new Socket(endpoint, Object.assign({
    transport: WebSocket,
    logger: (kind, msg, data) => note(`[${name}] ${kind}: ${msg} ${data === undefined ? "" : describe(data)}`),
  }, opts))
  const stats = {opens: 0, closes: 0, errors: 0}
  socket.onOpen(() => { stats.opens++; note(`[${name}] socket open`) })
  socket.onClose(e => { stats.closes++; note(`[${name}] socket close ${e && e.code} ${e && e.reason}`) })
  socket.onError(e => { stats.errors++; note(`[${name}] socket error ${e && e.message}`) })
  socket.name = name
  socket.stats = stats
  sockets.push(socket)
  socket.connect()
  return socket
}

// Resolves with `{status, response}` when `push` (a join, push or leave) gets a reply with one
// of `statuses`; rejects on any other reply and on the push's own timeout.
function reply(push, description, statuses = ["ok"]){
  step(description)
  return new Promise((resolve, reject) => {
    let settled = false
    const settle = (status, response) => {
      if(settled){ return }
      settled = true
      if(statuses.includes(status)){
        resolve({status, response})
      } else {
        reject(new Mismatch(`${description}: got status ${describe(status)} with ${describe(response)}`))
      }
    }
    for(const status of ["ok", "error", "timeout"]){
      push.receive(status, response => settle(status, response))
    }
  })
}

// Joins `channel` and resolves with the join reply's response; rejects on error or timeout.
async function join(channel, description = `join ${channel.topic}`){
  const {response} = await reply(channel.join(), description)
  return response
}

function keys(presence){ return presence.list(key => key).sort() }

function metas(presence, key){
  const found = presence.list((k, p) => k === key ? p.metas : null).find(m => m !== null)
  return found || []
}

// Disconnects every socket (waiting at most 2 s for their closes), then reports success.
async function finish(){
  step("the sockets to disconnect")
  await Promise.all(sockets.map(socket => Promise.race([
    new Promise(resolve => socket.disconnect(resolve, 1000, "done")),
    sleep(2000),
  ])))
  finished = true
  console.log(`ok ${scenario}`)
  process.exit(0)
}

// Runs a scenario with a hard timeout.
function run(timeoutMs, body){
  setTimeout(() => fail(`timed out after ${timeoutMs} ms waiting for: ${waitingFor}`), timeoutMs)
  process.on("uncaughtException", e => fail(`uncaught ${e && e.stack || e}`))
  process.on("unhandledRejection", e => fail(`unhandled ${e && e.stack || e}`))
  Promise.resolve().then(body).then(finish, e => fail(e instanceof Mismatch ? e.message : (e && e.stack || String(e))))
}

module.exports = {
  Presence, check, connect, eq, fail, join, keys, metas, note, reply, run, sleep, step, waitFor,
}
