// Loaded into configurable-http-proxy with NODE_OPTIONS=--require (twinhub.core.components).
//
// Node answers a request whose headers are too large (or malformed) with a bare 431/400 and
// closes the socket at once; the rest of the client's request is still unread, so the kernel
// sends a TCP reset and the client sees "connection reset" instead of the answer. Here the
// answer carries a JSON message and the socket is drained for a moment before it is closed
// (a lingering close), so the status reaches the client.
"use strict";

const http = require("node:http");
const https = require("node:https");

const LINGER_MS = 2000;
const LINGER_BYTES = 8 * 1024 * 1024;

function answer(code, description) {
  const body = JSON.stringify({ code, description });
  const reason = http.STATUS_CODES[code] || "Bad Request";
  return (
    `HTTP/1.1 ${code} ${reason}\r\n` +
    "Content-Type: application/json\r\n" +
    `Content-Length: ${Buffer.byteLength(body)}\r\n` +
    "Connection: close\r\n\r\n" +
    body
  );
}

function onClientError(err, socket) {
  if (err.code === "ECONNRESET" || !socket.writable) {
    socket.destroy();
    return;
  }
  const limit = Math.round(http.maxHeaderSize / 1024);
  const response =
    err.code === "HPE_HEADER_OVERFLOW"
      ? answer(431, `request headers too large: at most ${limit} KiB in all`)
      : err.code === "ERR_HTTP_REQUEST_TIMEOUT"
        ? answer(408, "request not received in time")
        : answer(400, `malformed HTTP request (${err.code || "parse error"})`);
  let drained = 0;
  socket.on("data", (chunk) => {
    drained += chunk.length;
    if (drained > LINGER_BYTES) socket.destroy();
  });
  socket.on("error", () => socket.destroy());
  socket.on("end", () => socket.destroy());
  // A fixed deadline, not an idle timer: a client trickling bytes must not hold it open.
  setTimeout(() => socket.destroy(), LINGER_MS).unref();
  socket.resume();
  socket.end(response);
}

// The proxy decodes the path to route it; a path that is not valid percent-encoding
// (e.g. "%ff") makes that throw, and the request ends as the hub's HTML 500 page. Refuse
// such a path with a JSON 400 before routing.
function checkedPath(listener) {
  return function (req, res) {
    try {
      decodeURIComponent(new URL(req.url, "http://localhost").pathname);
    } catch (err) {
      const body = JSON.stringify({
        code: 400,
        description: "the request path is not valid percent-encoded UTF-8",
      });
      res.writeHead(400, {
        "Content-Type": "application/json",
        "Content-Length": Buffer.byteLength(body),
      });
      res.end(body);
      return;
    }
    return listener.call(this, req, res);
  };
}

for (const mod of [http, https]) {
  const create = mod.createServer;
  mod.createServer = function (...args) {
    const last = args.length - 1;
    if (last >= 0 && typeof args[last] === "function") args[last] = checkedPath(args[last]);
    const server = create.apply(this, args);
    server.on("clientError", onClientError);
    return server;
  };
}
