import { before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { generateKeyPairSync, type KeyObject } from 'node:crypto'
import { createLogger, REDACTED_FIELDS, type LogFormat, type Logger } from '../../../src/core/log.ts'
import { createCaCertificate, issueLeaf } from '../../../src/pki/x509.ts'
import { signSshCertificate, sshCertificateLine } from '../../../src/pki/openssh.ts'
import { MemidError } from '../../../src/core/errors.ts'

const TOKEN_NAME = 'tok-0123456789ab'
const TOKEN_SECRET = 'Q2hhbmdlTWVQbGVhc2VJdElzQVZlcnlMb25nU2VjcmV'
const TOKEN = `${TOKEN_NAME}.${TOKEN_SECRET}`

interface Material {
  key: KeyObject
  rsaKey: KeyObject
  keyPem: string
  rsaPem: string
  keyDer: Buffer
  certPem: string
  caPem: string
  serial: string
  sshCertLine: string
}

let m: Material

/** Every fragment whose presence in a log would leak a key, a certificate body or a token secret. */
function secretFragments(): string[] {
  const out = new Set<string>([TOKEN_SECRET])
  for (const pem of [m.keyPem, m.rsaPem, m.certPem, m.caPem]) {
    for (const line of pem.split('\n')) if (!line.startsWith('-----') && line.length >= 16) out.add(line)
  }
  for (const der of [m.keyDer, m.key.export({ type: 'sec1', format: 'der' })]) {
    out.add(der.toString('hex').slice(0, 40))
    out.add(der.toString('base64').slice(8, 40))
    out.add(der.toString('base64url').slice(8, 40))
    // How JSON.stringify renders a Buffer: {"type":"Buffer","data":[48,129,...]}
    out.add(`[${[...der.subarray(0, 12)].join(',')}`)
  }
  const jwk = m.key.export({ format: 'jwk' })
  out.add(String(jwk.d))
  out.add(String(m.rsaKey.export({ format: 'jwk' }).d).slice(0, 40))
  out.add(m.sshCertLine.split(' ')[1]!.slice(20, 60))
  return [...out]
}

function collect(format: LogFormat = 'json'): { log: Logger; text: () => string; lines: () => string[] } {
  const lines: string[] = []
  const log = createLogger({ format, level: 'trace', sink: { write: (l) => void lines.push(l) } })
  return { log, text: () => lines.join(''), lines: () => lines.join('').split('\n').filter((l) => l !== '') }
}

/** Logs the whole identity in every shape we can think of a careless caller using. */
function logEverything(log: Logger): void {
  const identity = {
    bot: 'ci',
    serial: m.serial,
    key: m.key,
    privateKey: m.key,
    private_key: m.keyPem,
    keyPem: Buffer.from(m.keyPem),
    token: TOKEN,
    joinToken: TOKEN,
    certificate: m.certPem,
    cert: m.certPem,
    certPem: m.certPem,
    certificates: [m.certPem, m.caPem],
    der: m.keyDer,
    pem: m.rsaPem,
  }
  log.info({ identity }, 'identity obtained')
  log.info(identity, 'identity at the top level')
  log.info({ agent: { bot: { identity } } }, 'nested three deep')
  log.info({ a: { b: { c: { d: { e: { f: { keyMaterial: m.keyPem, blob: m.keyDer, token: TOKEN } } } } } } }, 'nested very deep')
  log.info({ services: [{ name: 'db', credential: { key: m.key, certPem: m.certPem } }] }, 'services')
  log.info({ note: `here is the key, oops: ${m.keyPem} and the cert ${m.certPem}` }, 'pem in an innocuous field')
  log.info({ note: m.rsaPem.trimEnd().split('\n').slice(0, 5).join('\n') }, 'a truncated pem')
  log.info({ chain: [m.caPem, m.certPem], blobs: [m.keyDer, new Uint8Array(m.keyDer)] }, 'arrays')
  log.info({ raw: m.keyDer, view: new DataView(m.keyDer.buffer, m.keyDer.byteOffset, m.keyDer.byteLength) }, 'buffers')
  log.info({ ssh: { line: m.sshCertLine }, note: `cert ${m.sshCertLine}` }, 'openssh certificate')
  log.info({ args: ['memid', 'start', '--token', TOKEN], env: { MEMID_TOKEN: TOKEN } }, 'token in innocuous fields')
  log.info({ headers: { Authorization: `Bearer ${TOKEN}`, cookie: `s=${TOKEN}` } }, 'headers')
  log.warn(`message text carrying the token ${TOKEN} and a key ${m.keyPem}`)
  log.error({ err: new Error(`parse failed near ${m.keyPem}`) }, 'an error quoting a key')
  log.error(new MemidError('ERR_BAD_REQUEST', `bad token ${TOKEN}`))
  log.child({ note: m.certPem, token: TOKEN }).info({ privateKey: m.rsaKey }, 'child logger bindings')
}

before(async () => {
  const ca = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const caPem = await createCaCertificate(ca.privateKey, ca.publicKey, 'memid test ca', 3_600_000)
  const leaf = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const issued = await issueLeaf({
    ca: { key: ca.privateKey, certPem: caPem }, publicKey: leaf.publicKey, commonName: 'bot-ci', ttlMs: 600_000, usage: 'client',
  })
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 })
  const sshUser = generateKeyPairSync('ed25519')
  const now = Date.now()
  const sshCert = signSshCertificate({
    type: 'user', publicKey: sshUser.publicKey, caKey: generateKeyPairSync('ed25519').privateKey, serial: 7n, keyId: 'bot=ci',
    principals: ['deploy'], validAfter: new Date(now - 60_000), validBefore: new Date(now + 600_000), extensions: {},
  })
  m = {
    key: leaf.privateKey,
    rsaKey: rsa.privateKey,
    keyPem: leaf.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string,
    rsaPem: rsa.privateKey.export({ type: 'pkcs1', format: 'pem' }) as string,
    keyDer: leaf.privateKey.export({ type: 'pkcs8', format: 'der' }),
    certPem: issued.pem,
    caPem,
    serial: issued.serial,
    sshCertLine: sshCertificateLine(sshCert, 'bot-ci'),
  }
})

describe('log redaction', () => {
  it('the test material really is what a leak would look like', () => {
    // Guards against a vacuous test: the fragments must appear when written without memid's logger.
    const sec1 = m.key.export({ type: 'sec1', format: 'der' })
    const naive = JSON.stringify({ k: m.keyPem, c: m.certPem, ca: m.caPem, r: m.rsaPem, t: TOKEN, d: m.keyDer, e: sec1, s: m.sshCertLine })
      + JSON.stringify(m.key.export({ format: 'jwk' })) + JSON.stringify(m.rsaKey.export({ format: 'jwk' }))
      + [m.keyDer, sec1].map((d) => d.toString('hex') + d.toString('base64') + d.toString('base64url')).join('')
    for (const f of secretFragments()) assert.ok(naive.includes(f), `fragment not found in naive output: ${f}`)
  })

  for (const format of ['json', 'text'] as const) {
    it(`${format}: a fully logged identity leaks no key, certificate body or token secret`, () => {
      const { log, text, lines } = collect(format)
      logEverything(log)
      const out = text()
      assert.equal(lines().length, 16, out)
      const unescaped = out.replaceAll('\\n', '\n').replaceAll('\\\\', '\\')
      const flat = unescaped.replace(/\s+/g, '')
      for (const f of secretFragments()) {
        assert.ok(!out.includes(f), `leaked ${f}`)
        assert.ok(!flat.includes(f.replace(/\s+/g, '')), `leaked (across lines) ${f}`)
      }
      assert.doesNotMatch(unescaped, /-----BEGIN [A-Z ]+-----\s*[A-Za-z0-9+/]{16}/)
      // What is safe to show stays visible, so operators can still follow what happened.
      assert.ok(out.includes(m.serial), 'serial kept')
      assert.ok(out.includes(TOKEN_NAME), 'the token name (public half) is kept')
      assert.ok(out.includes('identity obtained'))
      assert.ok(out.includes('[redacted]'))
    })
  }

  it('json: every line stays one valid JSON object after redaction', () => {
    const { log, lines } = collect('json')
    logEverything(log)
    for (const line of lines()) {
      const rec = JSON.parse(line) as Record<string, unknown>
      assert.equal(typeof rec.level, 'number')
      assert.equal(typeof rec.time, 'number')
      assert.equal(typeof rec.msg, 'string')
    }
  })

  it('json: the named fields are censored where they are, not dropped', () => {
    const { log, lines } = collect('json')
    log.info({ identity: { bot: 'ci', key: m.key, token: TOKEN, certPem: m.certPem, serial: m.serial } }, 'x')
    const rec = JSON.parse(lines()[0]!) as { identity: Record<string, unknown> }
    assert.deepEqual(rec.identity, { bot: 'ci', key: '[redacted]', token: '[redacted]', certPem: '[redacted]', serial: m.serial })
  })

  it('every name on the redaction list is censored at the top level and nested', () => {
    const { log, lines } = collect('json')
    for (const f of REDACTED_FIELDS) log.info({ [f]: 'sensitive-value-1', outer: { inner: { [f]: 'sensitive-value-2' } } }, f)
    assert.equal(lines().length, REDACTED_FIELDS.length)
    for (const line of lines()) assert.doesNotMatch(line, /sensitive-value/, line)
  })

  it('a platform JWT is censored in any field or message, not only under a known name', () => {
    const { log, lines } = collect('json')
    const jwt = 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyZXBvOmFjbWUvYXBwIn0.c2lnbmF0dXJlLWJ5dGVzLWhlcmU'
    log.info({ idToken: jwt, reason: `upstream said: ${jwt} is bad`, nested: { what: jwt } }, `got ${jwt}`)
    const line = lines()[0]!
    for (const part of jwt.split('.')) assert.ok(!line.includes(part), line)
    assert.match(line, /upstream said: \[redacted\] is bad/)
  })

  it('ordinary fields and messages pass through untouched', () => {
    const { log, lines } = collect('json')
    log.info({ listen: '127.0.0.1:6432', count: 3, ok: true, list: ['a', 'b'], note: 'BEGIN is just a word' }, 'agent ready')
    const rec = JSON.parse(lines()[0]!) as Record<string, unknown>
    assert.deepEqual(
      { listen: rec.listen, count: rec.count, ok: rec.ok, list: rec.list, note: rec.note, msg: rec.msg },
      { listen: '127.0.0.1:6432', count: 3, ok: true, list: ['a', 'b'], note: 'BEGIN is just a word', msg: 'agent ready' },
    )
    assert.equal(rec.pid, undefined, 'no pid/hostname noise by default')
  })

  it('a child logger bound to a Buffer, a typed array or a KeyObject logs the field as [redacted] instead of throwing, and its children too', () => {
    for (const format of ['json', 'text'] as const) {
      const { log, text, lines } = collect(format)
      const child = log.child({ component: 'agent', raw: m.keyDer, view: new Uint8Array(m.keyDer), k: m.key })
      child.child({ der: m.keyDer, nested: { blob: m.keyDer } }).info('grandchild')
      child.info('child')
      assert.equal(lines().length, 2)
      const out = text()
      assert.match(out, /grandchild/)
      assert.match(out, /component.{1,3}agent/)
      for (const f of secretFragments()) assert.ok(!out.includes(f), `${format}: leaked ${f.slice(0, 24)}…`)
      if (format === 'json') {
        const g = JSON.parse(lines()[0] as string) as Record<string, unknown>
        assert.deepEqual([g.raw, g.view, g.k, g.der, (g.nested as Record<string, unknown>).blob], Array(5).fill('[redacted]'))
      }
    }
  })

  it('the level is honoured', () => {
    const lines: string[] = []
    const log = createLogger({ level: 'warn', sink: { write: (l) => void lines.push(l) } })
    log.info('hidden')
    log.warn('shown')
    assert.equal(lines.length, 1)
    assert.match(lines[0]!, /"msg":"shown"/)
  })
})

describe('text format', () => {
  it('renders one readable line per record: time LEVEL msg key=value', () => {
    const { log, lines } = collect('text')
    const base = createLogger({ format: 'text', base: { component: 'agent' }, sink: { write: () => {} } })
    assert.ok(base)
    log.info({ listen: '127.0.0.1:6432', services: 2 }, 'agent ready')
    log.warn({ reason: 'auth server unreachable' }, 'renewal failed; retrying')
    log.error('plain message')
    const [a, b, c] = lines()
    assert.match(a!, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO  agent ready listen=127\.0\.0\.1:6432 services=2$/)
    assert.match(b!, /^\S+ WARN  renewal failed; retrying reason="auth server unreachable"$/)
    assert.match(c!, /^\S+ ERROR plain message$/)
  })

  it('includes bound fields and keeps redaction', () => {
    const lines: string[] = []
    const log = createLogger({ format: 'text', base: { component: 'agent' }, sink: { write: (l) => void lines.push(l) } })
    log.info({ token: TOKEN }, 'joined')
    assert.equal(lines.length, 1)
    assert.match(lines[0]!, / INFO  joined component=agent token=\[redacted\]\n$/)
  })
})
