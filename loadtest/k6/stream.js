// k6 scenario: USERS virtual users, each streaming audio to Hark over gRPC (StreamClassify) in real time.
//
//   k6 run -e HARK_ADDR=127.0.0.1:50051 -e USERS=50 -e DURATION=60s -e AUDIO=loadtest/k6/audio.pcm loadtest/k6/stream.js
//
// AUDIO is raw 16 kHz mono PCM_S16LE (loadtest/bench.py caches speech; `hark`'s tests write their own);
// without it a generated tone with noise is sent. Each iteration is one stream of STREAM_S seconds of
// 100 ms chunks, paced in real time, with per-hop scores. Thresholds: no stream errors, every stream
// answered with scores; the run fails (exit 99) otherwise.
import grpc from 'k6/net/grpc';
import encoding from 'k6/encoding';
import { check } from 'k6';
import { Counter, Trend } from 'k6/metrics';
import { setTimeout } from 'k6/timers';

const ADDR = __ENV.HARK_ADDR || '127.0.0.1:50051';
const STREAM_S = Number(__ENV.STREAM_S || 3);
const CHUNK_BYTES = 3200; // 100 ms at 16 kHz, 16-bit

export const options = {
  scenarios: {
    streams: {
      executor: 'constant-vus',
      vus: Number(__ENV.USERS || 10),
      duration: __ENV.DURATION || '30s',
      gracefulStop: `${STREAM_S + 5}s`,
    },
  },
  thresholds: {
    hark_stream_errors: ['count==0'],
    hark_streams_ok: ['count>0'],
    checks: ['rate==1'],
  },
};

const client = new grpc.Client();
client.load([__ENV.PROTO_DIR || '../../proto'], 'hark/v1/hark.proto');

const audio = __ENV.AUDIO ? open(__ENV.AUDIO, 'b') : null;
const streamErrors = new Counter('hark_stream_errors');
const streamsOk = new Counter('hark_streams_ok');
const windowScores = new Counter('hark_window_scores');
const hopLatency = new Trend('hark_hop_latency', true);

function chunk(i) {
  if (audio) {
    const n = Math.floor(audio.byteLength / CHUNK_BYTES);
    const k = i % n;
    return encoding.b64encode(audio.slice(k * CHUNK_BYTES, (k + 1) * CHUNK_BYTES));
  }
  const buf = new ArrayBuffer(CHUNK_BYTES);
  const view = new DataView(buf);
  for (let j = 0; j < CHUNK_BYTES / 2; j++) {
    const t = (i * 1600 + j) / 16000;
    view.setInt16(2 * j, Math.round(8000 * Math.sin(2 * Math.PI * 440 * t) + 500 * (Math.random() - 0.5)), true);
  }
  return encoding.b64encode(buf);
}

let connected = false;

export default function () {
  if (!connected) {
    client.connect(ADDR, { plaintext: true, reflect: false });
    connected = true;
  }
  const chunks = Math.round(STREAM_S * 10);
  const offset = Math.floor(Math.random() * 100);
  const sent = [];
  let scores = 0;
  let failed = false;
  const stream = new grpc.Stream(client, 'hark.v1.Classifier/StreamClassify');
  stream.on('data', (msg) => {
    if (msg.scores) {
      scores++;
      const i = Math.max(0, Math.ceil(Math.round(msg.scores.endS * 16000) / 1600) - 1);
      if (i < sent.length) hopLatency.add(Date.now() - sent[i]);
    }
  });
  stream.on('error', (e) => {
    failed = true;
    streamErrors.add(1);
    console.error(`stream error: ${e.code} ${e.message}`);
  });
  stream.on('end', () => {
    windowScores.add(scores);
    const ok = check(scores, { 'stream answered with scores': (n) => n > 0 && !failed });
    if (ok) streamsOk.add(1);
  });
  stream.write({ config: { sampleRateHz: 16000, encoding: 'PCM_S16LE', emitScores: true } });
  const send = (i) => {
    if (i >= chunks) {
      stream.end();
      return;
    }
    sent.push(Date.now());
    stream.write({ audio: { pcm: chunk(offset + i) } });
    setTimeout(() => send(i + 1), 100);
  };
  send(0);
}
