import { it } from 'node:test'
import assert from 'node:assert/strict'
import { generateKeyPairSync } from 'node:crypto'
import { createLogger, type LogFormat } from '../../../src/core/log.ts'

// The names a log field may carry a secret under, written out here rather than read from
// REDACTED_FIELDS: a test that iterates the list itself cannot notice a name removed from it.
const MUST_REDACT = [
  'key', 'privateKey', 'private_key', 'keyPem', 'token', 'joinToken', 'secret', 'password',
  'certificate', 'cert', 'certPem', 'certificates', 'authorization', 'Authorization', 'cookie',
  'signature', 'pem', 'der', 'idToken', 'id_token', 'jwt',
]

for (const format of ['json', 'text'] as LogFormat[]) {
  it(`every secret-bearing field name is censored at the top level and nested three deep (${format})`, () => {
    const lines: string[] = []
    const log = createLogger({ format, level: 'info', sink: { write: (l) => void lines.push(l) } })
    for (const f of MUST_REDACT) {
      log.info({ [f]: `leak-top-${f}`, a: { [f]: `leak-1-${f}`, b: { [f]: `leak-2-${f}`, c: { [f]: `leak-3-${f}` } } } }, `field ${f}`)
    }
    assert.equal(lines.length, MUST_REDACT.length)
    const leaked = MUST_REDACT.filter((f, i) => /leak-/.test(lines[i]!))
    assert.deepEqual(leaked, [], `fields written in clear: ${leaked.join(', ')}`)
    for (const [i, f] of MUST_REDACT.entries()) assert.match(lines[i]!, new RegExp(`field ${f}`), 'the line itself is kept')
  })
}

it('key bytes in a typed array or DataView are censored, not written as numbers', () => {
  const lines: string[] = []
  const log = createLogger({ level: 'info', sink: { write: (l) => void lines.push(l) } })
  const bytes = new Uint8Array([0x30, 0x81, 0x87, 0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86])
  log.info({ material: bytes, view: new DataView(bytes.buffer), nested: { deeper: { raw: bytes } } }, 'typed arrays')
  assert.equal(lines.length, 1)
  assert.doesNotMatch(lines[0]!, /"0":48|48,129,135/, 'no byte values in the line')
  const rec = JSON.parse(lines[0]!) as Record<string, any>
  assert.equal(rec.material, '[redacted]')
  assert.equal(rec.view, '[redacted]')
  assert.equal(rec.nested.deeper.raw, '[redacted]')
})

it('the field scrub censors a whole PEM block even where the line scrub would stop (a quote inside the body)', () => {
  // The two layers overlap on purpose; this case reaches only the first, so the test notices
  // it being weakened although the second still covers ordinary PEM.
  const lines: string[] = []
  const log = createLogger({ level: 'info', sink: { write: (l) => void lines.push(l) } })
  const pem = '-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMG"tail-of-the-key-body-abc\n-----END PRIVATE KEY-----\n'
  log.info({ note: `before ${pem} after`, nested: { deeper: [pem] } }, 'pem with a quote')
  assert.equal(lines.length, 1)
  assert.doesNotMatch(lines[0]!, /MIGHAgEAMBMG|tail-of-the-key-body/)
  const rec = JSON.parse(lines[0]!) as Record<string, any>
  assert.equal(rec.note, 'before [redacted]\n after')
  assert.equal(rec.nested.deeper[0], '[redacted]\n')
})

it('secrets in the message itself (which no field scrub sees) are censored by the line scrub', () => {
  const lines: string[] = []
  const log = createLogger({ level: 'info', sink: { write: (l) => void lines.push(l) } })
  const secret = 'Q2hhbmdlTWVQbGVhc2VJdElzQVZlcnlMb25nU2VjcmV'
  const pem = '-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----'
  log.info(`joining with tok-0123456789ab.${secret} now`)
  log.info(`loaded ${pem} from memory`)
  log.info(`cert ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2guY29t and more`)
  assert.equal(lines.length, 3)
  const msgs = lines.map((l) => String((JSON.parse(l) as { msg: string }).msg))
  assert.equal(msgs[0], 'joining with tok-0123456789ab.[redacted] now', 'the token name stays, its secret goes')
  assert.equal(msgs[1], 'loaded [redacted] from memory')
  assert.equal(msgs[2], 'cert [redacted] and more')
})

function collect(): { log: ReturnType<typeof createLogger>; lines: string[] } {
  const lines: string[] = []
  return { log: createLogger({ level: 'info', sink: { write: (l) => void lines.push(l) } }), lines }
}

it('a KeyObject in a field is written as [redacted], not as an empty object', () => {
  const { log, lines } = collect()
  const { privateKey } = generateKeyPairSync('ed25519')
  log.info({ held: privateKey, nested: { k: privateKey } }, 'key object')
  const rec = JSON.parse(lines[0]!) as Record<string, any>
  assert.equal(rec.held, '[redacted]')
  assert.equal(rec.nested.k, '[redacted]')
})

it('a Buffer nested deeper than the field scrub walks is censored on the line', () => {
  const { log, lines } = collect()
  log.info({ a: { b: { c: { d: { e: { material: Buffer.from('deep-buffer-secret') } } } } } }, 'deep buffer')
  assert.equal(lines.length, 1)
  assert.doesNotMatch(lines[0]!, /"data":\[|100,101,101,112/, 'no byte values in the line')
  assert.equal((JSON.parse(lines[0]!) as Record<string, any>).a.b.c.d.e.material, '[redacted]')
})

it('a PEM block cut off before its END line is censored in the message too', () => {
  const { log, lines } = collect()
  log.info('upstream said: -----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg')
  assert.equal((JSON.parse(lines[0]!) as { msg: string }).msg, 'upstream said: [redacted]')
})

it('the field scrub censors an unterminated PEM block with a quote in it (where the line scrub stops)', () => {
  const { log, lines } = collect()
  log.info({ note: 'got -----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMG"tail-of-the-key-body-abc' }, 'cut pem with a quote')
  assert.doesNotMatch(lines[0]!, /MIGHAgEAMBMG|tail-of-the-key-body/)
  assert.equal((JSON.parse(lines[0]!) as Record<string, string>).note, 'got [redacted]')
})

it('null fields stay null and a circular record is logged, not thrown on (the walk is bounded)', () => {
  const { log, lines } = collect()
  const loop: Record<string, unknown> = { name: 'loop' }
  loop.self = loop
  const ring: unknown[] = []
  ring.push(ring)
  log.info({ gone: null, deep: { gone: null } }, 'nulls')
  log.info({ loop }, 'circular')
  log.info({ ring }, 'circular array')
  assert.equal(lines.length, 3)
  const rec = JSON.parse(lines[0]!) as Record<string, any>
  assert.equal(rec.gone, null)
  assert.equal(rec.deep.gone, null)
  assert.match(lines[1]!, /"msg":"circular"/)
})
