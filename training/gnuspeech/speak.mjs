// GnuSpeech (articulatory synthesis, its WebAssembly build) as a speech engine for hark_training.engines.
//
//   node speak.mjs <voice> <tempo> <pitch-semitones> <text>    one WAV file to stdout
//   node speak.mjs --serve                                     many: one JSON request per stdin line
//
// voice: male | female | large_child | small_child | baby. tempo: 1.0 is the default speed. pitch: semitones
// added to the voice's pitch offset. In --serve mode each line is {"voice", "tempo", "pitch", "text"} and each
// answer is the WAV's length as a 4-byte little-endian integer, then the WAV (length 0 when it failed; the reason
// goes to stderr). One process serves many texts because the first synthesis in a process costs several times
// what later ones do. The package's own synthesize() fixes the pitch; this sets it through the same control
// model file.
import { createHash } from 'node:crypto'
import { createInterface } from 'node:readline'
import { wrapEmscriptenModuleHeap } from 'wasm-heap-manager'
import { defaultTrmControlModelFileContent } from '@echogarden/gnuspeech-wasm/dist/utilities/DefaultTrmControlModel.js'
import initializer from '@echogarden/gnuspeech-wasm/wasm/gnuspeech.js'

const VOICES = ['male', 'female', 'large_child', 'small_child', 'baby']
const DEFAULT_PITCH_OFFSET = '-4.0'
const DATA = '/data/en'

// GnuSpeech's random intonation draws its seed from crypto.getRandomValues, once per text: from the system's
// entropy every rendering differed, run to run and with what the process had said before. Answered from a hash
// of the request instead, a text with one voice, tempo and pitch is the same speech on every run and in any
// order, and different requests still get different intonation.
let request = ''
Object.defineProperty(globalThis.crypto, 'getRandomValues', {
	configurable: true,
	value: (view) => {
		const bytes = new Uint8Array(view.buffer, view.byteOffset, view.byteLength)
		for (let block = 0, at = 0; at < bytes.length; block++) {
			const digest = createHash('sha256').update(`${request}#${block}`).digest()
			bytes.set(digest.subarray(0, bytes.length - at), at)
			at += digest.length
		}
		return view
	},
})

const m = await initializer()
const heap = wrapEmscriptenModuleHeap(m)

function synthesize(voice, tempo, pitch, text) {
	if (!VOICES.includes(voice)) throw new Error(`unknown voice ${voice}; known: ${VOICES.join(', ')}`)
	if (!(tempo > 0) || !Number.isFinite(pitch) || !String(text).trim()) throw new Error('needs tempo > 0, a pitch and a text')
	const config = defaultTrmControlModelFileContent
		.replace('voice_name = male', `voice_name = ${voice}`)
		.replace('tempo = 1.0', `tempo = ${tempo}`)
		.replace(`pitch_offset = ${DEFAULT_PITCH_OFFSET}`, `pitch_offset = ${Number(DEFAULT_PITCH_OFFSET) + pitch}`)
	m.FS.writeFile(`${DATA}/trm_control_model.txt`, config)
	request = JSON.stringify([voice, tempo, pitch, String(text)])
	const refs = [String(text), './out.wav', DATA, './out-params.txt'].map((s) => heap.allocNullTerminatedUtf8String(s))
	try {
		m._GnuSpeech_synthesizeToFile(refs[0].address, refs[1].address, refs[2].address, refs[3].address, false)
		return m.FS.readFile('./out.wav')
	} finally {
		refs.forEach((r) => r.free())
	}
}

function lengthOf(n) {
	const header = Buffer.alloc(4)
	header.writeUInt32LE(n)
	return header
}

const args = process.argv.slice(2)
if (args[0] === '--serve') {
	for await (const line of createInterface({ input: process.stdin })) {
		if (!line.trim()) continue
		try {
			const { voice, tempo, pitch, text } = JSON.parse(line)
			const wav = synthesize(voice, Number(tempo), Number(pitch), text)
			process.stdout.write(lengthOf(wav.length))
			process.stdout.write(wav)
		} catch (e) {
			process.stderr.write(`gnuspeech: ${e.message}\n`)
			process.stdout.write(lengthOf(0))
		}
	}
} else {
	const [voice, tempo, pitch, ...words] = args
	try {
		process.stdout.write(synthesize(voice, Number(tempo), Number(pitch), words.join(' ')))
	} catch (e) {
		process.stderr.write(`gnuspeech: ${e.message}\nusage: node speak.mjs <voice> <tempo> <pitch-semitones> <text> | --serve\n`)
		process.exit(2)
	}
}
