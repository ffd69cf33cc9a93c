"use strict";
// The share page's download service worker (served by the API at download-worker.js, scope
// download/ under the stage). Where the File System Access API is missing (Firefox, Safari,
// phones), the page streams its ZIP through here: it registers a download under a random
// one-time id together with a MessagePort, then opens download/<id> in a hidden frame; this
// worker answers that navigation with a streamed attachment whose body it pulls from the
// page one chunk at a time over the port. The browser saves the stream to disk as it comes,
// and asks for the next chunk only when it has written the last (backpressure), so neither
// the page nor this worker ever holds more than a chunk of the archive.
//
// A MessagePort rather than a transferred ReadableStream: Safari cannot transfer streams.
// The worker never sees the share token or PIN (the page fetches the objects), keeps
// nothing on disk (no Cache Storage) and nothing in memory after a download ends.

const downloads = new Map();  // id -> { port, filename, client } until its address is opened
const ID = /^[0-9a-f]{32}$/;
const PAGE_CHECK_MS = 10000;

self.addEventListener("install", () => self.skipWaiting());

// The page registers a download: { id, filename } and the port its chunks come through.
// Its other messages (keep-alive, sent while a download runs) only keep this worker from
// being stopped as idle mid-download, as Firefox otherwise does.
self.addEventListener("message", (event) => {
  const { id, filename } = event.data || {};
  const [port] = event.ports;
  if (typeof id !== "string" || !ID.test(id) || !port) return;
  downloads.set(id, { port, filename: String(filename || ""), client: event.source && event.source.id });
  port.postMessage({ type: "registered" });
});

self.addEventListener("fetch", (event) => {
  const scope = self.registration.scope;
  if (!event.request.url.startsWith(scope)) return;
  const id = event.request.url.slice(scope.length);
  const download = ID.test(id) && downloads.get(id);
  downloads.delete(id);  // one-time: a second request for the same address finds nothing
  event.respondWith(download ? attachment(download) : new Response("This download link has expired.", {
    status: 404, headers: { "Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store" } }));
});

// An archive name the page chose, reduced to letters, digits, ".", "_" and "-" (no path, no
// quote to break the header), ending in .zip.
function archiveName(name) {
  const clean = name.replace(/[^A-Za-z0-9._-]/g, "_").replace(/^[._]+/, "").slice(0, 100).replace(/\.zip$/i, "");
  return (clean || "download") + ".zip";
}

function attachment({ port, filename, client }) {
  let waiting = null;  // the pending pull's { resolve, reject }
  port.onmessage = ({ data }) => {
    const pull = waiting;
    waiting = null;
    if (pull) pull.resolve(data);
  };
  const body = new ReadableStream({
    // One chunk per pull; the browser pulls again once it has taken this one. While waiting,
    // the page is checked every few seconds: a closed tab fails the download instead of
    // leaving it stalled.
    async pull(controller) {
      const reply = new Promise((resolve, reject) => { waiting = { resolve, reject }; });
      const check = setInterval(async () => {
        if (client && !(await self.clients.get(client)) && waiting) waiting.reject(new Error("the page closed"));
      }, PAGE_CHECK_MS);
      port.postMessage({ type: "pull" });
      try {
        const message = await reply;
        if (message.type === "chunk") controller.enqueue(message.chunk);
        else if (message.type === "done") { controller.close(); port.close(); }
        else throw new Error("the page stopped the download");
      } catch (error) {
        port.close();
        controller.error(error);
      } finally {
        clearInterval(check);
      }
    },
    // The user cancelled the download: the page stops fetching.
    cancel() {
      port.postMessage({ type: "cancel" });
      port.close();
    },
  });
  return new Response(body, { headers: {
    "Content-Type": "application/zip",
    "Content-Disposition": `attachment; filename="${archiveName(filename)}"`,
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
  } });
}
