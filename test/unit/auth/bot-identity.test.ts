import { before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { generateKeyPairSync, X509Certificate, type KeyObject } from 'node:crypto'
import { issueBotIdentity, readBotClaims } from '../../../src/auth/bot-identity.ts'
import { createCaCertificate, issueLeaf, type X509Authority } from '../../../src/pki/x509.ts'

const BOT_ID = '0f1e2d3c-4b5a-4968-8776-655443322110'
const INSTANCE = '6f1c9a8e-1111-4222-8333-444455556666'

describe('bot identity certificates', () => {
  let ca: X509Authority
  const key = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  before(async () => {
    const k = generateKeyPairSync('ec', { namedCurve: 'P-256' })
    ca = { key: k.privateKey as KeyObject, certPem: await createCaCertificate(k.privateKey, k.publicKey, 'memid bot CA', 3_600_000) }
  })
  const der = (pem: string) => Buffer.from(new X509Certificate(pem).raw)
  /** A client certificate from the bot CA with the given URI SAN instead of the real one. */
  const withUri = async (uri: string) => der((await issueLeaf({ ca, publicKey: key.publicKey, commonName: 'x', uris: [uri], ttlMs: 600_000, usage: 'client', now: Date.now() })).pem)

  it('carries the bot, its id, the instance and the generation, read back exactly', async () => {
    const now = Date.now()
    const cert = await issueBotIdentity(ca, key.publicKey, { bot: 'ci deploy/é', botId: BOT_ID, instanceId: INSTANCE, generation: 42 }, 600_000, now)
    const x = new X509Certificate(cert.pem)
    assert.match(x.subject, /CN=ci deploy\/é/)
    assert.match(x.subject, /O=memid-bot/)
    assert.ok(x.checkIssued(new X509Certificate(ca.certPem)))
    assert.deepEqual(readBotClaims(der(cert.pem)), {
      bot: 'ci deploy/é', botId: BOT_ID, instanceId: INSTANCE, generation: 42,
      serial: x.serialNumber.toLowerCase(), notBefore: new Date(x.validFrom), notAfter: new Date(x.validTo),
    })
    assert.match(readBotClaims(der(cert.pem))!.serial, /^[0-9a-f]+$/, 'serial in lower case, as stored')
  })

  it('reads serial and validity as OpenSSL does, GeneralizedTime after 2049 included', async () => {
    for (const ttlMs of [600_000, Date.UTC(2051, 5, 1) - Date.now()]) {
      const cert = await issueBotIdentity(ca, key.publicKey, { bot: 'ci', botId: BOT_ID, instanceId: INSTANCE, generation: 1 }, ttlMs, Date.now())
      const x = new X509Certificate(cert.pem)
      const c = readBotClaims(der(cert.pem))!
      assert.deepEqual([c.serial, c.notBefore, c.notAfter], [x.serialNumber.toLowerCase(), new Date(x.validFrom), new Date(x.validTo)])
    }
  })

  it('a certificate from before bots had ids is read without one', async () => {
    assert.deepEqual(Object.keys(readBotClaims(await withUri(`memid://bot/old?instance=${INSTANCE}&generation=3`))!).sort(),
      ['bot', 'generation', 'instanceId', 'notAfter', 'notBefore', 'serial'])
  })

  it('reads nothing from bytes that are not a certificate, or a certificate without memid claims', async () => {
    assert.equal(readBotClaims(Buffer.from('not a certificate')), undefined)
    assert.equal(readBotClaims(await withUri('https://example.com/bot/x?instance=1')), undefined)
    assert.equal(readBotClaims(der(ca.certPem)), undefined, 'no SAN at all')
  })

  it('reads nothing from claims that are malformed: instance, generation, bot id, bot name encoding', async () => {
    const ok = { id: BOT_ID, instance: INSTANCE, generation: '7' }
    const uri = (q: Record<string, string>, bot = 'ci') => `memid://bot/${bot}?${new URLSearchParams(q).toString()}`
    assert.ok(readBotClaims(await withUri(uri(ok))), 'the well-formed one is read')
    for (const [what, q] of [
      ['short instance', { ...ok, instance: INSTANCE.slice(1) }],
      ['instance with a suffix', { ...ok, instance: `${INSTANCE}0` }],
      ['upper-case instance', { ...ok, instance: INSTANCE.toUpperCase() }],
      ['no generation', { id: BOT_ID, instance: INSTANCE }],
      ['negative generation', { ...ok, generation: '-1' }],
      ['generation with letters', { ...ok, generation: '7a' }],
      ['16-digit generation', { ...ok, generation: '1234567890123456' }],
      ['short bot id', { ...ok, id: 'abcdef' }],
      ['bot id with a suffix', { ...ok, id: `${BOT_ID}x` }],
      ['bot id with a prefix', { ...ok, id: `x${BOT_ID}` }],
      ['non-hex bot id', { ...ok, id: 'g'.repeat(32) }],
    ] as const) assert.equal(readBotClaims(await withUri(uri(q))), undefined, what)
    assert.equal(readBotClaims(await withUri(uri(ok, '%E0%A4%A'))), undefined, 'bad percent-encoding in the bot name')
    assert.equal(readBotClaims(await withUri(uri({ ...ok, id: BOT_ID.replaceAll('-', '') })))?.botId, BOT_ID.replaceAll('-', ''), 'a 32-digit id is one')
    assert.equal(readBotClaims(await withUri(uri({ ...ok, generation: '123456789012345' })))?.generation, 123456789012345)
  })
})
