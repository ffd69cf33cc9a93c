// Streams a ZIP with client-zip (the page's writer) to a file: SMALL small entries, one
// entry of BIG bytes, then two small entries placed past 4 GiB. Memory stays flat: every
// entry is a stream generated as the writer asks for it. Prints {"peak_rss": bytes}.
// Usage: node zip_writer.mjs <client-zip index.js> <output.zip> <small entries> <big bytes>
import { open } from "node:fs/promises";
import { pathToFileURL } from "node:url";

const [library, output, small, big] = process.argv.slice(2);
const { makeZip } = await import(pathToFileURL(library).href);
const CHUNK = new Uint8Array(1 << 20).map((_, i) => (i * 31 + 7) & 0xff);
let peak = 0;
const sample = () => { peak = Math.max(peak, process.memoryUsage().rss); };

function pattern(size) {
  let sent = 0;
  return new ReadableStream({
    pull(controller) {
      const n = Math.min(CHUNK.length, size - sent);
      if (n <= 0) { controller.close(); return; }
      controller.enqueue(n === CHUNK.length ? CHUNK.slice() : CHUNK.slice(0, n));
      sent += n;
      if ((sent & ((1 << 28) - 1)) === 0) sample();
    },
  });
}

function* entries() {
  for (let i = 0; i < Number(small); i++) {
    yield { name: `small/${String(i).padStart(6, "0")}.dcm`, input: `entry ${i}`, lastModified: new Date(0) };
    if (i % 10000 === 0) sample();
  }
  yield { name: "big.bin", input: pattern(Number(big)), size: Number(big), lastModified: new Date(0) };
  yield { name: "after/1.dcm", input: "after the big entry", lastModified: new Date(0) };
  yield { name: "after/2.dcm", input: pattern(3 << 20), size: 3 << 20, lastModified: new Date(0) };
}

// Like a FileSystemWritableFileStream: each chunk is written before the next is taken.
const file = await open(output, "w");
await makeZip(entries()).pipeTo(new WritableStream({
  async write(chunk) { await file.write(chunk); },
  async close() { await file.close(); },
}));
sample();
console.log(JSON.stringify({ peak_rss: peak }));
