// Benchmark peer for fan-out: Node's `ws` on 127.0.0.1:PORT speaking just enough of Phoenix's
// V2 protocol: a `phx_join` is answered `ok` and subscribes the socket; a `shout` is encoded
// once and sent to every subscriber as [null,null,topic,"shout",payload].
//   node bench_fanout_server.js PORT
"use strict"
const {WebSocketServer} = require("ws")

const port = Number(process.argv[2])
if(!port){ console.error("usage: node bench_fanout_server.js PORT"); process.exit(2) }
const subscribers = new Set()
const server = new WebSocketServer({host: "127.0.0.1", port, perMessageDeflate: false, clientTracking: false})
server.on("connection", (ws) => {
  ws.on("message", (data, isBinary) => {
    if(isBinary){ return }
    let message
    try { message = JSON.parse(data) } catch(_) { return }
    if(!Array.isArray(message) || message.length !== 5){ return }
    const [joinRef, ref, topic, event, payload] = message
    if(event === "phx_join"){
      subscribers.add(ws)
      ws.send(JSON.stringify([joinRef, ref, topic, "phx_reply", {status: "ok", response: {}}]))
    } else if(event === "shout"){
      const shout = JSON.stringify([null, null, topic, "shout", payload])
      const frame = Buffer.from(shout) // encoded once for every subscriber
      for(const s of subscribers){ s.send(frame, {binary: false}) }
    }
  })
  ws.on("close", () => subscribers.delete(ws))
  ws.on("error", () => {})
})
server.on("listening", () => console.log(`bench_fanout_server listening on 127.0.0.1:${port}`))
