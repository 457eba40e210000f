#!/usr/bin/env node
// A minimal Node.js client of Hark: stream a WAV file (16-bit PCM, mono, any supported rate) and print
// each event as it arrives. The proto is loaded at run time from proto/ (no generated code needed).
//
//   node clients/node/stream.js yes.wav [--server 127.0.0.1:50051] [--token T] [--tls-ca ca.pem]
//
// Output: one JSON object per event, {"label", "score", "time_s"}; the stream's model on stderr.
"use strict";

const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_ROOT = path.resolve(__dirname, "..", "..", "proto");
const CHUNK_SECONDS = 0.1;

function parseArgs(argv) {
  const args = { server: process.env.HARK_SERVER || "127.0.0.1:50051", token: process.env.HARK_TOKEN, file: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--server") args.server = argv[++i];
    else if (a === "--token") args.token = argv[++i];
    else if (a === "--tls-ca") args.tlsCa = argv[++i];
    else if (a === "-h" || a === "--help") args.help = true;
    else args.file = a;
  }
  return args;
}

// The PCM of a 16-bit mono WAV and its rate: the fmt chunk, then the data chunk (other chunks skipped).
function readWav(file) {
  const buf = fs.readFileSync(file);
  if (buf.toString("ascii", 0, 4) !== "RIFF" || buf.toString("ascii", 8, 12) !== "WAVE") {
    throw new Error(`${file} is not a WAV file`);
  }
  let offset = 12;
  let rate = 0;
  while (offset + 8 <= buf.length) {
    const id = buf.toString("ascii", offset, offset + 4);
    const size = buf.readUInt32LE(offset + 4);
    const body = offset + 8;
    if (id === "fmt ") {
      const format = buf.readUInt16LE(body);
      const channels = buf.readUInt16LE(body + 2);
      const bits = buf.readUInt16LE(body + 14);
      if (format !== 1 || channels !== 1 || bits !== 16) {
        throw new Error(`${file}: send 16-bit mono PCM (sox in.wav -b 16 -c 1 out.wav)`);
      }
      rate = buf.readUInt32LE(body + 4);
    } else if (id === "data") {
      const end = Math.min(buf.length, body + size);
      return { rate, pcm: buf.subarray(body, end - ((end - body) % 2)) };
    }
    offset = body + size + (size % 2);
  }
  throw new Error(`${file} has no data chunk`);
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  if (args.help || !args.file) {
    console.error("usage: node stream.js FILE.wav [--server HOST:PORT] [--token TOKEN] [--tls-ca CA.pem]");
    process.exit(args.help ? 0 : 2);
  }
  let wav;
  try {
    wav = readWav(args.file);
  } catch (e) {
    console.error(`hark-node: error: ${e.message}`);
    process.exit(2);
  }
  const definition = protoLoader.loadSync("hark/v1/hark.proto", {
    includeDirs: [PROTO_ROOT],
    keepCase: false,
    enums: String,
    defaults: true,
  });
  const hark = grpc.loadPackageDefinition(definition).hark.v1;
  const credentials = args.tlsCa
    ? grpc.credentials.createSsl(fs.readFileSync(args.tlsCa))
    : grpc.credentials.createInsecure();
  const client = new hark.Classifier(args.server, credentials);
  const metadata = new grpc.Metadata();
  if (args.token) metadata.set("authorization", `Bearer ${args.token}`);

  const call = client.StreamClassify(metadata);
  call.on("data", (response) => {
    if (response.started) {
      const s = response.started;
      console.error(`hark-node: streaming to ${s.model} v${s.version} (labels: ${s.labels.join(", ")})`);
    } else if (response.event) {
      const e = response.event;
      console.log(JSON.stringify({ label: e.label, score: Number(e.score.toFixed(6)), time_s: e.timeS }));
    }
  });
  call.on("error", (err) => {
    console.error(`hark-node: error: ${grpc.status[err.code]}: ${err.details}`);
    process.exitCode = err.code === grpc.status.UNAVAILABLE ? 3 : 1;
    client.close();
  });
  call.on("end", () => client.close());

  call.write({ config: { sampleRateHz: wav.rate, encoding: "PCM_S16LE" } });
  const step = 2 * Math.round(wav.rate * CHUNK_SECONDS);
  for (let start = 0; start < wav.pcm.length; start += step) {
    call.write({ audio: { pcm: wav.pcm.subarray(start, start + step) } });
  }
  call.end(); // half-close: the server sends its last events, then ends the call
}

main();
