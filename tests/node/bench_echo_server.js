// Benchmark peer: an echo server on Node's `ws` (no permessage-deflate) on 127.0.0.1:PORT.
// Every text and binary message is sent back; `ws` answers pings and closes.
//   node bench_echo_server.js PORT
"use strict"
const {WebSocketServer} = require("ws")

const port = Number(process.argv[2])
if(!port){ console.error("usage: node bench_echo_server.js PORT"); process.exit(2) }
const server = new WebSocketServer({host: "127.0.0.1", port, perMessageDeflate: false, clientTracking: false})
server.on("connection", (ws) => {
  ws.on("message", (data, isBinary) => ws.send(data, {binary: isBinary}))
  ws.on("error", () => {})
})
server.on("listening", () => console.log(`bench_echo_server listening on 127.0.0.1:${port}`))
